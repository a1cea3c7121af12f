"""WAL checkpoints on their own thread, off the path that acknowledges webhooks.

In WAL mode every commit appends pages to the ``-wal`` file; a checkpoint copies them back into
the database file (and, with ``synchronous=FULL``, fsyncs it). By default SQLite runs that
checkpoint inside the COMMIT of whichever transaction takes the WAL past 1,000 pages: every few
hundred webhooks under load, one group of requests waited for megabytes of copying and an
extra fsync, which showed as the intake's p99. Here the writer's connection has
``wal_autocheckpoint = 0`` and this thread, with its own connection, runs
``PRAGMA wal_checkpoint(PASSIVE)`` after commits, at most every :data:`MIN_INTERVAL_SECS`.

Durability is unchanged: a commit is durable once its frames are fsynced in the WAL, which the
writer still does on every COMMIT; the checkpoint only moves committed pages. A PASSIVE
checkpoint never blocks the writer or readers (it copies what no reader still needs and
leaves the rest for the next round), so a failure here can only let the WAL grow, never lose or
refuse a write: it is logged, and the next round tries again. SQLite restarts the WAL from its
beginning once a checkpoint has caught up, and ``journal_size_limit`` truncates the file then.

Restarting the WAL: SQLite only rewinds the WAL when a write transaction *begins* with every
frame already copied back. Under sustained load the writer begins its next transaction at once,
before this thread's checkpoint has caught up, so the WAL never rewound: it grew without bound,
every commit extending the file (each fdatasync then also journals the new size) and commits
stalled behind the checkpoint's fsync (docs/benchmarks.md). So once a checkpoint
finds the WAL past :data:`RESTART_FRAMES`, this thread asks the writer to run
``PRAGMA wal_checkpoint(RESTART)`` itself, between two transactions (:meth:`restart_if_wanted`),
and waits for it: the writer copies the few frames committed since, and the next commit
writes the WAL from its start again, over blocks the file already has.

Readers holding a snapshot: a ``.backup``, or a ``sqlite3`` shell left in a read transaction,
pins the WAL frames its snapshot may still read, so no checkpoint can copy past them and no
rewind can happen until it ends. A rewind that waited for it would wait the whole
``busy_timeout`` on the writer's thread, with every commit queued behind it (measured: intake
from ~2,000/s to ~3/s, p99 5 s). So the writer rewinds with its busy handler off: blocked, it
gives up at once, and this thread asks again no sooner than :data:`BLOCKED_RETRY_SECS` later.
Meanwhile the WAL grows past its target; that is logged (``wal_over_target``, at most every
:data:`WARN_INTERVAL_SECS`), and the WAL is rewound as soon as the reader has gone.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

from bridge import logs
from bridge.errors import StorageUnavailableError
from bridge.store.sqlite.identity import DatabaseFileLostError

log = logs.get(__name__)

#: At most this often: each checkpoint fsyncs the database file, so one per commit under load
#: would trade the WAL's sequential appends for many random writes.
MIN_INTERVAL_SECS = 0.25
#: Past this many frames (32 MB with 4 KB pages) the writer rewinds the WAL between transactions.
RESTART_FRAMES = 8192
#: How long a checkpoint round waits for the writer to do that before it goes on (an idle
#: writer does not need to: its next transaction rewinds the WAL by itself).
RESTART_WAIT_SECS = 1.0
#: After a rewind a reader blocked, ask again no sooner than this (each try copies what it can).
BLOCKED_RETRY_SECS = 1.0
#: ``wal_over_target`` is logged at most this often while readers keep the WAL from rewinding.
WARN_INTERVAL_SECS = 60.0


class Checkpointer:
    """``poke()`` after commits (any thread, cheap); the thread checkpoints soon after."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        name: str,
        before: Callable[[], None] | None = None,
    ) -> None:
        self._connect = connect
        #: Raises when the file is no longer ours: never copy our pages into a restored file.
        #: Called after each round too, so the size the round grew the file to is known.
        self._before = before
        #: One lock and condition for the four flags the writer and this thread exchange below;
        #: every change is made under it and announced with ``notify_all``.
        self._changed = threading.Condition()
        self._poked = False  # a commit since the last round
        self._stopping = False
        self._restart_wanted = False  # this thread asks the writer to rewind the WAL
        self._restarted = False  # the writer has answered that request
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.checkpoints = 0  # completed rounds (tests and stats)
        self.restarts = 0  # WAL rewinds the writer ran on our request
        self.restarts_blocked = 0  # rewinds a reader's snapshot prevented (tried again later)
        self.pokes = 0  # commits reported by the writer, one poke each
        #: Every commit up to this poke number has all its pages copied into the database file.
        self.copied_through = 0
        self._retry_restart_at = 0.0  # monotonic: no rewind request before this
        self._warned_at: float | None = None  # monotonic time of the last wal_over_target
        self._blocked = False  # the last rewind was blocked by a reader

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        with self._changed:
            self.pokes += 1
            self._poked = True
            self._changed.notify_all()

    def restart_if_wanted(self, conn: sqlite3.Connection) -> None:
        """On the writer's thread, between two transactions: rewind the WAL if asked to.

        Never waits: with the busy handler off, a reader's snapshot makes the rewind give up
        at once (``busy`` in its answer) rather than hold every commit for ``busy_timeout``.
        """
        if not self._restart_wanted:  # a plain read: the writer asks after every transaction
            return
        try:
            ((timeout_ms,),) = conn.execute("PRAGMA busy_timeout").fetchall()
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                ((busy, _, _),) = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
            if busy:
                self.restarts_blocked += 1
                self._blocked = True
                self._retry_restart_at = time.monotonic() + BLOCKED_RETRY_SECS
            else:
                self.restarts += 1
                if self._blocked:
                    self._blocked, self._warned_at = False, None
                    log.info("wal_rewound", detail="the reader that held the WAL has gone")
        except sqlite3.Error as exc:  # the WAL just stays longer; the next round asks again
            log.warning("wal_restart_failed", error=str(exc))
        finally:
            with self._changed:
                self._restart_wanted = False
                self._restarted = True
                self._changed.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._poked or self._stopping)
                    if self._stopping:
                        return
                    self._poked = False
                conn = self._round(conn)
                # Let commits accumulate: the next round comes no sooner than this.
                with self._changed:
                    if self._changed.wait_for(lambda: self._stopping, MIN_INTERVAL_SECS):
                        return
        finally:
            if conn is not None:
                conn.close()

    def _round(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """One checkpoint, only while the file is ours; the connection (opened lazily)."""
        seen = self.pokes  # this round copies every commit reported so far
        try:
            if self._before is not None:
                self._before()
            if conn is None:
                conn = self._connect()
            ((_, frames, copied),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
            if self._before is not None:
                self._before()
        except DatabaseFileLostError:
            pass  # logged once where it was seen; nothing is copied any more
        except (sqlite3.Error, StorageUnavailableError) as exc:
            log.warning("wal_checkpoint_failed", error=str(exc))
        else:
            self._after(frames, copied, seen)
        return conn

    def _after(self, frames: int, copied: int, seen: int) -> None:
        """After a checkpoint round: record what is copied back; ask for a rewind if due."""
        if copied == frames:
            self.copied_through = max(self.copied_through, seen)
        if frames < RESTART_FRAMES:
            return
        if time.monotonic() >= self._retry_restart_at:
            with self._changed:
                self._restarted, self._restart_wanted = False, True
                self._changed.notify_all()
                # No checkpoint meanwhile; stop() ends the wait too.
                self._changed.wait_for(lambda: self._restarted or self._stopping, RESTART_WAIT_SECS)
        self._over_target(frames)

    def _over_target(self, frames: int) -> None:
        """Log (rate-limited) a WAL a reader keeps from rewinding; under plain load the rewind
        keeps up and this stays quiet."""
        if not self._blocked:
            return
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_INTERVAL_SECS:
            return
        self._warned_at = now
        log.warning(
            "wal_over_target",
            frames=frames,
            target_frames=RESTART_FRAMES,
            rewinds_blocked=self.restarts_blocked,
            detail="a reader (a backup, an open sqlite3 shell) holds an old snapshot; "
            "the WAL is rewound once it ends",
        )
