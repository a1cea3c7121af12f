"""WAL checkpoints on their own thread, off the path that acknowledges webhooks.

In WAL mode every commit appends pages to the ``-wal`` file; a checkpoint copies them back into
the database file (and, with ``synchronous=FULL``, fsyncs it). By default SQLite runs that
checkpoint inside the COMMIT of whichever transaction takes the WAL past 1,000 pages: about
every 400 webhooks under load, one group of requests waited for a few megabytes of copying
and an extra fsync, which showed as the intake's p99. Here the writer's connection has
``wal_autocheckpoint = 0`` and this thread, with its own connection, runs
``PRAGMA wal_checkpoint(PASSIVE)`` after commits, at most every :data:`MIN_INTERVAL_SECS`.

Durability is unchanged: a commit is durable once its frames are fsynced in the WAL, which the
writer still does on every COMMIT; the checkpoint only moves committed pages. A PASSIVE
checkpoint never blocks the writer or readers (it copies what no reader still needs and
leaves the rest for the next round), so a failure here can only let the WAL grow, never lose or
refuse a write: it is logged, and the next round tries again. SQLite restarts the WAL from its
beginning once a checkpoint has caught up, and ``journal_size_limit`` truncates the file then.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from bridge import logs

log = logs.get(__name__)

#: At most this often: each checkpoint fsyncs the database file, so one per commit under load
#: would trade the WAL's sequential appends for many random writes.
MIN_INTERVAL_SECS = 0.25


class Checkpointer:
    """``poke()`` after commits (any thread, cheap); the thread checkpoints soon after."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._connect = connect
        self._poked = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.checkpoints = 0  # completed rounds (tests and stats)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        self._poked.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        self._poked.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._poked.wait()
                if self._stopping.is_set():
                    return
                self._poked.clear()
                try:
                    if conn is None:
                        conn = self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.warning("wal_checkpoint_failed", error=str(exc))
                # Let commits accumulate: the next round comes no sooner than this.
                if self._stopping.wait(MIN_INTERVAL_SECS):
                    return
        finally:
            if conn is not None:
                conn.close()
