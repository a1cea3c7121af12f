"""Existing databases (SQLite v4, PostgreSQL v3) migrate in place with what is queued: the
pending messages stay deliverable, the dead letters stay replayable, refs stay searchable, the
portals stored in webhook rows stay shown, and new webhooks take the keep-then-map path beside
them (their mapped portal beside the row: SQLite v6, PostgreSQL v5)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from bridge.store import DeadLetterFilter, EventQuery, Judged, Webhook
from bridge.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from bridge.store.postgres.store import PostgresStore
from bridge.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from bridge.store.sqlite.store import SQLiteStore
from tests.contract.records import NOW, msg
from tests.pgcluster import Cluster

BODY = b'{"id": "w-1", "attempt": {"id": "a-1"}}'


async def keep_and_map(store: SQLiteStore | PostgresStore) -> str:
    kept = await store.keep(Webhook("attempt.completed", None, 2.0, b'{"id": "w-2"}'))
    [taken] = await store.take(10, 30)
    await store.record([Judged(taken, "p", (msg("new"),), None, ("w-2",))])
    return kept


async def test_a_sqlite_v4_database_keeps_its_queue(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for step in MIGRATIONS[:4]:
        conn.executescript(step)
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO webhooks VALUES (1, 'attempt.completed', 'p', 1.0, ?)", (BODY,))
    conn.execute(
        "INSERT INTO messages (id, webhook_id, message_id, destination, user_id, state, due_at,"
        " enqueued_at) VALUES (1, 1, 'old', 'default', 'u1', 'pending', 1.0, 1.0)"
    )
    conn.execute("INSERT INTO message_payloads VALUES (1, ?)", (msg("old").payload,))
    conn.execute("INSERT INTO webhooks VALUES (2, 'user.registered', 'p', 1.5, x'5b5d')")
    conn.execute(
        "INSERT INTO dead_letters (webhook_id, reason, detail, attempts, created_at)"
        " VALUES (2, 'not_an_object', 'x', 0, 1.5)"
    )
    conn.close()

    store = SQLiteStore(db)
    await store.open()
    try:
        assert (await store.stats(0)).unmapped == 0  # all of them were mapped on arrival
        assert [r.webhook_id for r in await store.find_events(EventQuery(ref="a-1"), NOW)] == [
            "wh_1"
        ]
        [letter] = await store.dead_letters(DeadLetterFilter())
        assert letter.portal_id == "p"  # a portal kept in the webhook's row before v6
        kept = await keep_and_map(store)
        claimed = await store.claim(NOW, 10, 30)
        assert [m.message_id for m in claimed] == ["old", "new"]
        found = await store.find_events(EventQuery(ref="w-2"), NOW)
        assert [(r.webhook_id, r.portal_id) for r in found] == [(kept, "p")]
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        # The mapped portal sits beside the row: the row with its body is never rewritten.
        assert conn.execute("SELECT portal_id FROM webhooks WHERE id = 3").fetchone() == (None,)
        assert conn.execute("SELECT * FROM webhook_portals").fetchall() == [(3, "p")]
        triggers = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name ="
            " 'webhooks_refs_insert'"
        ).fetchone()
        assert triggers == (0,)  # the refs are written by the mapping stage now
    finally:
        conn.close()


async def test_a_postgres_v3_database_keeps_its_queue(postgres: Cluster) -> None:
    url = postgres.new_database()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE bridge_schema (version integer NOT NULL)")
            for step in PG_MIGRATIONS[:3]:
                await conn.execute(step)
            await conn.execute("INSERT INTO bridge_schema VALUES (3)")
        old = PostgresStore(url, pool_size=2, migrate_on_open=False)
        await old.open()
        try:
            await old.enqueue(Webhook("attempt.completed", "p", 1.0, BODY), [msg("old")])
        finally:
            await old.close()
    finally:
        await conn.close()
    store = PostgresStore(url, pool_size=2)
    await store.open()
    try:
        assert store.schema_versions == (3, len(PG_MIGRATIONS))
        assert (await store.stats(0)).unmapped == 0
        kept = await keep_and_map(store)
        claimed = await store.claim(NOW, 10, 30)
        assert [m.message_id for m in claimed] == ["old", "new"]
        found = await store.find_events(EventQuery(), NOW)
        # The old webhook's portal is in its row; the new one's beside it (v5).
        assert [(r.webhook_id, r.portal_id) for r in found] == [(kept, "p"), ("wh_1", "p")]
    finally:
        await store.close()
