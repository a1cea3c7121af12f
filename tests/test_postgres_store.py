"""PostgreSQL-only behaviour of the store (the shared contract lives in tests/contract):
fencing of late outcomes, disjoint claims between replicas, group commit, migrations, and the
URL's password kept out of every message. Real databases in the throwaway test cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from bridge.errors import StorageUnavailableError
from bridge.messages import OutgoingMessage
from bridge.store import DeadLetterFilter, DeadReason, Judged, Webhook
from bridge.store.postgres.schema import SCHEMA_VERSION
from bridge.store.postgres.store import PostgresStore
from tests.conftest import polled
from tests.pgcluster import Cluster

T0 = 1000.0
LEASE = 10.0
Opener = Callable[..., Awaitable[PostgresStore]]


def message(n: int) -> OutgoingMessage:
    body = {"messageId": f"m-{n}", "userId": f"u-{n}", "type": "track", "event": "E"}
    return OutgoingMessage.build("default", body)


def hook(n: int = 0) -> Webhook:
    return Webhook("attempt.completed", "portal-1", T0, f'{{"n":{n}}}'.encode())


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """One statement on a connection of its own, as an operator's ``psql`` would run it."""
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


@pytest.fixture
def url(postgres: Cluster) -> str:
    return postgres.new_database()


@pytest.fixture
async def opener(url: str) -> AsyncIterator[Opener]:
    """Opens stores on one database, as several replicas would; closes them all after."""
    opened: list[PostgresStore] = []

    async def open_one(**options: object) -> PostgresStore:
        store = PostgresStore(options.pop("url", url), pool_size=4, **options)  # type: ignore[arg-type]
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


class TestFencing:
    async def test_a_late_ack_from_an_expired_lease_changes_nothing(self, opener: Opener) -> None:
        a, b = await opener(), await opener()
        await a.enqueue(hook(), [message(1)])
        [first] = await a.claim(now=T0, limit=10, lease_secs=LEASE)
        # A's lease expires (A stalled, say); B takes the message over.
        [second] = await b.claim(now=T0 + LEASE + 1, limit=10, lease_secs=LEASE)
        assert second.id == first.id
        await a.ack([first.id], now=T0 + LEASE + 2)  # late: ignored
        await a.bury([first.id], DeadReason("rejected", "400"), "400", now=T0 + LEASE + 2)
        await a.retry_later([first.id], T0, "late")
        stats = await b.stats(since=0)
        assert (stats.in_flight, stats.delivered_total, stats.dead_letters) == (1, 0, {})
        assert await b.claim(now=T0 + LEASE + 2, limit=10, lease_secs=LEASE) == []
        await b.ack([second.id], now=T0 + LEASE + 3)  # the current holder's outcome counts
        stats = await b.stats(since=0)
        assert (stats.in_flight, stats.delivered_total) == (0, 1)

    async def test_an_expired_lease_is_claimable_again_by_the_same_query(
        self, opener: Opener
    ) -> None:
        a = await opener()
        await a.enqueue(hook(), [message(1)])
        assert len(await a.claim(now=T0, limit=10, lease_secs=LEASE)) == 1
        assert await a.claim(now=T0 + LEASE - 1, limit=10, lease_secs=LEASE) == []
        assert await a.next_due_at() == T0 + LEASE
        assert len(await a.claim(now=T0 + LEASE, limit=10, lease_secs=LEASE)) == 1

    async def test_recover_releases_no_live_replicas_claims(self, opener: Opener) -> None:
        a, b = await opener(), await opener()
        await a.enqueue(hook(), [message(1)])
        assert len(await a.claim(now=T0, limit=10, lease_secs=LEASE)) == 1
        assert await b.recover(now=T0 + 1) == 0
        assert await b.claim(now=T0 + 1, limit=10, lease_secs=LEASE) == []


