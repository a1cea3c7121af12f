"""The PostgreSQL implementation of :class:`bridge.store.Store`: one queue for many replicas.

Everything runs on the event loop through an asyncpg pool (no threads). Every method gets its
connection from :meth:`PostgresStore._connection`, the one boundary where asyncpg and OS errors
become :class:`~bridge.errors.StorageUnavailableError` (password masked). The pool reconnects by
itself: after PostgreSQL restarts or fails over, the broken connections are replaced on the next
acquire, so intake answers 503 while it is down and works again without a restart.

Leases and fencing: ``claim`` returns each row with a new token (``messages.lease``); the store
remembers ``id -> token`` for its own claims, and ``ack`` / ``retry_later`` / ``bury`` apply only
where the row still carries that token. An id this store did not claim (or whose outcome it
already settled) is ignored: its outcome belongs to whoever holds the current lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

import asyncpg

from bridge import logs
from bridge.config import StorageConfig, masked_url
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
from bridge.store.postgres import exam_tests
from bridge.store.postgres import queries as ops
from bridge.store.postgres import servicestate as service_state
from bridge.store.postgres.clock import DatabaseClock
from bridge.store.postgres.schema import (
    FOREIGN_ERRORS,
    ensure_service_state,
    is_connection_problem,
    is_retryable,
    migrate,
    translate,
)
from bridge.store.postgres.writer import DEADLOCK_RETRIES, GroupWriter

log = logs.get(__name__)


class Backoff:
    """After a connection failure, fail fast for a while (50 ms, doubling to 2 s) instead of
    every caller opening a connection to a server that is down; reset by the first success."""

    FIRST, LAST = 0.05, 2.0

    def __init__(self) -> None:
        self.delay = 0.0
        self._until = 0.0

    def wait(self) -> float:
        return max(0.0, self._until - time.monotonic())

    def failed(self) -> None:
        self.delay = min(self.LAST, max(self.FIRST, self.delay * 2))
        self._until = time.monotonic() + self.delay

    def succeeded(self) -> None:
        self.delay = self._until = 0.0


class PostgresStore:
    """Open with :meth:`open` (creates the pool, migrates the schema), stop with :meth:`close`."""

    #: Row locks, not a file lock: a whole take per ``record`` (fewer round trips).
    record_batch = 1000
    #: Eight times the records' time during a burst: the server's CPU for the mapper's
    #: statements is not niced (two replicas' intake 0.57 -> 0.77 of the durable receiver
    #: with three times the round's time; 0.63 -> 0.67 from that to this, medians of two
    #: pairs: docs/benchmarks.md).
    burst_pause = 8.0
    #: Once a lasting load's backlog is mapped, the catch-up's parts still: intake waits for
    #: no lock of the mapper's, and smaller parts would only add round trips.
    steady_record: int | None = None

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        statement_cache_size: int = 100,
        connect_timeout_secs: float = 5.0,
        command_timeout_secs: float = 10.0,
        migrate_on_open: bool = True,
        local_clock: Callable[[], float] = time.time,
    ) -> None:
        if pool_size < 2:
            raise ValueError("pool_size must be at least 2 (the writer and everything else)")
        self._url = url
        self.pool_size = pool_size
        self.statement_cache_size = statement_cache_size
        self.connect_timeout_secs = connect_timeout_secs
        self.command_timeout_secs = command_timeout_secs
        self.migrate_on_open = migrate_on_open
        self._pool: Any = None
        self._writer: GroupWriter[ops.Intake, EnqueueReceipt] | None = None
        self._keeper: GroupWriter[tuple[Webhook, str], str] | None = None
        self._listener: Any = None  # the connection that LISTENs for kept webhooks
        self._leases: dict[int, int] = {}  # id -> fencing token, for this store's own claims
        self._breaker = Backoff()
        #: Times given and returned are moved to and from the database's clock (clock.py).
        self.clock = DatabaseClock(local_clock)
        self._service_table = False  # service_state created (IF NOT EXISTS) by this store
        #: (version before, version after) of the last migration this store ran.
        self.schema_versions: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, cfg: StorageConfig) -> PostgresStore:
        assert cfg.url is not None
        return cls(
            cfg.url.get_secret_value(),
            pool_size=cfg.pool_size,
            statement_cache_size=cfg.statement_cache_size,
            connect_timeout_secs=cfg.connect_timeout_secs,
            command_timeout_secs=cfg.command_timeout_secs,
        )

    @property
    def url(self) -> str:
        """The URL with its password masked: safe to show."""
        return masked_url(self._url)

    @property
    def backlog(self) -> int:
        return self._writer.backlog if self._writer else 0

    # ---- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self.pool_size,
                statement_cache_size=self.statement_cache_size,
                command_timeout=self.command_timeout_secs,
                timeout=self.connect_timeout_secs,
                max_inactive_connection_lifetime=60.0,
                server_settings={"application_name": "synap-bridge"},
            )
        except FOREIGN_ERRORS as exc:
            raise translate(exc, "connect to PostgreSQL", self._url) from exc
        except ValueError:  # a malformed URL; the message may quote it
            raise StorageUnavailableError(f"storage.url {self.url} is not usable") from None
        try:
            if self.migrate_on_open:
                await self.migrate()
            async with self._connection("read the database clock") as conn:
                await self.clock.measure(conn)
        except BaseException:
            await self._close_pool()
            raise
        # Half the pool commits intake at most, so claims and reads always find a connection.
        flushers = max(1, self.pool_size // 2)
        self._writer = GroupWriter(self._connection, flushers=flushers)
        self._writer.start()
        self._keeper = GroupWriter(self._connection, flushers=flushers, op=ops.keep)
        self._keeper.start()

    async def migrate(self) -> tuple[int, int]:
        """Apply pending schema migrations (under an advisory lock): (version before, after)."""
        async with self._connection("migrate the schema") as conn:
            before, after = await migrate(conn)
        self.schema_versions = (before, after)
        if before != after:
            log.info("schema_migrated", backend="postgresql", before=before, after=after)
        return before, after

    async def close(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.stop()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(*FOREIGN_ERRORS):
                await asyncio.wait_for(listener.close(), timeout=self.command_timeout_secs)
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.command_timeout_secs)
        except FOREIGN_ERRORS:
            pool.terminate()

    # ---- plumbing --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[Any]:
        """A pooled connection; the one place foreign errors become StorageUnavailableError."""
        pool = self._pool
        if pool is None:
            raise StorageUnavailableError(f"storage could not {doing}: the store is not open")
        wait = self._breaker.wait()
        if wait > 0:
            raise StorageUnavailableError(
                f"storage could not {doing}: PostgreSQL unreachable, next try in {wait:.2f} s"
            )
        try:
            async with pool.acquire(timeout=self.connect_timeout_secs) as conn:
                yield conn
        except FOREIGN_ERRORS as exc:
            if is_connection_problem(exc):
                self._breaker.failed()
            raise translate(exc, doing, self._url) from exc
        self._breaker.succeeded()

    # ---- intake and mapping ----------------------------------------------------------------

    async def keep(self, webhook: Webhook, tag: str = "") -> str:
        if self._keeper is None:
            raise StorageUnavailableError("storage could not store the webhook: not open")
        # Received on the database's clock, as enqueue's webhooks: the mapping stage's hold and
        # due times (received_at + hold) are then on the clock every replica claims by.
        kept = replace(webhook, received_at=self.clock.to_db(webhook.received_at))
        return await self._keeper.submit((kept, tag))

    async def take(self, limit: int, lease_secs: float, tag: str = "") -> list[UnmappedWebhook]:
        if limit <= 0:
            return []
        async with self._connection("take unmapped webhooks") as conn:
            return await ops.take(conn, limit, lease_secs, tag)

    async def record(self, judged: Sequence[Judged]) -> list[EnqueueReceipt]:
        if not judged:
            return []
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                async with (
                    self._connection("store the mapped messages") as conn,
                    conn.transaction(),
                ):
                    return await ops.record(conn, judged)
            except StorageUnavailableError as exc:
                if attempt == DEADLOCK_RETRIES or not is_retryable(exc.__cause__):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def failed(self, taken: UnmappedWebhook, error: str) -> None:
        async with self._connection("keep a mapping error") as conn:
            await ops.mapping_failed(conn, taken.row_id, taken.lease, error)

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever any replica keeps a webhook (``LISTEN bridge_unmapped``), on a
        connection of its own. Best effort: the mapping stage also looks every poll interval,
        so a lost connection only slows the wake-up until the next look."""
        try:
            conn = await asyncpg.connect(
                self._url,
                timeout=self.connect_timeout_secs,
                server_settings={"application_name": "synap-bridge-listen"},
            )
            await conn.add_listener(ops.UNMAPPED_CHANNEL, lambda *_: wake())
        except FOREIGN_ERRORS as exc:  # OSError among them
            log.warning("listen_failed", error=type(exc).__name__)
            return
        self._listener = conn

    # ---- delivery --------------------------------------------------------------------------

    async def enqueue(
        self,
        webhook: Webhook,
        messages: Sequence[OutgoingMessage],
        dead: DeadReason | None = None,
    ) -> EnqueueReceipt:
        if dead is not None and messages:
            raise ValueError("a webhook is stored either with messages or as a dead letter")
        if self._writer is None:
            raise StorageUnavailableError("storage could not store the webhook: not open")
        received = replace(webhook, received_at=self.clock.to_db(webhook.received_at))
        return await self._writer.submit(ops.Intake(received, tuple(messages), dead))

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
        names = None if only is None else [name for name in only if name not in exclude]
        if names == []:
            return []
        async with self._connection("claim messages") as conn:
            claimed = await ops.claim(
                conn, self.clock.to_db(now), limit, lease_secs, tuple(exclude), names
            )
        for message, token in claimed:
            self._leases[message.id] = token
        return [self._here(message) for message, _ in claimed]

    def _here(self, message: ClaimedMessage) -> ClaimedMessage:
        """Its receipt time back on the caller's clock (ages are read against it)."""
        if not self.clock.skew:
            return message
        return replace(message, enqueued_at=message.enqueued_at - self.clock.skew)

    async def recover(self, now: float) -> int:  # noqa: ARG002 - the Store protocol's signature
        """Releases nothing: with several live replicas a claim found at start may be a live
        one's. A dead replica's claims come back when their lease expires."""
        return 0

    async def _settle(
        self,
        ids: Sequence[int],
        doing: str,
        work: Callable[[Any, list[tuple[int, int]]], Awaitable[object]],
    ) -> None:
        """Apply an outcome to this store's own claims among ``ids`` (with their tokens), then
        forget them. If the write fails, the tokens are kept, so a retried outcome still
        applies (instead of the message going out again after its lease)."""
        leases = [(row, self._leases[row]) for row in ids if row in self._leases]
        if not leases:
            return
        async with self._connection(doing) as conn:
            await work(conn, leases)
        for row, token in leases:
            if self._leases.get(row) == token:
                del self._leases[row]

    async def ack(self, ids: Sequence[int], now: float) -> None:
        at = self.clock.to_db(now)
        await self._settle(ids, "mark delivered", lambda conn, leases: ops.ack(conn, leases, at))

    async def retry_later(self, ids: Sequence[int], due_at: float, error: str) -> None:
        await self._settle(
            ids,
            "reschedule messages",
            lambda conn, leases: ops.retry_later(conn, leases, self.clock.to_db(due_at), error),
        )

    async def bury(self, ids: Sequence[int], dead: DeadReason, error: str, now: float) -> None:
        await self._settle(
            ids,
            "store dead letters",
            lambda conn, leases: ops.bury(conn, leases, dead, error, self.clock.to_db(now)),
        )

    async def peek(
        self, destinations: Collection[str], after: int, limit: int
    ) -> list[ClaimedMessage]:
        if limit <= 0 or not destinations:
            return []
        async with self._connection("read waiting messages") as conn:
            waiting = await ops.peek(conn, tuple(destinations), after, limit)
        return [self._here(message) for message in waiting]

    async def count_open(self, destinations: Collection[str]) -> int:
        if not destinations:
            return 0
        async with self._connection("count waiting messages") as conn:
            return await ops.count_open(conn, tuple(destinations))

    async def next_due_at(self) -> float | None:
        async with self._connection("read the next due time") as conn:
            return self.clock.to_local(await ops.next_due_at(conn))

    async def stats(self, since: float) -> StoreStats:
        async with self._connection("read statistics") as conn:
            found = await ops.stats(conn, self.clock.to_db(since))
        return replace(
            found,
            oldest_pending_at=self.clock.to_local(found.oldest_pending_at),
            last_delivered_at=self.clock.to_local(found.last_delivered_at),
            oldest_unmapped_at=self.clock.to_local(found.oldest_unmapped_at),
        )

    async def known_exam_tests(self) -> frozenset[tuple[str, str]]:
        async with self._connection("read the exam tests") as conn:
            return await exam_tests.known(conn)

    async def learn_exam_tests(self, tests: Collection[tuple[str, str]], now: float) -> int:
        if not tests:
            return 0
        async with self._connection("remember exam tests") as conn:
            return await exam_tests.learn(conn, tuple(tests), now)

    async def check_writable(self) -> None:
        async with self._connection("write") as conn:
            problem = await ops.check_writable(conn)
            await self.clock.measure(conn)
        if problem:
            raise StorageUnavailableError(f"storage could not write: {problem}")

    async def put_service_state(self, process: str, state: str, now: float) -> None:  # noqa: ARG002 - the database's clock
        async with self._connection("record the service state") as conn:
            if not self._service_table:  # a store opened without migrating (tests, tools)
                await ensure_service_state(conn)
                self._service_table = True
            await service_state.put(conn, process, state)

    async def service_states(self, now: float) -> list[ServiceState]:  # noqa: ARG002 - the database's clock
        async with self._connection("read the service state") as conn:
            return await service_state.read(conn)

    # ---- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, which: DeadLetterFilter) -> list[DeadLetter]:
        async with self._connection("list dead letters") as conn:
            return await ops.dead_letters(conn, which)

    async def dead_letter(self, letter_id: int) -> DeadLetterDetail | None:
        async with self._connection("read a letter") as conn:
            return await ops.dead_letter(conn, letter_id)

    # ---- event search ----------------------------------------------------------------------

    async def find_events(self, query: EventQuery, now: float) -> list[EventRecord]:
        async with self._connection("search the events") as conn:
            return await ops.find_events(conn, self._query_here(query), self.clock.to_db(now))

    def _query_here(self, query: EventQuery) -> EventQuery:
        """The receipt-time bounds on the database's clock, where the receipt times are."""
        if not self.clock.skew:
            return query
        since, until = query.since, query.until
        return replace(
            query,
            since=None if since is None else self.clock.to_db(since),
            until=None if until is None else self.clock.to_db(until),
        )

    async def event(self, webhook_id: str, now: float) -> EventDetail | None:
        async with self._connection("read an event") as conn:
            return await ops.event(conn, webhook_id, self.clock.to_db(now))

    async def replay(self, which: DeadLetterFilter, remap: Remapper, now: float) -> ReplayOutcome:
        """Remap on the caller's loop, write one transaction per chunk of letters."""

        async def read(letters: Sequence[int]) -> list[Source]:
            async with self._connection("read dead letters") as conn:
                return await ops.webhooks_of_letters(conn, letters)

        async def write(outcomes: Sequence[Remapped]) -> tuple[int, int, int]:
            async with self._connection("replay dead letters") as conn, conn.transaction():
                return await ops.replay_chunk(conn, outcomes, self.clock.to_db(now))

        letters = [letter.id for letter in await self.dead_letters(which)]
        return await replay_in_chunks(letters, read, write, remap)

    async def purge_dead(self, older_than: float) -> int:
        return await self._delete_old("delete old dead letters", ops.purge_dead, older_than)

    async def prune_delivered(self, before: float) -> int:
        return await self._delete_old("delete old rows", ops.prune_delivered, before)

    async def _delete_old(
        self, doing: str, work: Callable[[Any, float, int], Awaitable[int]], before: float
    ) -> int:
        """Run ``work(conn, before, chunk)`` (``before`` on the database's clock) in one
        transaction a chunk until it is done."""

        async def one_chunk(chunk: int) -> int:
            async with self._connection(doing) as conn, conn.transaction():
                return await work(conn, self.clock.to_db(before), chunk)

        return await delete_in_chunks(one_chunk)
