"""The exam tests the ``exam.*`` webhooks named (bridge.mapping.exam_tests), on SQLite.

A table of its own, created with ``IF NOT EXISTS`` when the schema is set up (no schema version
step: an older bridge simply never reads it). One row per ``(portal, test id)``; ``learned_at``
is when a webhook first named it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

TABLE = """
CREATE TABLE IF NOT EXISTS exam_tests (
    portal     TEXT NOT NULL,
    test_id    TEXT NOT NULL,
    learned_at REAL NOT NULL,
    PRIMARY KEY (portal, test_id)
) WITHOUT ROWID;
"""


def create(conn: sqlite3.Connection) -> None:
    conn.execute(TABLE)


def known(conn: sqlite3.Connection) -> frozenset[tuple[str, str]]:
    rows = conn.execute("SELECT portal, test_id FROM exam_tests").fetchall()
    return frozenset((str(portal), str(test_id)) for portal, test_id in rows)


def learn(conn: sqlite3.Connection, tests: Collection[tuple[str, str]], now: float) -> int:
    """Remember ``tests``; how many were new (inside the writer's transaction)."""
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO exam_tests (portal, test_id, learned_at) VALUES (?, ?, ?)",
        [(portal, test_id, now) for portal, test_id in tests],
    )
    return conn.total_changes - before