class TestSharing:
    async def test_concurrent_claims_of_two_replicas_are_disjoint(self, opener: Opener) -> None:
        a, b = await opener(), await opener()
        await a.enqueue(hook(), [message(n) for n in range(400)])
        taken: list[int] = []
        for _ in range(10):
            got = await asyncio.gather(
                a.claim(now=T0, limit=25, lease_secs=LEASE),
                b.claim(now=T0, limit=25, lease_secs=LEASE),
            )
            taken += [m.id for batch in got for m in batch]
        assert len(taken) == len(set(taken)) == 400

    async def test_concurrent_enqueues_share_commits(self, opener: Opener) -> None:
        store = await opener()
        receipts = await asyncio.gather(*(store.enqueue(hook(n), [message(n)]) for n in range(64)))
        assert sum(r.stored for r in receipts) == 64
        assert len({r.webhook_id for r in receipts}) == 64
        assert store._writer is not None
        # The writer's own counter (the store exposes none): several webhooks per transaction.
        assert store._writer.commits < 64

    async def test_the_same_message_twice_in_one_group(self, opener: Opener) -> None:
        store = await opener()
        receipts = await asyncio.gather(*(store.enqueue(hook(n), [message(7)]) for n in range(8)))
        assert sorted((r.stored, r.duplicates) for r in receipts) == [(0, 1)] * 7 + [(1, 0)]

    async def test_prune_and_purge_in_batches(self, opener: Opener) -> None:
        store = await opener()
        await store.enqueue(hook(), [message(n) for n in range(50)])
        claimed = await store.claim(now=T0, limit=50, lease_secs=LEASE)
        await store.ack([m.id for m in claimed[:40]], now=T0)
        await store.bury([m.id for m in claimed[40:]], DeadReason("r", "d"), "e", now=T0)
        assert await store.prune_delivered(before=T0 + 1) == 40
        assert await store.purge_dead(older_than=T0 + 1) == 10
        stats = await store.stats(since=0)
        assert (stats.delivered_total, stats.pending, stats.dead_letters) == (40, 0, {})
        assert await store.dead_letters(DeadLetterFilter()) == []

    async def test_pruning_takes_portals_refs_and_payloads_along(
        self, opener: Opener, url: str
    ) -> None:
        """``webhook_portals``, ``webhook_refs`` and ``message_payloads`` have no foreign keys
        (schema v5, v7): the deletes take them along."""
        store = await opener()
        await store.keep(Webhook("user.registered", None, T0, b"{}"))
        await store.keep(Webhook("user.registered", None, T0, b"{}"))
        first, second = await store.take(10, LEASE)
        await store.record(
            [
                Judged(first, "p-1", (message(1),), None, ("ref-1", "ref-2")),
                Judged(second, "p-1", (message(2),), None, ("ref-3",)),
            ]
        )
        claimed = await store.claim(now=T0, limit=10, lease_secs=LEASE)
        await store.ack([m.id for m in claimed if m.message_id == "m-1"], now=T0)
        await store.bury(
            [m.id for m in claimed if m.message_id == "m-2"], DeadReason("r", "d"), "e", now=T0
        )
        conn = await asyncpg.connect(url)

        async def left() -> list[int]:
            tables = ("webhooks", "webhook_portals", "webhook_refs", "messages", "message_payloads")
            return [await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables]  # noqa: S608

        try:
            assert await left() == [2, 2, 3, 2, 2]
            assert await store.prune_delivered(before=T0 + 1) == 1
            assert await left() == [1, 1, 1, 1, 1]
            assert await store.purge_dead(older_than=T0 + 1) == 1
            assert await left() == [0, 0, 0, 0, 0]
        finally:
            await conn.close()


class TestCounters:
    async def test_the_sharded_counts_agree_with_the_rows(self, opener: Opener, url: str) -> None:
        """stats() reads counters instead of counting a million rows; after every kind of
        change (intake, duplicates, supersede, claim, ack, retry, bury, replay, prune) they
        agree with a real count."""
        a, b = await opener(), await opener()
        await a.enqueue(hook(1), [message(n) for n in range(30)])
        await b.enqueue(hook(2), [message(n) for n in range(20, 40)])  # 10 duplicates
        first = await a.claim(now=T0, limit=15, lease_secs=LEASE)
        second = await b.claim(now=T0, limit=15, lease_secs=LEASE)
        await a.ack([m.id for m in first[:10]], now=T0)
        await a.retry_later([m.id for m in first[10:]], T0, "503")
        await b.bury([m.id for m in second[:5]], DeadReason("rejected", "400"), "400", now=T0)
        await b.ack([m.id for m in second[5:]], now=T0)
        outcome = await a.replay(DeadLetterFilter(), lambda _webhook: [message(99)], now=T0)
        assert outcome.messages == 1
        await a.prune_delivered(before=T0 + 1)
        stats = await a.stats(since=0)
        [(opened,)] = await fetch(
            url, "SELECT count(*) FROM messages WHERE state IN ('pending', 'inflight')"
        )
        assert stats.pending + stats.in_flight == opened == 40 - 20 - 5 + 1
        assert stats.delivered_total == 20


