"""The ``service_state`` table on SQLite: one row per serving process (see
:mod:`bridge.servicestate`). Created on first write (IF NOT EXISTS: no schema version); a read
before that finds no table and answers nothing."""

from __future__ import annotations

import json
import sqlite3

from bridge.store import ServiceState

#: Records of processes gone for this long are dropped at the next write.
KEEP_SECS = 86_400.0

_CREATE = """
CREATE TABLE IF NOT EXISTS service_state (
    process    TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID
"""


def put(conn: sqlite3.Connection, process: str, state: str, now: float) -> None:
    conn.execute(_CREATE)
    conn.execute(
        "INSERT INTO service_state (process, state, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (process) DO UPDATE SET state = excluded.state,"
        " updated_at = excluded.updated_at",
        (process, state, now),
    )
    conn.execute("DELETE FROM service_state WHERE updated_at < ?", (now - KEEP_SECS,))


def read(conn: sqlite3.Connection, now: float) -> list[ServiceState]:
    try:
        rows = conn.execute(
            "SELECT process, state, updated_at FROM service_state ORDER BY updated_at DESC"
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    return [ServiceState(p, json.loads(s), at, max(0.0, now - at)) for p, s, at in rows]
