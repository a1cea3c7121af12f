"""The queue statements' work per call does not grow with what waits or what was delivered.

Why: the mapping's take and delivery's claim run hundreds of times a second. Written as
``UPDATE ... FROM (a CTE)``, PostgreSQL's generic plan (the one a prepared statement settles on)
joined the CTE by hashing the whole ``unmapped`` table, or merged it with every row of
``message_payloads``: each call then read the whole backlog (~16 ms at 60,000 waiting webhooks)
or every payload still retained (~22 ms at 100,000 delivered messages). Here each statement runs
on a small and on a large table under both plan modes, and the rows its plan visits are
compared: bounded work visits about as many at either size. Real PostgreSQL, the module's own
SQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from bridge.store.postgres import queries
from bridge.store.postgres.store import PostgresStore
from tests.pgcluster import Cluster

SMALL, LARGE = 2_000, 60_000
TAKE_LIMIT, CLAIM_LIMIT = 128, 500
#: The rows a call may visit at the large size, as a multiple of the small size's: a plan that
#: reads the whole table visits ~30x as many.
GROWTH = 2.0

Filler = Callable[[asyncpg.Connection, int], Awaitable[None]]
#: SQL, its parameter types, and the call's arguments as SQL literals.
Statement = tuple[str, tuple[str, ...], str]


@pytest.fixture
async def connect(postgres: Cluster) -> AsyncIterator[Callable[[], Awaitable[asyncpg.Connection]]]:
    """A fresh migrated database per call (the store's own migrations), as a raw connection."""
    opened: list[asyncpg.Connection] = []

    async def fresh() -> asyncpg.Connection:
        url = postgres.new_database()
        store = PostgresStore(url, pool_size=2)
        await store.open()
        await store.close()
        conn = await asyncpg.connect(url)
        opened.append(conn)
        return conn

    yield fresh
    for conn in opened:
        await conn.close()


def rows_visited(node: dict[str, Any]) -> int:
    """Rows every node of a JSON plan produced or filtered out, over all its loops: the work
    a call did, counted the same on any machine (pages and times would be dominated by the
    index updates of the rows it changes, and by noise)."""
    own = (
        int(node.get("Actual Rows", 0))
        + int(node.get("Rows Removed by Filter", 0))
        + int(node.get("Rows Removed by Join Filter", 0))
    ) * max(1, int(node.get("Actual Loops", 1)))
    return own + sum(rows_visited(child) for child in node.get("Plans", []))


async def visited(conn: asyncpg.Connection, mode: str, statement: Statement) -> int:
    """The rows one call of the prepared ``statement`` touches under ``plan_cache_mode`` =
    ``mode`` (rolled back). A server-side PREPARE, as asyncpg prepares every statement: an
    EXPLAIN with bound parameters would always be planned for their values."""
    sql, types, args = statement
    await conn.execute(f"SET plan_cache_mode = {mode}")
    await conn.execute(f"PREPARE s({', '.join(types)}) AS {sql}")
    call = conn.transaction()
    await call.start()
    try:
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE s({args})")
    finally:
        await call.rollback()
    return rows_visited(json.loads(raw)[0]["Plan"])


async def waiting_webhooks(conn: asyncpg.Connection, count: int) -> None:
    """``count`` unmapped webhooks, the first 256 taken by another replica (in flight)."""
    await conn.execute(
        "INSERT INTO unmapped (webhook_id, tag) SELECT g, 't' FROM generate_series(1, $1) g",
        count,
    )
    await conn.execute(
        "UPDATE unmapped SET tries = 1, lease = 1,"
        " taken_until = extract(epoch FROM clock_timestamp()) + 600 WHERE webhook_id <= 256"
    )
    await conn.execute("ANALYZE unmapped")


async def retained_messages(conn: asyncpg.Connection, count: int) -> None:
    """``count`` delivered messages still retained, then as many due ones (with payloads)."""
    await conn.execute(
        "INSERT INTO messages (webhook_id, message_id, destination, user_id, state, due_at,"
        " enqueued_at, delivered_at)"
        " SELECT g, 'm-' || g, 'default', 'u-' || g,"
        "  CASE WHEN g <= $1 THEN 'delivered' ELSE 'pending' END,"
        "  CASE WHEN g <= $1 THEN NULL ELSE 1.0 END, 1.0,"
        "  CASE WHEN g <= $1 THEN 2.0 END"
        " FROM generate_series(1, 2 * $1) g",
        count,
    )
    await conn.execute(
        "INSERT INTO message_payloads (id, payload) SELECT id, '\\x7b7d' FROM messages"
    )
    await conn.execute("ANALYZE messages; ANALYZE message_payloads")


TAKE_TYPES = ("int", "float8", "text", "float8")
TAKE = (waiting_webhooks, (queries._TAKE_NEW, TAKE_TYPES, f"{TAKE_LIMIT}, 60, 't', 30"))
TAKE_TRIED = (waiting_webhooks, (queries._TAKE_TRIED, TAKE_TYPES, "1, 60, 't', 30"))
CLAIM = (retained_messages, (queries._CLAIM, ("float8", "int", "float8"), f"10, {CLAIM_LIMIT}, 30"))


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
@pytest.mark.parametrize(
    ("fill", "statement"), [TAKE, TAKE_TRIED, CLAIM], ids=["take", "take-tried", "claim"]
)
async def test_a_call_visits_as_many_rows_at_any_size(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    mode: str,
    fill: Filler,
    statement: Statement,
) -> None:
    at: dict[int, int] = {}
    for size in (SMALL, LARGE):
        conn = await connect()
        await fill(conn, size)
        at[size] = await visited(conn, mode, statement)
    assert at[LARGE] <= GROWTH * at[SMALL], at
