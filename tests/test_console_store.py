"""The console's reads never hold the delivery's: SQLite runs the operator's reads (event search,
dead letters) on a reader thread of their own, beside the one the delivery loop asks for its
next due time, and both beside the writer thread intake commits on.

A real SQLite file; the "slow search" is an operator read held open on a threading.Event, so
the test waits on conditions, never on a sleep.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from bridge.store import EventQuery
from bridge.store.sqlite.store import SQLiteStore


async def test_a_slow_operator_read_holds_neither_the_service_reads_nor_the_writer(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "bridge.db")
    await store.open()
    started, release = threading.Event(), threading.Event()

    def slow_search(conn: sqlite3.Connection) -> int:
        started.set()
        assert release.wait(30)  # bounded: the test releases it
        (count,) = conn.execute("SELECT count(*) FROM webhooks").fetchone()
        return int(count)

    try:
        search = asyncio.create_task(store._read(slow_search, "search", operator=True))
        assert await asyncio.to_thread(started.wait, 10)
        async with asyncio.timeout(10):  # these answer while the search is still running
            assert await store.next_due_at() is None
            assert (await store.stats(0)).pending == 0
            await store.check_writable()
        assert not search.done()
        # Operator reads queue behind each other on their own thread, not behind the service.
        queued = asyncio.create_task(store.find_events(EventQuery(user_id="u"), 0))
        release.set()
        assert await search == 0
        assert await queued == []
    finally:
        release.set()
        await store.close()
