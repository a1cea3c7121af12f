"""One writer thread with its own SQLite connection, and group commit.

Why a thread: sqlite3 blocks (an fsync per commit with ``synchronous=FULL``), and the event loop
must never wait on a disk. Why one: SQLite has one writer at a time anyway; a single thread with
a queue serialises writes without lock contention and lets us batch.

Group commit: jobs arriving while a transaction commits wait in the queue; the next round takes
all of them, and consecutive *shareable* jobs share ONE transaction: *grouped* jobs (``enqueue``)
with ONE call of their group function per run of the same function
(:meth:`Writer.submit_grouped`), so 64 concurrent requests cost one fsync and a few statements,
not 64 and a few hundred; and *groupable* jobs (delivery's claim and ack, ``submit(...,
groupable=True)``), so the acks of finished uploads and the next claim share one fsync too.
Nobody is acknowledged before COMMIT returns. If the shared transaction fails, it is rolled back
and each job is tried again in its own transaction, so one bad item (say, a body too large for
the space left) cannot fail the others; a job that did not commit gets
:class:`~bridge.errors.StorageUnavailableError`. A busy/locked database is not retried item by
item (each retry would wait a full busy_timeout again). The outcomes of a round go back to the
event loop in one wake-up per loop.

Waiting for the write lock: another process may hold it (the mapping process's writer, an
operator's ``replay``). SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between
tries, so a group commit behind an 8 ms transaction of the mapper's slept 18 ms, and each wait
made the next group larger and slower: the intake's p99. So the writer begins its transactions
with the busy handler off and tries again every :data:`BEGIN_RETRY_SECS` itself, within the same
``busy_timeout``; open, migrate and close (``raw`` jobs) keep SQLite's handler.
Once it has the lock after a wait, the transaction first takes in the shareable jobs that
queued meanwhile (:meth:`Writer._grow`): one commit where there were two behind the same lock.

The database file: after each COMMIT, before answering, the writer checks that the path still
names the file it writes (:mod:`bridge.store.sqlite.identity`); when idle, once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.store.sqlite.identity import IDLE_CHECK_SECS, DatabaseFileLostError, FileIdentity
from bridge.store.sqlite.schema import is_busy, translate

Work = Callable[[sqlite3.Connection], Any]
#: Does the work of several jobs at once: their items in, one outcome per item out, in order.
Grouped = Callable[[sqlite3.Connection, list[Any]], list[Any]]
#: While another process holds the write lock, BEGIN IMMEDIATE is tried again this often (a
#: failed try costs a few microseconds; the lock is held for milliseconds).
BEGIN_RETRY_SECS = 0.0002


@dataclass(slots=True)
class Job:
    """``work`` runs inside a write transaction on the writer's connection, alone.

    A grouped job has no ``work`` but an ``item`` for its ``grouped`` function, which runs once
    for a run of consecutive jobs of the same function. Grouped and ``groupable`` jobs may share
    a transaction with their shareable neighbours; other jobs run in a transaction of their own.
    ``raw=True`` jobs get the connection outside any transaction (open/migrate, close).
    """

    work: Work | None
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    doing: str
    grouped: Grouped | None = None
    item: Any = None
    raw: bool = False
    groupable: bool = False
    outcome: tuple[bool, Any] = field(default=(False, None))


class Writer:
    """The writer thread. ``submit`` from the event loop; results come back as futures."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        name: str,
        on_commit: Callable[[], None] | None = None,
        between: Callable[[sqlite3.Connection], None] | None = None,
        identity: FileIdentity | None = None,
        busy_timeout_secs: float = 5.0,
    ) -> None:
        self._connect = connect
        self._busy_timeout_secs = busy_timeout_secs
        self._busy_handler_on = True  # SQLite's own, as the connection was made
        self.busy_waits = 0  # transactions that found the write lock taken (tests, profiles)
        self._identity = identity  # the file the path must still name when we commit
        self._on_commit = on_commit  # after every COMMIT, on this thread (the checkpointer)
        # After each round, outside any transaction, once its jobs are answered (WAL restart).
        self._between = between
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._conn: sqlite3.Connection | None = None
        # Jobs a transaction took from the queue while it grew (:meth:`_grow`) but could not
        # share it: the next round starts with them, in their order.
        self._carry: list[Job | None] = []
        self.commits = 0  # write transactions committed (group commit makes this < calls)

    @property
    def backlog(self) -> int:
        """Jobs waiting for the writer (approximate): a measure of write pressure."""
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def submit(
        self, work: Work, doing: str, *, groupable: bool = False, raw: bool = False
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        job = Job(work, loop.create_future(), loop, doing, raw=raw, groupable=groupable)
        self._queue.put(job)
        return job.future

    def submit_grouped(self, grouped: Grouped, item: Any, doing: str) -> asyncio.Future[Any]:
        """``grouped(conn, [item, ...])`` runs for this job and its queued neighbours of the
        same function, in one transaction; the future gets this item's outcome."""
        loop = asyncio.get_running_loop()
        job = Job(None, loop.create_future(), loop, doing, grouped, item, groupable=True)
        self._queue.put(job)
        return job.future

    def stop(self) -> None:
        """Ask the thread to finish the queued jobs, close its connection and exit."""
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # ---- inside the thread -------------------------------------------------------------

    def _run(self) -> None:
        running = True
        while running:
            pending, self._carry = self._carry, []
            if not pending:
                try:
                    pending = [self._queue.get(timeout=IDLE_CHECK_SECS if self._identity else None)]
                except queue.Empty:
                    self._idle_check()
                    continue
            pending += self._drain()
            batch: list[Job] = []
            for item in pending:
                if item is None:
                    running = False
                    break
                batch.append(item)
            self._process(batch)
            if self._between is not None and self._conn is not None:
                self._between(self._conn)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _drain(self) -> list[Job | None]:
        """Every job queued right now, without waiting."""
        taken: list[Job | None] = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken

    def _process(self, batch: list[Job]) -> None:
        start = 0
        while start < len(batch):
            end = start + 1
            if batch[start].groupable:
                while end < len(batch) and batch[end].groupable:
                    end += 1
            group = batch[start:end]
            if group[0].raw:
                self._run_raw(group[0])
            elif not self._transaction(group, grow=end == len(batch) and group[0].groupable):
                self._one_by_one(group)
            start = end

    def _idle_check(self) -> None:
        """Idle: see whether the database file is still ours (it logs when it is not)."""
        if self._identity is not None and self._conn is not None:
            with contextlib.suppress(DatabaseFileLostError):
                self._identity.confirm()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
            self._busy_handler_on = True
        return self._conn

    def _busy_handler(self, conn: sqlite3.Connection, on: bool) -> None:
        if self._busy_handler_on != on:
            ms = int(self._busy_timeout_secs * 1000) if on else 0
            conn.execute(f"PRAGMA busy_timeout = {ms}")
            self._busy_handler_on = on

    def _begin(self, conn: sqlite3.Connection) -> bool:
        """BEGIN IMMEDIATE, trying again every :data:`BEGIN_RETRY_SECS` while another process
        writes, for at most ``busy_timeout`` (then SQLITE_BUSY, as SQLite's handler would).
        True when it had to wait."""
        self._busy_handler(conn, on=False)
        deadline: float | None = None
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return deadline is not None
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    self.busy_waits += 1
                    deadline = now + self._busy_timeout_secs
                elif now >= deadline:
                    raise
            time.sleep(BEGIN_RETRY_SECS)

    def _run_raw(self, job: Job) -> None:
        try:
            assert job.work is not None
            conn = self._connection()
            self._busy_handler(conn, on=True)
            job.outcome = (True, job.work(conn))
        except Exception as exc:
            job.outcome = (False, _failure(exc, job.doing))
        _resolve([job])

    def _transaction(self, jobs: list[Job], *, grow: bool = False) -> bool:
        """Run ``jobs`` in one transaction; True once they are settled (committed or failed).

        A failure of several jobs leaves them unsettled (False), so the caller can retry them
        one by one, unless the database was busy or the file is lost: then all fail now.
        ``grow``: the jobs are shareable and the last of their round; if the write lock was
        busy, the shareable jobs that queued meanwhile join them (:meth:`_grow`).
        """
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connection()
            if self._identity is not None:
                self._identity.refuse()
            if self._begin(conn) and grow:
                self._grow(jobs)
            _work(conn, jobs)
            conn.execute("COMMIT")
            if self._identity is not None:
                self._identity.confirm()  # committed into the file the path names, or no answer
        except Exception as exc:
            _rollback(conn)
            lost = isinstance(exc, DatabaseFileLostError) or self._file_lost_under(exc)
            if len(jobs) > 1 and not is_busy(exc) and not lost:
                return False
            for job in jobs:  # nothing committed: nobody is acknowledged
                job.outcome = (False, _failure(exc, job.doing))
            _resolve(jobs)
            return True
        self.commits += 1
        _resolve(jobs)
        if self._on_commit is not None:
            self._on_commit()
        return True

    def _grow(self, jobs: list[Job]) -> None:
        """Add the shareable jobs that queued while BEGIN waited for another process's lock.

        Why: a round's jobs are taken before BEGIN, so without this a group commit that waited
        3 ms behind the mapper's transaction committed only the jobs of before the wait, and
        the ones that arrived during it needed a commit of their own, after another wait: two
        commits (each about a millisecond of the one write lock) where one does.
        The first job that cannot share (and everything after it) waits for the next round.
        """
        arrived = self._drain()
        for index, job in enumerate(arrived):
            if job is None or not job.groupable:
                self._carry = arrived[index:]
                return
            jobs.append(job)

    def _file_lost_under(self, exc: Exception) -> bool:
        """A write that failed because the file is no database (any more), or is malformed:
        see at once whether it was overwritten under us (``cp``, ``truncate``), which the
        check after a commit never sees when no commit can succeed."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        if self._identity is None or not name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return False
        try:
            self._identity.confirm()
        except DatabaseFileLostError:
            return True
        return False

    def _one_by_one(self, jobs: list[Job]) -> None:
        for index, job in enumerate(jobs):
            self._transaction([job])
            ok, error = job.outcome
            cause = error.__cause__ if not ok else None
            if isinstance(cause, sqlite3.Error) and is_busy(cause):
                for rest in jobs[index + 1 :]:  # each would wait a busy_timeout again
                    rest.outcome = (False, _failure(cause, rest.doing))
                _resolve(jobs[index + 1 :])
                return


def _work(conn: sqlite3.Connection, jobs: list[Job]) -> None:
    """The jobs' work, in order, with their outcomes: one call per run of jobs of the same
    group function, one call per other job."""
    start = 0
    while start < len(jobs):
        grouped = jobs[start].grouped
        if grouped is None:
            work = jobs[start].work
            assert work is not None
            jobs[start].outcome = (True, work(conn))
            start += 1
            continue
        end = start + 1
        while end < len(jobs) and jobs[end].grouped is grouped:
            end += 1
        run = jobs[start:end]
        outcomes = grouped(conn, [job.item for job in run])
        for job, outcome in zip(run, outcomes, strict=True):
            job.outcome = (True, outcome)
        start = end


def _failure(exc: Exception, doing: str) -> Exception:
    """sqlite3 errors become StorageUnavailableError; our own bugs keep their type."""
    if isinstance(exc, sqlite3.Error | OSError):
        return translate(exc, doing)
    return exc


def _rollback(conn: sqlite3.Connection | None) -> None:
    if conn is not None and conn.in_transaction:
        # SQLite may already have rolled back (e.g. after SQLITE_FULL): nothing left to undo.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _resolve(jobs: list[Job]) -> None:
    """Hand outcomes back to their loops, one wake-up per loop (not one per job)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
    for job in jobs:
        by_loop.setdefault(job.loop, []).append(job)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: its callers are gone
            loop.call_soon_threadsafe(_settle, mine)


def _settle(jobs: list[Job]) -> None:
    for job in jobs:
        if job.future.done():
            continue  # the caller was cancelled; the work itself stands (or not) regardless
        ok, value = job.outcome
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
