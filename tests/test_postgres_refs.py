"""The event search's refs written by intake itself (schema v3) instead of a trigger: the ids the
receiver picks out of its own parse of the body must be exactly what the database's
``bridge_webhook_refs`` finds in the raw body, and a v2 database (trigger and all) migrates.
Real databases in the throwaway test cluster; the bodies go through the real mapping."""

from __future__ import annotations

import random
import string
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from bridge import config as config_module
from bridge.mapping import intake
from bridge.messages import OutgoingMessage
from bridge.store import EventQuery, Webhook
from bridge.store.postgres import queries
from bridge.store.postgres.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from bridge.store.postgres.store import PostgresStore
from bridge.store.refs import MAX_REF_BYTES, refs_of
from tests.pgcluster import Cluster

T0 = 1000.0

#: Bodies around every rule of ``bridge_webhook_refs``: strings, integers (negative, zero,
#: beyond 64 bits), booleans, null, objects and arrays where an id is expected, a nested key
#: under a non-object, the same id twice, empty and non-ASCII strings, floats written several
#: ways, a NUL inside an id.
BODIES: tuple[bytes, ...] = (
    b'{"id": "w-1", "attempt": {"id": "a-1"}, "test": {"id": "t-1", "objectId": "t-obj"}}',
    b'{"id": 4711, "exam": {"id": -3, "objectId": 0}, "assignment": {"objectId": "as-1"}}',
    b'{"id": true, "attempt": {"id": null}, "test": {"id": {"x": 1}}, "exam": {"id": [1]}}',
    b'{"attempt": "a-flat", "test": [{"id": "t-in-list"}], "exam": 7}',
    b'{"id": "same", "attempt": {"id": "same"}, "test": {"objectId": ""}}',
    b'{"id": "caf\xc3\xa9 \\u00e9\\ud83d\\ude00", "assignment": {"objectId": "x\\"y"}}',
    b'{"id": 1e3, "attempt": {"id": "a-2"}}',
    b'{"id": 10.0, "test": {"id": -0.5}}',
    b'{"id": 123456789012345678901234567890, "attempt": {"id": "a-3"}}',
    b'{"id": "nul\\u0000inside", "attempt": {"id": "a-4"}}',
    b'{"id": "w-5", "id": "w-5-last"}',
    b'{"nothing": "here"}',
)


@pytest.fixture
def url(postgres: Cluster) -> str:
    return postgres.new_database()


