"""Storage faults at commit time answer 503, never a 2xx, and never damage the database.

Provoked for real, each on the real app with a real SQLite file:

* **disk full** - ``SQLiteStore(path, max_page_count=N)`` caps the file, so concurrent webhooks
  sharing a group commit fill it without filling a disk;
* **I/O error** - ``RLIMIT_FSIZE`` makes the kernel refuse writes past a file size (``EFBIG``;
  Python ignores ``SIGXFSZ``), which SQLite reports as ``SQLITE_IOERR_WRITE``;
* **locked** - another connection holds the write lock past ``storage.busy_timeout_secs``.

After each: ``PRAGMA integrity_check`` is ``ok``, every webhook answered 200 is stored, none
answered 503 is, and the bridge accepts again once the fault is gone.
"""

from __future__ import annotations

import asyncio
import resource
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.receive.runtime import RUNTIME
from bridge.store import DeadLetterFilter
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import attempt_completed as attempt
from tests.conftest import basic_auth, polled

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

URL = "/webhooks/synap/attempt.completed"


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def stored_attempts(path: Path) -> set[str]:
    """The attempt ids of every webhook row in the file (what was committed)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT json_extract(raw_body, '$.id') FROM webhooks").fetchall()
    finally:
        conn.close()
    return {str(row[0]) for row in rows}


async def post_all(client: Client, bodies: list[dict[str, Any]]) -> list[int]:
    async def one(body: dict[str, Any]) -> int:
        async with client.post(URL, json=body, headers=basic_auth()) as response:
            return response.status

    return list(await asyncio.gather(*(one(body) for body in bodies)))


class TestDiskFull:
    async def test_concurrent_webhooks_filling_the_database(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config], tmp_path: Path
    ) -> None:
        """Group commit under a full disk: each webhook gets 200 only if it is in the file."""
        path = tmp_path / "full.db"
        config = config_factory(server={"max_body_bytes": 200_000})
        store = SQLiteStore(path, max_page_count=80)  # 80 pages of 4 KiB
        client = await aiohttp_client(build_app(config, store=store))
        statuses: dict[str, int] = {}
        for round_no in range(12):  # bounded: the file is full long before
            bodies = [attempt(round_no * 100 + i, pad=6000) for i in range(16)]
            for body, status in zip(bodies, await post_all(client, bodies), strict=True):
                statuses[body["id"]] = status
            if 503 in statuses.values() and 200 in statuses.values():
                break
        assert set(statuses.values()) <= {200, 503}, statuses
        assert 503 in statuses.values(), "the database never filled up"
        accepted = {ident for ident, status in statuses.items() if status == 200}
        refused = {ident for ident, status in statuses.items() if status == 503}
        # The bridge keeps working for what fits, and /readyz tells the truth meanwhile.
        small = await client.post(URL, json=attempt(9999), headers=basic_auth())
        assert small.status in (200, 503)
        if small.status == 200:
            accepted.add("att-9999")
        await client.close()  # stops delivery and closes the store

        assert integrity(path) == "ok"
        on_disk = stored_attempts(path)
        assert accepted <= on_disk  # nothing acknowledged is missing
        assert not (refused & on_disk)  # nothing refused was half-stored

    async def test_webhook_too_big_for_the_room_left_is_refused_then_fits_after_room_is_made(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config], tmp_path: Path
    ) -> None:
        path = tmp_path / "full.db"
        config = config_factory(server={"max_body_bytes": 200_000})
        store = SQLiteStore(path, max_page_count=40)  # ~160 KiB
        client = await aiohttp_client(build_app(config, store=store))
        big = await client.post(URL, json=attempt(1, pad=190_000), headers=basic_auth())
        assert big.status == 503
        assert big.headers["Retry-After"].isdigit()
        assert (await big.json())["error"] == "storage_unavailable"
        # Small writes still fit: the refusal is about this webhook, not a stuck store.
        assert (await client.post(URL, json=attempt(2), headers=basic_auth())).status == 200
        assert (await client.get("/healthz")).status == 200
        await client.close()
        assert integrity(path) == "ok"
        assert stored_attempts(path) == {"att-2"}

        roomy = SQLiteStore(path, max_page_count=10_000)
        client = await aiohttp_client(build_app(config, store=roomy))
        again = await client.post(URL, json=attempt(1, pad=190_000), headers=basic_auth())
        assert again.status == 200
        await client.close()
        assert integrity(path) == "ok"
        assert stored_attempts(path) == {"att-1", "att-2"}


def largest_file(folder: Path, pattern: str) -> int:
    return max(p.stat().st_size for p in folder.glob(pattern))


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes of any file fail with EFBIG while inside (this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


class TestIOError:
    async def test_write_error_answers_503_and_leaves_a_sound_database(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config], tmp_path: Path
    ) -> None:
        path = tmp_path / "io.db"
        config = config_factory(server={"max_body_bytes": 400_000})
        client = await aiohttp_client(build_app(config, store=SQLiteStore(path)))
        assert (await client.post(URL, json=attempt(1), headers=basic_auth())).status == 200
        with file_size_limit(largest_file(tmp_path, "io.db*") + 64 * 1024):
            failed = await client.post(URL, json=attempt(2, pad=300_000), headers=basic_auth())
        assert failed.status == 503
        assert (await failed.json())["error"] == "storage_unavailable"
        assert "Retry-After" in failed.headers
        # The fault is gone: the same webhook (Synap would resend it) is now stored.
        again = await client.post(URL, json=attempt(2, pad=300_000), headers=basic_auth())
        assert again.status == 200
        assert (await client.get("/readyz")).status == 200
        await client.close()
        assert integrity(path) == "ok"
        assert stored_attempts(path) == {"att-1", "att-2"}


class TestLocked:
    async def test_locked_database_answers_503_then_recovers(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config]
    ) -> None:
        config = config_factory(storage={"busy_timeout_secs": 0.2})
        path = config.storage.path
        client = await aiohttp_client(build_app(config, watch_interval=0.05))
        runtime = client.app[RUNTIME]
        assert (await client.post(URL, json=attempt(1), headers=basic_auth())).status == 200

        other = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            other.execute("UPDATE meta SET value = value WHERE key = 'writable_probe'")
            locked = await client.post(URL, json=attempt(2), headers=basic_auth())
            assert locked.status == 503
            assert (await locked.json())["error"] == "storage_unavailable"
            # /readyz reads the watcher's periodic probe (issue 12 item 10): it turns within
            # one watch interval, here 0.05 s, instead of committing once per probe.
            await eventually_status(client, "/readyz", 503)
            ready = await client.get("/readyz")
            assert (await ready.json())["problems"] == ["storage unavailable"]
            # Reads still work while the lock is held (WAL): operators can look.
            await runtime.store.dead_letters(DeadLetterFilter())
        finally:
            other.execute("ROLLBACK")
            other.close()

        assert (await client.post(URL, json=attempt(2), headers=basic_auth())).status == 200
        await eventually_status(client, "/readyz", 200)
        await client.close()
        assert integrity(path) == "ok"
        assert stored_attempts(path) == {"att-1", "att-2"}


async def eventually_status(client: Client, path: str, status: int, within: float = 10) -> None:
    """GET ``path`` until it answers ``status`` (bounded): for state a background task sets."""

    async def answers() -> bool:
        return (await client.get(path)).status == status

    await polled(answers, within)
