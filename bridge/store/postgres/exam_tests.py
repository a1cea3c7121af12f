"""The exam tests the ``exam.*`` webhooks named (bridge.mapping.exam_tests), on PostgreSQL.

A table of its own, created when missing at start-up (no schema version step: an older bridge
simply never reads it). Looked up first, so a role without CREATE rights runs the bridge once
the table exists; one that cannot create it logs why and keeps running without it (every
``attempt.*`` webhook is then judged by its own ``isExam``). Every replica reads and adds to
the same rows.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

TABLE = """
CREATE TABLE IF NOT EXISTS bridge_exam_tests (
    portal     text NOT NULL,
    test_id    text NOT NULL,
    learned_at double precision NOT NULL,
    PRIMARY KEY (portal, test_id)
)
"""


async def create(conn: Any) -> None:
    """Create the table when missing (in a savepoint of the caller's transaction)."""
    if await conn.fetchval("SELECT to_regclass('bridge_exam_tests')") is None:
        async with conn.transaction():
            await conn.execute(TABLE)


async def known(conn: Any) -> frozenset[tuple[str, str]]:
    rows = await conn.fetch("SELECT portal, test_id FROM bridge_exam_tests")
    return frozenset((str(row[0]), str(row[1])) for row in rows)


async def learn(conn: Any, tests: Collection[tuple[str, str]], now: float) -> int:
    """Remember ``tests``; how many were new."""
    portals = [portal.replace("\x00", "") for portal, _ in tests]
    test_ids = [test_id.replace("\x00", "") for _, test_id in tests]
    status: str = await conn.execute(
        "INSERT INTO bridge_exam_tests (portal, test_id, learned_at)"
        " SELECT p, t, $3 FROM unnest($1::text[], $2::text[]) AS s(p, t)"
        " ON CONFLICT DO NOTHING",
        portals,
        test_ids,
        now,
    )
    return int(status.rsplit(" ", 1)[-1])
