"""The ``service_state`` table on PostgreSQL: one row per serving replica (see
:mod:`bridge.servicestate`). Created by the schema setup when missing
(:func:`bridge.store.postgres.schema.ensure_service_state`, no schema version). Times are the
database's, so replicas with drifting clocks still agree on who is alive."""

from __future__ import annotations

import json
from typing import Any

from bridge.store import ServiceState

KEEP_SECS = 86_400.0

_NOW = "extract(epoch FROM clock_timestamp())"


async def put(conn: Any, process: str, state: str) -> None:
    await conn.execute(
        f"INSERT INTO service_state (process, state, updated_at) VALUES ($1, $2, {_NOW})"  # noqa: S608 - a constant
        " ON CONFLICT (process) DO UPDATE SET state = excluded.state,"
        " updated_at = excluded.updated_at",
        process,
        state,
    )
    await conn.execute(f"DELETE FROM service_state WHERE updated_at < {_NOW} - $1", KEEP_SECS)  # noqa: S608 - a constant


async def read(conn: Any) -> list[ServiceState]:
    exists = await conn.fetchval("SELECT to_regclass('service_state') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch(
        f"SELECT process, state, updated_at, {_NOW} - updated_at AS age"  # noqa: S608 - a constant
        " FROM service_state ORDER BY updated_at DESC"
    )
    return [
        ServiceState(r["process"], json.loads(r["state"]), r["updated_at"], max(0.0, r["age"]))
        for r in rows
    ]
