"""The exam tests the ``exam.*`` webhooks named (bridge.mapping.exam_tests), on PostgreSQL.

The table ``bridge_exam_tests`` comes with schema v4 (bridge.store.postgres.schema), created
under the migration lock like every step, so replicas and their mapping processes starting
together never race to create it. Every replica reads and adds to the same rows.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


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