@pytest.fixture
async def store(url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(url, pool_size=2)
    await opened.open()
    yield opened
    await opened.close()


async def _stored_refs(url: str, webhook_ref: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT ref FROM webhook_refs WHERE webhook_id = $1", int(webhook_ref[3:])
        )
    finally:
        await conn.close()
    return {row[0] for row in rows}


async def _database_refs(url: str, raw: bytes) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT r FROM bridge_webhook_refs($1) AS r", raw)
    finally:
        await conn.close()
    return {row[0] for row in rows}


class TestRefsOf:
    def test_strings_and_integers_in_order_without_repeats(self) -> None:
        payload = orjson.loads(BODIES[1])
        assert refs_of(payload) == ("4711", "-3", "0", "as-1")
        assert refs_of(orjson.loads(BODIES[4])) == ("same", "")

    def test_what_jsonb_would_print_differently_is_left_to_the_database(self) -> None:
        assert refs_of(orjson.loads(BODIES[6])) is None  # 1e3 is 1000 in jsonb
        assert refs_of(orjson.loads(BODIES[9])) is None  # jsonb refuses a NUL

    def test_the_mapping_hands_them_to_the_store(self) -> None:
        raw = b'{"id": "w-9", "attempt": {"id": "a-9"}, "meta": {"eventName": "x"}}'
        mapped = intake.process("attempt.completed", raw, T0, config_module.parse({}))
        assert mapped.webhook.refs == ("w-9", "a-9")


class TestStoredRefs:
    @pytest.mark.parametrize("raw", BODIES)
    async def test_the_same_refs_as_the_database_finds(
        self, store: PostgresStore, url: str, raw: bytes
    ) -> None:
        """Whether the receiver knew them or the statement worked them out (None), the stored
        refs are what v2's trigger stored for this body."""
        refs = refs_of(orjson.loads(raw))
        receipt = await store.enqueue(Webhook("test.completed", None, T0, raw, refs), [])
        expected = await _database_refs(url, raw)
        assert await _stored_refs(url, receipt.webhook_id) == expected
        if refs is not None:
            assert set(refs) == expected

    async def test_a_group_mixing_known_and_unknown_refs(self, store: PostgresStore) -> None:
        hooks = [
            Webhook("test.completed", None, T0, raw, refs_of(orjson.loads(raw))) for raw in BODIES
        ]
        receipts = [await store.enqueue(hook, []) for hook in hooks]
        found = await store.find_events(EventQuery(ref="a-2"), T0)
        assert [record.webhook_id for record in found] == [receipts[6].webhook_id]
        found = await store.find_events(EventQuery(ref="t-obj"), T0)
        assert [record.webhook_id for record in found] == [receipts[0].webhook_id]

    async def test_a_nul_elsewhere_in_the_body_no_longer_hides_its_refs(
        self, store: PostgresStore, url: str
    ) -> None:
        """jsonb refuses a whole body with an escaped NUL anywhere, so v2's trigger stored no
        refs for it; the receiver's parse finds them, as SQLite's trigger always did."""
        raw = b'{"id": "w-6", "note": "a\\u0000b"}'
        assert await _database_refs(url, raw) == set()
        refs = refs_of(orjson.loads(raw))
        receipt = await store.enqueue(Webhook("test.completed", None, T0, raw, refs), [])
        assert await _stored_refs(url, receipt.webhook_id) == {"w-6"}

    @pytest.mark.parametrize("float_id", [False, True])
    async def test_an_id_too_long_to_index_does_not_refuse_the_webhook(
        self, store: PostgresStore, url: str, float_id: bool
    ) -> None:
        """A btree entry holds at most 2,704 bytes: a longer ref failed the whole insert, so
        the webhook was refused (503) on every retry and storage reported failing. It is now
        stored without that ref, whether the receiver knew the refs or the SQL fallback (a
        float id elsewhere) worked them out; the other refs still find it."""
        rng = random.Random(7)  # incompressible, as PostgreSQL would otherwise shrink it
        long_id = "".join(rng.choice(string.ascii_letters) for _ in range(MAX_REF_BYTES + 1))
        raw = orjson.dumps({"id": long_id, "attempt": {"id": "a-long"}})
        if float_id:  # 1e3: a ref only PostgreSQL can print ("1000"), so the SQL fallback
            raw = raw[:-1] + b', "exam": {"id": 1e3}}'
        refs = refs_of(orjson.loads(raw))
        receipt = await store.enqueue(Webhook("test.completed", None, T0, raw, refs), [])
        expected = {"a-long", "1000"} if float_id else {"a-long"}
        assert await _stored_refs(url, receipt.webhook_id) == expected
        found = await store.find_events(EventQuery(ref="a-long"), T0)
        assert [record.webhook_id for record in found] == [receipt.webhook_id]

    def test_the_longest_ref_that_fits_is_kept(self) -> None:
        fits = "é" * (MAX_REF_BYTES // 2)  # two bytes each: exactly MAX_REF_BYTES
        assert refs_of({"id": fits, "test": {"id": fits + "x"}}) == (fits,)


def _intake(n: int) -> queries.Intake:
    raw = f'{{"id": "w-{n}", "attempt": {{"id": "a-{n}"}}}}'.encode()
    hook = Webhook("attempt.completed", None, T0, raw, refs_of(orjson.loads(raw)))
    body = {"messageId": f"m-{n}", "userId": f"u-{n}", "type": "track", "event": "E"}
    return queries.Intake(hook, (OutgoingMessage.build("default", body),), None)


class TestPlanCache:
    async def test_the_enqueue_statement_is_planned_once_not_per_call(self, url: str) -> None:
        """After PostgreSQL's five trial custom plans the statement runs on its generic plan:
        re-planning it per group cost more server CPU than the inserts of a dozen webhooks."""
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            for n in range(0, 240, 12):  # groups of twelve webhooks with a message each
                await queries.enqueue(conn, [_intake(k) for k in range(n, n + 12)])
            custom, generic = await conn.fetchrow(
                "SELECT custom_plans, generic_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%INSERT INTO webhook_refs%'"
                " AND statement NOT LIKE '%pg_prepared_statements%'"  # not this query
            )
        finally:
            await conn.close()
        assert generic > custom, (custom, generic)


class TestMigrationFromV2:
    async def test_a_v2_database_keeps_its_refs_and_loses_the_trigger(
        self, postgres: Cluster
    ) -> None:
        url = postgres.new_database()
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute("CREATE TABLE bridge_schema (version integer NOT NULL)")
                for step in MIGRATIONS[:2]:
                    await conn.execute(step)
                await conn.execute("INSERT INTO bridge_schema VALUES (2)")
            await conn.execute(
                "INSERT INTO webhooks (code, received_at, raw_body) VALUES ($1, $2, $3)",
                "test.completed",
                T0,
                BODIES[0],
            )
        finally:
            await conn.close()
        store = PostgresStore(url, pool_size=2)
        await store.open()
        try:
            assert store.schema_versions == (2, SCHEMA_VERSION)
            old = await store.find_events(EventQuery(ref="a-1"), T0)
            raw = b'{"id": "w-new", "attempt": {"id": "a-1"}}'
            receipt = await store.enqueue(
                Webhook("test.completed", None, T0 + 1, raw, refs_of(orjson.loads(raw))), []
            )
            both = await store.find_events(EventQuery(ref="a-1"), T0 + 2)
            assert [r.webhook_id for r in both] == [receipt.webhook_id, old[0].webhook_id]
            assert await _stored_refs(url, receipt.webhook_id) == {"w-new", "a-1"}
            conn = await asyncpg.connect(url)
            try:
                triggers = await conn.fetchval(
                    "SELECT count(*) FROM pg_trigger WHERE tgname = 'webhooks_refs_insert'"
                )
            finally:
                await conn.close()
            assert triggers == 0
        finally:
            await store.close()
