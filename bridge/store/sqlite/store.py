"""The SQLite implementation of :class:`bridge.store.Store`: the async face of the database.

No database work runs on the event loop. Writes go to one writer thread (group commit, see
:mod:`bridge.store.sqlite.writer`); reads (stats, dead letters, next due time) go to one reader
thread with its own connection, which WAL lets run beside the writer. Another process (the CLI) may
open the same file at the same time: WAL plus ``busy_timeout`` make them take turns.

The database file must stay the one opened: deleted or replaced under a running store, every
call fails from then on (:mod:`bridge.store.sqlite.identity`).

Every sqlite3 or OS error leaves as :class:`bridge.errors.StorageUnavailableError`; a failed
transaction is rolled back whole, so a full disk or an I/O error never leaves half a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

from bridge.config import StorageConfig
from bridge.errors import StorageUnavailableError
from bridge.messages import OutgoingMessage
from bridge.store import (
    ClaimedMessage,
    DeadLetter,
    DeadLetterDetail,
    DeadLetterFilter,
    DeadReason,
    EnqueueReceipt,
    EventDetail,
    EventQuery,
    EventRecord,
    Remapper,
    ReplayOutcome,
    ServiceState,
    StoreStats,
    Webhook,
)
from bridge.store.sqlite import queries as ops
from bridge.store.sqlite import servicestate as service_state
from bridge.store.sqlite.checkpoint import Checkpointer
from bridge.store.sqlite.enqueue import Item, enqueue_group
from bridge.store.sqlite.identity import FileIdentity
from bridge.store.sqlite.schema import (
    SYNCHRONOUS_MODES,
    DatabaseMissingError,
    connect,
    migrate,
    translate,
)
from bridge.store.sqlite.writer import Writer

T = TypeVar("T")

#: Rows per transaction for the maintenance writes, so intake is never held up for long.
CHUNK = 2000


class SQLiteStore:
    """Durable storage in one SQLite file (WAL). Open with :meth:`open`, stop with :meth:`close`.

    ``max_page_count`` caps the database size in pages (``PRAGMA max_page_count``): tests use it
    to fill the database without filling a disk. ``create=False`` (the operator commands) opens
    only an existing bridge database: a mistyped path is an error, not a new empty database.
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_secs: float = 5.0,
        max_page_count: int | None = None,
        create: bool = True,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
        if busy_timeout_secs <= 0:
            raise ValueError("busy_timeout_secs must be positive")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_secs = busy_timeout_secs
        self.max_page_count = max_page_count
        self.create = create
        self._writer: Writer | None = None
        self._checkpointer: Checkpointer | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None  # touched by the reader thread only
        self._identity = FileIdentity(self.path)

    @classmethod
    def from_config(cls, cfg: StorageConfig, *, create: bool = True) -> SQLiteStore:
        return cls(
            cfg.path,
            synchronous=cfg.synchronous,
            busy_timeout_secs=cfg.busy_timeout_secs,
            create=create,
        )

    @property
    def backlog(self) -> int:
        """Writes waiting for the writer thread: a gauge of write pressure."""
        return self._writer.backlog if self._writer else 0

    # ---- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file and its directory if needed (unless ``create=False``), and migrate
        the schema."""
        if self._writer is not None:
            return
        if not self.create and not self.path.is_file():
            raise DatabaseMissingError(
                f"no database at {self.path}: check storage.path (BRIDGE_STORAGE__PATH); "
                "this command never creates one"
            )
        self._identity = FileIdentity(self.path)  # whatever the path names now is ours
        checkpointer = Checkpointer(self._connect_checkpointer, f"sqlite-wal:{self.path.name}")
        checkpointer.start()
        self._checkpointer = checkpointer
        writer = Writer(
            self._connect_writer,
            f"sqlite-writer:{self.path.name}",
            on_commit=checkpointer.poke,
            between=checkpointer.restart_if_wanted,
            identity=self._identity,
        )
        writer.start()
        self._writer = writer
        try:
            await writer.submit(partial(migrate, create=self.create), "open the database", raw=True)
        except DatabaseMissingError as exc:
            await self._stop_writer()
            raise DatabaseMissingError(f"{self.path}: {exc}") from exc
        except BaseException:
            await self._stop_writer()
            raise
        self._identity.remember_companions()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-reader:{self.path.name}")

    async def close(self) -> None:
        """Finish the queued writes, then close both connections and stop both threads."""
        await self._stop_writer()
        reader, self._reader = self._reader, None
        if reader is not None:
            await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
            await asyncio.to_thread(reader.shutdown, wait=True)

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
            await asyncio.to_thread(writer.join)
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await asyncio.to_thread(checkpointer.stop)

    def _connect_writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(
            self.path,
            synchronous=self.synchronous,
            busy_timeout_secs=self.busy_timeout_secs,
            max_page_count=self.max_page_count,
            autocheckpoint=False,  # the checkpointer's job (bridge.store.sqlite.checkpoint)
        )
        try:
            self._identity.remember()
        except OSError:
            conn.close()
            raise
        return conn

    def _connect_checkpointer(self) -> sqlite3.Connection:
        # Opened lazily: by then the path may name another file, whose connection would take
        # our -wal and -shm (same names) for its own and checkpoint our pages into it.
        self._identity.confirm()
        return connect(
            self.path, synchronous=self.synchronous, busy_timeout_secs=self.busy_timeout_secs
        )

    def _close_reader(self) -> None:
        conn, self._reader_conn = self._reader_conn, None
        if conn is not None:
            conn.close()

    # ---- plumbing --------------------------------------------------------------------------

    async def _write(
        self, work: Callable[[sqlite3.Connection], T], doing: str, *, groupable: bool = False
    ) -> T:
        if self._writer is None:
            raise StorageUnavailableError(f"storage could not {doing}: the store is not open")
        return cast(T, await self._writer.submit(work, doing, groupable=groupable))

    async def _read(self, work: Callable[[sqlite3.Connection], T], doing: str) -> T:
        if self._reader is None:
            raise StorageUnavailableError(f"storage could not {doing}: the store is not open")
        self._identity.refuse()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._in_reader, work, doing)

    def _in_reader(self, work: Callable[[sqlite3.Connection], T], doing: str) -> T:
        try:
            if self._reader_conn is None:
                self._identity.confirm()  # as for the checkpointer's connection
                self._reader_conn = connect(
                    self.path,
                    synchronous=self.synchronous,
                    busy_timeout_secs=self.busy_timeout_secs,
                    readonly=True,
                )
            return work(self._reader_conn)
        except (sqlite3.Error, OSError) as exc:
            if self._reader_conn is not None and self._reader_conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._reader_conn.execute("ROLLBACK")
            raise translate(exc, doing) from exc

    def _storage_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # ---- intake and delivery ---------------------------------------------------------------

    async def enqueue(
        self,
        webhook: Webhook,
        messages: Sequence[OutgoingMessage],
        dead: DeadReason | None = None,
    ) -> EnqueueReceipt:
        if dead is not None and messages:
            raise ValueError("a webhook is stored either with messages or as a dead letter")
        doing = "store the webhook"
        if self._writer is None:
            raise StorageUnavailableError(f"storage could not {doing}: the store is not open")
        item: Item = (webhook, tuple(messages), dead)
        receipt = self._writer.submit_grouped(enqueue_group, item, doing)
        return cast(EnqueueReceipt, await receipt)

    async def claim(
        self, now: float, limit: int, lease_secs: float, exclude: Collection[str] = ()
    ) -> list[ClaimedMessage]:
        if limit <= 0:
            return []
        work = partial(
            ops.claim, now=now, limit=limit, lease_secs=lease_secs, exclude=tuple(exclude)
        )
        # Groupable, like ack: see ack.
        return await self._write(work, "claim messages", groupable=True)

    async def peek(
        self, destinations: Collection[str], after: int, limit: int
    ) -> list[ClaimedMessage]:
        if limit <= 0 or not destinations:
            return []
        work = partial(ops.peek, destinations=tuple(destinations), after=after, limit=limit)
        return await self._read(work, "read waiting messages")

    async def count_open(self, destinations: Collection[str]) -> int:
        if not destinations:
            return 0
        work = partial(ops.count_open, destinations=tuple(destinations))
        return await self._read(work, "count waiting messages")

    async def recover(self, now: float) -> int:
        """Release the claims a previous process left (one delivering ``serve`` per file)."""
        return await self._write(lambda conn: ops.recover(conn, now), "recover claims")

    async def ack(self, ids: Sequence[int], now: float) -> None:
        """Groupable (as is claim): during a drain the writer is the busiest thread, and the
        acks of finished uploads and the next claim, queued while it commits, then share one
        transaction and one fsync instead of one each (claim + 3 acks per 500 messages were
        4 fsyncs; docs/benchmarks.md). Nothing is answered before that COMMIT, and a shared
        transaction that fails is retried job by job (bridge.store.sqlite.writer)."""
        if ids:
            work = partial(ops.ack, ids=tuple(ids), now=now)
            await self._write(work, "mark delivered", groupable=True)

    # Neither backend reads now here or in stats(); dropping it from the protocol changes the
    # delivery loop's calls, so it waits for that rewrite.
    async def retry_later(self, ids: Sequence[int], due_at: float, error: str, now: float) -> None:  # noqa: ARG002
        if ids:
            work = partial(ops.retry_later, ids=tuple(ids), due_at=due_at, error=error)
            await self._write(work, "reschedule messages")

    async def bury(self, ids: Sequence[int], dead: DeadReason, error: str, now: float) -> None:
        if ids:
            work = partial(ops.bury, ids=tuple(ids), dead=dead, error=error, now=now)
            await self._write(work, "store dead letters")

    async def next_due_at(self) -> float | None:
        return await self._read(ops.next_due_at, "read the next due time")

    async def stats(self, now: float, since: float) -> StoreStats:  # noqa: ARG002 - see retry_later
        def work(conn: sqlite3.Connection) -> StoreStats:
            return ops.stats(conn, since, self._storage_bytes())

        return await self._read(work, "read statistics")

    async def check_writable(self) -> None:
        await self._write(ops.probe, "write")

    async def put_service_state(self, process: str, state: str, now: float) -> None:
        work = partial(service_state.put, process=process, state=state, now=now)
        await self._write(work, "record the service state")

    async def service_states(self, now: float) -> list[ServiceState]:
        return await self._read(partial(service_state.read, now=now), "read the service state")

    # ---- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, which: DeadLetterFilter) -> list[DeadLetter]:
        return await self._read(partial(ops.dead_letters, which=which), "list dead letters")

    async def dead_letter(self, letter_id: int) -> DeadLetterDetail | None:
        return await self._read(partial(ops.dead_letter, letter_id=letter_id), "read a letter")

    # ---- event search ----------------------------------------------------------------------

    async def find_events(self, query: EventQuery, now: float) -> list[EventRecord]:
        work = partial(ops.find_events, query=query, now=now)
        return await self._read(work, "search the events")

    async def event(self, webhook_id: str, now: float) -> EventDetail | None:
        return await self._read(partial(ops.event, ref=webhook_id, now=now), "read an event")

    async def replay(self, which: DeadLetterFilter, remap: Remapper, now: float) -> ReplayOutcome:
        """Remap on the caller's loop, write one transaction per chunk of letters."""
        letters = [letter.id for letter in await self.dead_letters(which)]
        replayed = still_dead = made = 0
        for start in range(0, len(letters), CHUNK):
            chunk = letters[start : start + CHUNK]
            sources = await self._read(
                partial(ops.webhooks_of_letters, letters=chunk), "read dead letters"
            )
            outcomes = [(letter, row, remap(webhook)) for letter, row, webhook in sources]
            work = partial(ops.replay_chunk, outcomes=outcomes, now=now)
            done, failed, revived = await self._write(work, "replay dead letters")
            replayed, still_dead, made = replayed + done, still_dead + failed, made + revived
        return ReplayOutcome(replayed=replayed, still_dead=still_dead, messages=made)

    async def purge_dead(self, older_than: float) -> int:
        return await self._in_chunks(partial(ops.purge_dead, older_than=older_than, chunk=CHUNK))

    async def prune_delivered(self, before: float) -> int:
        return await self._in_chunks(partial(ops.prune_delivered, before=before, chunk=CHUNK))

    async def _in_chunks(self, work: Callable[[sqlite3.Connection], int]) -> int:
        """Repeat a deleting transaction until it deletes less than a chunk (bounded: each
        round deletes rows, and the rows it looks at only shrink)."""
        total = 0
        while True:
            deleted = await self._write(work, "delete old rows")
            total += deleted
            if deleted < CHUNK:
                return total