class TestMigrations:
    async def test_replicas_starting_together_migrate_once(self, opener: Opener) -> None:
        stores = await asyncio.gather(*(opener() for _ in range(4)))
        versions = sorted(store.schema_versions or (-1, -1) for store in stores)
        assert versions == [(0, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3

    async def test_refs_and_payloads_have_no_foreign_keys(self, opener: Opener, url: str) -> None:
        """Schema v7: a key check per ref and payload locked the parent row (a write)."""
        await opener()
        keys = await fetch(
            url, "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' ORDER BY 1"
        )
        assert [row[0] for row in keys] == ["dead_letters", "dead_letters"]

    async def test_a_newer_schema_refuses_to_start(self, opener: Opener, url: str) -> None:
        await opener()
        await fetch(url, "UPDATE bridge_schema SET version = $1", SCHEMA_VERSION + 1)
        with pytest.raises(StorageUnavailableError, match="newer than this bridge"):
            await opener()

    async def test_a_role_without_ddl_rights_runs_a_migrated_database(
        self, opener: Opener, url: str, postgres: Cluster
    ) -> None:
        """Operators who run ``migrate`` as the owner may run the replicas as a role that can
        only read and write rows (docs/operations.md lists the grants)."""
        await opener()  # migrated by the owner
        role = f"dml_{uuid.uuid4().hex[:8]}"
        database = url.rsplit("/", 1)[1]
        postgres.psql(
            database,
            f"CREATE ROLE {role} LOGIN; GRANT CONNECT ON DATABASE {database} TO {role};"
            f" GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
            f" GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};",
        )
        runtime = await opener(url=url.replace(f"//{postgres.user}@", f"//{role}@"))
        assert runtime.schema_versions == (SCHEMA_VERSION, SCHEMA_VERSION)
        await runtime.enqueue(hook(), [message(1)])
        claimed = await runtime.claim(now=T0, limit=10, lease_secs=LEASE)
        await runtime.ack([m.id for m in claimed], now=T0)
        assert (await runtime.stats(since=0)).delivered_total == 1


class TestUnavailable:
    async def test_no_server_is_storage_unavailable_with_the_password_masked(self) -> None:
        store = PostgresStore(
            "postgresql://bridge:hunter2@127.0.0.1:1/bridge", connect_timeout_secs=2
        )
        with pytest.raises(StorageUnavailableError) as caught:
            await store.open()
        assert "hunter2" not in str(caught.value)
        assert "connect to PostgreSQL" in str(caught.value)

    async def test_an_outcome_that_failed_to_write_applies_when_retried(
        self, opener: Opener, postgres: Cluster
    ) -> None:
        """The lease token is kept when the ack cannot be written (database down), so the
        delivery loop's retry still marks the message delivered once the database is back;
        meanwhile calls fail fast (backoff) instead of each opening a connection."""
        store = await opener()
        await store.enqueue(hook(), [message(1)])
        claimed = await store.claim(now=T0, limit=10, lease_secs=LEASE)
        postgres.pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
        try:
            with pytest.raises(StorageUnavailableError):
                await store.ack([m.id for m in claimed], now=T0)
            with pytest.raises(StorageUnavailableError, match="next try in"):
                await store.ack([m.id for m in claimed], now=T0)
        finally:
            postgres.ensure_running()

        async def acked() -> bool:  # the pool reconnects by itself; its backoff paces the tries
            try:
                await store.ack([m.id for m in claimed], now=T0)
            except StorageUnavailableError:
                return False
            return True

        await polled(acked, 30)
        stats = await store.stats(since=0)
        assert (stats.in_flight, stats.delivered_total) == (0, 1)

    async def test_a_closed_store_refuses(self, opener: Opener) -> None:
        store = await opener()
        await store.close()
        with pytest.raises(StorageUnavailableError):
            await store.enqueue(hook(), [message(1)])
        with pytest.raises(StorageUnavailableError):
            await store.claim(now=T0, limit=1, lease_secs=LEASE)
