"""The SQLite implementation of :class:`bridge.store.Store`: the async face of the database.

No database work runs on the event loop. Writes go to one writer thread (group commit, see
:mod:`bridge.store.sqlite.writer`); the service's reads (stats, next due time, dry-run peeks) go
to one reader thread with its own connection, which WAL lets run beside the writer, and the
operator's reads (event search, dead letters: the console, the CLI) to a second one, so a slow
search never makes the delivery loop wait for its next due time. Another process (the CLI) may
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
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

from bridge import logs
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
    Judged,
    Remapper,
    ReplayOutcome,
    ServiceState,
    StoreStats,
    UnmappedWebhook,
    Webhook,
)
from bridge.store.chunks import Remapped, Source, delete_in_chunks, replay_in_chunks
from bridge.store.sqlite import exam_tests
from bridge.store.sqlite import queries as ops
from bridge.store.sqlite import servicestate as service_state
from bridge.store.sqlite.checkpoint import Checkpointer
from bridge.store.sqlite.enqueue import Item, enqueue_group, keep_group, record_group
from bridge.store.sqlite.identity import FileIdentity
from bridge.store.sqlite.schema import (
    SYNCHRONOUS_MODES,
    DatabaseCorruptError,
    DatabaseMissingError,
    check_sound,
    connect,
    migrate,
    translate,
)
from bridge.store.sqlite.writer import Writer

T = TypeVar("T")
#: ``MappingStore.record_batch`` on SQLite: the mapper records a take of 128 in transactions of
#: 32, mapping the next 32 between two, so ``serve``'s group commits never wait long for the
#: write lock (docs/benchmarks.md has the A/B).
RECORD_BATCH = 32
#: ``MappingStore.steady_record`` on SQLite: once a lasting load's backlog is mapped, records
#: of 128, not the catch-up's 512 (a hold of ~40 ms that the next commits of intake waited
#: for): 60 s sustained runs delivered +6 to +10 % (docs/benchmarks.md).
STEADY_RECORD = 128
log = logs.get(__name__)


class SQLiteStore:
    """Durable storage in one SQLite file (WAL). Open with :meth:`open`, stop with :meth:`close`.

    ``max_page_count`` caps the database size in pages (``PRAGMA max_page_count``): tests use it
    to fill the database without filling a disk. ``create=False`` (the operator commands) opens
    only an existing bridge database: a mistyped path is an error, not a new empty database.
    """

    record_batch = RECORD_BATCH
    #: As long as the records held (or waited for) the write lock: the contention is the lock.
    burst_pause = 1.0
    steady_record: int | None = STEADY_RECORD

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
        self._operator: ThreadPoolExecutor | None = None  # the operator's reads
        self._conns = threading.local()  # each reader thread's own connection (``conn``)
        self._identity = FileIdentity(self.path)
        self._corrupt: DatabaseCorruptError | None = None  # once seen, until a restart
        self._leased: dict[int, float] = {}  # webhooks taken, not recorded: monotonic expiry

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
        checkpointer = Checkpointer(
            self._connect_checkpointer,
            f"sqlite-wal:{self.path.name}",
            before=self._identity.confirm,
        )
        checkpointer.start()
        self._checkpointer = checkpointer
        writer = Writer(
            self._connect_writer,
            f"sqlite-writer:{self.path.name}",
            on_commit=checkpointer.poke,
            between=checkpointer.restart_if_wanted,
            identity=self._identity,
            busy_timeout_secs=self.busy_timeout_secs,
        )
        writer.start()
        self._writer = writer
        try:
            if self.create:  # serve: never on a malformed file (the CLI only reads or replays)
                await writer.submit(check_sound, "check the database", raw=True)
            await writer.submit(partial(migrate, create=self.create), "open the database", raw=True)
        except DatabaseMissingError as exc:
            await self._stop_writer()
            raise DatabaseMissingError(f"{self.path}: {exc}") from exc
        except BaseException:
            await self._stop_writer()
            raise
        self._identity.remember_companions()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-reader:{self.path.name}")
        self._operator = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-ops:{self.path.name}")

    async def close(self) -> None:
        """Finish the queued writes, then close every connection and stop every thread."""
        await self._stop_writer()
        readers = (self._reader, self._operator)
        self._reader = self._operator = None
        for reader in readers:
            if reader is not None:
                await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
                await asyncio.to_thread(reader.shutdown, wait=True)
        self._identity.forget()

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
        self._identity.watch(conn)
        return conn

    def _connect_checkpointer(self) -> sqlite3.Connection:
        # Opened lazily: by then the path may name another file, whose connection would take
        # our -wal and -shm (same names) for its own and checkpoint our pages into it.
        self._identity.confirm()
        conn = connect(
            self.path, synchronous=self.synchronous, busy_timeout_secs=self.busy_timeout_secs
        )
        self._identity.watch(conn)
        return conn

    def _close_reader(self) -> None:
        conn, self._conns.conn = getattr(self._conns, "conn", None), None
        if conn is not None:
            conn.close()

    # ---- plumbing --------------------------------------------------------------------------

    async def _write(
        self, work: Callable[[sqlite3.Connection], T], doing: str, *, groupable: bool = False
    ) -> T:
        if self._writer is None:
            raise StorageUnavailableError(f"storage could not {doing}: the store is not open")
        try:
            return cast(T, await self._writer.submit(work, doing, groupable=groupable))
        except StorageUnavailableError as exc:
            self._leased.clear()  # the mapping stage starts again from the oldest (take)
            if isinstance(exc, DatabaseCorruptError):
                self._seen_corrupt(exc)
            raise

    async def _read(
        self, work: Callable[[sqlite3.Connection], T], doing: str, *, operator: bool = False
    ) -> T:
        reader = self._operator if operator else self._reader
        if reader is None:
            raise StorageUnavailableError(f"storage could not {doing}: the store is not open")
        self._identity.refuse()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(reader, self._in_reader, work, doing)
        except DatabaseCorruptError as exc:
            self._seen_corrupt(exc)
            raise

    def _seen_corrupt(self, exc: DatabaseCorruptError) -> None:
        """A malformed file does not heal: one error line, and never writable again."""
        if self._corrupt is None:
            self._corrupt = exc
            log.error("database_corrupt", path=str(self.path), error=str(exc))

    def _in_reader(self, work: Callable[[sqlite3.Connection], T], doing: str) -> T:
        conn: sqlite3.Connection | None = getattr(self._conns, "conn", None)
        try:
            if conn is None:
                self._identity.confirm()  # as for the checkpointer's connection
                conn = self._conns.conn = connect(
                    self.path,
                    synchronous=self.synchronous,
                    busy_timeout_secs=self.busy_timeout_secs,
                    readonly=True,
                )
                self._identity.watch(conn)
            return work(conn)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
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

    async def keep(self, webhook: Webhook, tag: str = "") -> str:  # noqa: ARG002 - one serve
        """Group commit of the raw webhook and its ``unmapped`` row: the receiver's only write."""
        doing = "store the webhook"
        if self._writer is None:
            raise StorageUnavailableError(f"storage could not {doing}: the store is not open")
        return cast(str, await self._writer.submit_grouped(keep_group, webhook, doing))

    # ---- mapping ---------------------------------------------------------------------------

    async def take(
        self,
        limit: int,
        lease_secs: float,
        tag: str = "",  # noqa: ARG002 - one serve per file: one configuration
    ) -> list[UnmappedWebhook]:
        """Read the next unmapped webhooks on the reader (their bodies never pass through the
        writer's transaction), then count their try on the writer before anyone maps them.
        One mapper per file, so nothing can take them between the two.

        The lease is this process's memory (:attr:`_leased`): the mapping stage takes the next
        webhooks while it still maps the last ones, and a take skips what is in hand until it
        is recorded or failed, ``lease_secs`` pass, or a write fails (the stage then takes again
        in arrival order). A process that dies takes its leases with it."""
        if limit <= 0:
            return []
        now = time.monotonic()
        self._leased = {row: until for row, until in self._leased.items() if until > now}
        read = partial(ops.unmapped, limit=limit, leased=tuple(self._leased))
        rows = await self._read(read, "read unmapped webhooks")
        if not rows:
            return []
        ids = tuple(row.row_id for row in rows)
        await self._write(partial(ops.count_tries, ids=ids), "count a mapping try", groupable=True)
        self._leased.update(dict.fromkeys(ids, now + lease_secs))
        return rows

    async def record(self, judged: Sequence[Judged]) -> list[EnqueueReceipt]:
        if not judged:
            return []
        work = partial(record_group, judged=list(judged))
        try:
            return await self._write(
                lambda conn: work(conn), "store the mapped messages", groupable=True
            )
        finally:
            for one in judged:
                self._leased.pop(one.taken.row_id, None)

    async def failed(self, taken: UnmappedWebhook, error: str) -> None:
        work = partial(ops.mapping_failed, row_id=taken.row_id, error=error)
        try:
            await self._write(work, "keep a mapping error")
        finally:
            self._leased.pop(taken.row_id, None)

    async def claim(
        self,
        now: float,
        limit: int,
        lease_secs: float,
        exclude: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> list[ClaimedMessage]:
        if limit <= 0:
            return []
        work = partial(
            ops.claim,
            now=now,
            limit=limit,
            lease_secs=lease_secs,
            exclude=tuple(exclude),
            only=None if only is None else tuple(only),
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

    async def retry_later(self, ids: Sequence[int], due_at: float, error: str) -> None:
        if ids:
            work = partial(ops.retry_later, ids=tuple(ids), due_at=due_at, error=error)
            await self._write(work, "reschedule messages")

    async def bury(self, ids: Sequence[int], dead: DeadReason, error: str, now: float) -> None:
        if ids:
            work = partial(ops.bury, ids=tuple(ids), dead=dead, error=error, now=now)
            await self._write(work, "store dead letters")

    async def next_due_at(self) -> float | None:
        return await self._read(ops.next_due_at, "read the next due time")

    async def stats(self, since: float) -> StoreStats:
        def work(conn: sqlite3.Connection) -> StoreStats:
            return ops.stats(conn, since, self._storage_bytes())

        return await self._read(work, "read statistics")

    async def check_writable(self) -> None:
        if self._corrupt is not None:
            raise self._corrupt
        await self._write(ops.probe, "write")

    # ---- exam tests (bridge.mapping.exam_tests) ----------------------------------------------

    async def known_exam_tests(self) -> frozenset[tuple[str, str]]:
        return await self._read(exam_tests.known, "read the exam tests")

    async def learn_exam_tests(self, tests: Collection[tuple[str, str]], now: float) -> int:
        if not tests:
            return 0
        return await self._write(
            partial(exam_tests.learn, tests=tuple(tests), now=now), "remember exam tests"
        )

    async def put_service_state(self, process: str, state: str, now: float) -> None:
        work = partial(service_state.put, process=process, state=state, now=now)
        await self._write(work, "record the service state")

    async def service_states(self, now: float) -> list[ServiceState]:
        return await self._read(partial(service_state.read, now=now), "read the service state")

    # ---- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, which: DeadLetterFilter) -> list[DeadLetter]:
        work = partial(ops.dead_letters, which=which)
        return await self._read(work, "list dead letters", operator=True)

    async def dead_letter(self, letter_id: int) -> DeadLetterDetail | None:
        work = partial(ops.dead_letter, letter_id=letter_id)
        return await self._read(work, "read a letter", operator=True)

    # ---- event search ----------------------------------------------------------------------

    async def find_events(self, query: EventQuery, now: float) -> list[EventRecord]:
        work = partial(ops.find_events, query=query, now=now)
        return await self._read(work, "search the events", operator=True)

    async def event(self, webhook_id: str, now: float) -> EventDetail | None:
        work = partial(ops.event, ref=webhook_id, now=now)
        return await self._read(work, "read an event", operator=True)

    async def replay(self, which: DeadLetterFilter, remap: Remapper, now: float) -> ReplayOutcome:
        """Remap on the caller's loop, write one transaction per chunk of letters."""

        async def read(letters: Sequence[int]) -> list[Source]:
            work = partial(ops.webhooks_of_letters, letters=letters)
            return await self._read(work, "read dead letters", operator=True)

        async def write(outcomes: Sequence[Remapped]) -> tuple[int, int, int]:
            work = partial(ops.replay_chunk, outcomes=outcomes, now=now)
            return await self._write(work, "replay dead letters")

        letters = [letter.id for letter in await self.dead_letters(which)]
        return await replay_in_chunks(letters, read, write, remap)

    async def purge_dead(self, older_than: float) -> int:
        return await self._delete_old(lambda conn, chunk: ops.purge_dead(conn, older_than, chunk))

    async def prune_delivered(self, before: float) -> int:
        return await self._delete_old(lambda conn, chunk: ops.prune_delivered(conn, before, chunk))

    async def _delete_old(self, work: Callable[[sqlite3.Connection, int], int]) -> int:
        """Run ``work(conn, chunk)`` as one writer transaction a chunk until it is done."""
        return await delete_in_chunks(
            lambda chunk: self._write(lambda conn: work(conn, chunk), "delete old rows")
        )
