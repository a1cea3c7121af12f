"""The database file under a running ``serve``: one ``serve`` per file; a file deleted or
replaced under it.

All with the real ``synap-bridge serve`` as a subprocess (tests/process.py) and real files: a
second ``serve`` on the same database exits with status 75 while the CLI still works beside the
first; after the file is deleted or replaced, every webhook is answered 503, ``/readyz`` fails,
and a restart finds every webhook that was acknowledged after that moment (none).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from bridge import config as config_module
from bridge.config import Config
from bridge.serve import EX_DATABASE_IN_USE, serve
from bridge.store.sqlite.lock import DatabaseInUseError, ServeLock
from bridge.store.sqlite.schema import DatabaseCorruptError
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import (
    PASSWORD,
    USER,
    WRITE_KEY,
    attempt_completed,
    basic_auth,
    eventually,
    polled,
)
from tests.contract.records import NOW, hook, msg
from tests.process import REPO, BridgeProcess, write_config

URL = "/webhooks/synap/attempt.completed"


def config_data(db: Path) -> dict[str, Any]:
    return {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        # Nothing listens there: messages stay pending, the webhooks stay in the file.
        "segment": {"write_key": WRITE_KEY, "endpoint": "http://127.0.0.1:9"},
        "storage": {"path": str(db)},
        "logging": {"format": "json"},
    }


def load(path: Path) -> Config:
    return config_module.load(str(path), {})


def stored_attempts(db: Path) -> set[str]:
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT json_extract(raw_body, '$.id') FROM webhooks").fetchall()
    finally:
        conn.close()
    return {str(row[0]) for row in rows}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=basic_auth()) as opened:
        yield opened


async def post(session: aiohttp.ClientSession, bridge: BridgeProcess, n: int) -> int:
    async with session.post(bridge.url + URL, json=attempt_completed(n)) as answer:
        return answer.status


async def ready(session: aiohttp.ClientSession, bridge: BridgeProcess) -> int:
    async with session.get(bridge.url + "/readyz") as answer:
        return answer.status


async def turns_unready(session: aiohttp.ClientSession, bridge: BridgeProcess) -> None:
    """``/readyz`` answers from the periodic storage probe (once a second): bounded wait."""

    async def unready() -> bool:
        return await ready(session, bridge) == 503

    await polled(unready, 5.0)


def cli_stats(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(config), "stats", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )


class TestOneServePerDatabase:
    async def test_a_second_serve_exits_75_and_the_first_keeps_serving(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        db = tmp_path / "data" / "bridge.db"
        config = write_config(tmp_path / "config.yaml", config_data(db))
        first, second = BridgeProcess(config), BridgeProcess(config)
        try:
            await first.start()
            assert first.proc is not None
            with pytest.raises(RuntimeError, match="did not start"):
                await second.start()
            assert await second.wait() == EX_DATABASE_IN_USE
            (refusal,) = second.events("database_in_use")
            assert refusal["level"] == "error"
            assert refusal["holder_pid"] == str(first.proc.pid)
            assert refusal["lock"] == f"{db}.lock"
            assert "only one serve may run per sqlite file" in refusal["detail"].lower()
            assert not second.events("listening")

            # The first one is unharmed, and the operator commands still work beside it.
            assert await post(session, first, 1) == 200
            stats = await asyncio.to_thread(cli_stats, config)
            assert stats.returncode == 0, stats.stderr
            backlog = json.loads(stats.stdout)
            assert backlog["pending"] + backlog["in_flight"] == 1
            assert await first.terminate() == 0
            # Once the first has gone, a serve starts on the same database.
            await second.start()
            assert await ready(session, second) == 200
            assert await second.terminate() == 0
        finally:
            await first.close()
            await second.close()

    async def test_a_killed_serve_leaves_no_stale_lock(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        config = write_config(tmp_path / "config.yaml", config_data(tmp_path / "bridge.db"))
        bridge = BridgeProcess(config)
        try:
            await bridge.start()
            assert await post(session, bridge, 1) == 200
            await bridge.kill()  # SIGKILL: the kernel drops the lock with the process
            await bridge.start()
            assert await post(session, bridge, 2) == 200
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()
        assert stored_attempts(tmp_path / "bridge.db") == {"att-1", "att-2"}

    async def test_a_symlink_to_the_database_is_the_same_database(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        """Before, the second serve locked ``alias.db.lock`` beside the link, started, and
        released the first one's claims in flight."""
        db, alias = tmp_path / "data" / "bridge.db", tmp_path / "alias.db"
        first = BridgeProcess(write_config(tmp_path / "a.yaml", config_data(db)))
        second = BridgeProcess(write_config(tmp_path / "b.yaml", config_data(alias)))
        try:
            await first.start()
            alias.symlink_to(db)
            with pytest.raises(RuntimeError, match="did not start"):
                await second.start()
            assert await second.wait() == EX_DATABASE_IN_USE
            (line,) = second.events("database_in_use")
            assert line["lock"] == f"{db}.lock"
            assert not second.events("claims_recovered")
            assert await post(session, first, 1) == 200
            assert await first.terminate() == 0
        finally:
            await first.close()
            await second.close()

    async def test_a_deleted_lock_file_is_not_a_way_in(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        """Before, the second serve made a new ``.lock``, locked it and started."""
        config = write_config(tmp_path / "config.yaml", config_data(tmp_path / "bridge.db"))
        first, second = BridgeProcess(config), BridgeProcess(config)
        try:
            await first.start()
            (tmp_path / "bridge.db.lock").unlink()  # under a running serve
            with pytest.raises(RuntimeError, match="did not start"):
                await second.start()
            assert await second.wait() == EX_DATABASE_IN_USE
            assert await post(session, first, 1) == 200
            assert await first.terminate() == 0
        finally:
            await first.close()
            await second.close()


class TestServeLock:
    """The lock itself, in this process: an ``flock`` belongs to an open file description, so
    a second ``ServeLock`` on the same database conflicts here just as a second process does."""

    def test_one_holder_at_a_time(self, tmp_path: Path) -> None:
        db = tmp_path / "state" / "bridge.db"  # the directory does not exist yet
        first, second = ServeLock(db), ServeLock(db)
        first.acquire()
        try:
            with pytest.raises(DatabaseInUseError) as refused:
                second.acquire()
            assert refused.value.holder == str(os.getpid())
            assert refused.value.lock_path == tmp_path / "state" / "bridge.db.lock"
            assert refused.value.code == "database_in_use"
        finally:
            first.release()
        second.acquire()  # released: free again, and the file stays where it is
        second.release()
        assert (tmp_path / "state" / "bridge.db.lock").exists()

    async def test_serve_refuses_before_it_listens(self, tmp_path: Path) -> None:
        db = tmp_path / "bridge.db"
        config = load(write_config(tmp_path / "config.yaml", config_data(db)))
        held = ServeLock(db)
        held.acquire()
        try:
            with capture_logs() as lines:
                assert await serve(config, None) == EX_DATABASE_IN_USE
        finally:
            held.release()
        (line,) = [line for line in lines if line["event"] == "database_in_use"]
        assert line["holder_pid"] == str(os.getpid())
        assert db.stat().st_size == 0  # the holder's lock made it; nothing was written

    async def test_serve_reports_a_lock_it_cannot_create(self, tmp_path: Path) -> None:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("x", encoding="utf-8")
        config = load(write_config(tmp_path / "config.yaml", config_data(blocker / "bridge.db")))
        with capture_logs() as lines:
            assert await serve(config, None) == 1
        assert [line["event"] for line in lines] == ["storage_unavailable"]


class TestDatabaseFileLost:
    async def _run(
        self, tmp_path: Path, session: aiohttp.ClientSession, *, replace: bool
    ) -> tuple[Path, BridgeProcess]:
        db = tmp_path / "bridge.db"
        config = write_config(tmp_path / "config.yaml", config_data(db))
        bridge = BridgeProcess(config)
        await bridge.start()
        assert [await post(session, bridge, n) for n in range(5)] == [200] * 5
        if replace:  # a restore done wrong: another database moved over the live one
            other = tmp_path / "other.db"
            with sqlite3.connect(other) as conn:
                conn.execute("CREATE TABLE unrelated (x)")
            conn.close()
            os.replace(other, db)
        else:
            db.unlink()
        # At once (no wait for a periodic check): nothing more is acknowledged.
        answers = await asyncio.gather(*(post(session, bridge, n) for n in range(100, 150)))
        assert answers == [503] * 50
        await turns_unready(session, bridge)
        assert await post(session, bridge, 150) == 503
        # serve's own line (its mapper process, which writes the same file, says it too)
        (lost,) = [line for line in bridge.events("database_file_lost") if "stage" not in line]
        assert lost["level"] == "error"
        assert lost["how"] == ("replaced" if replace else "deleted")
        if replace:  # our WAL would have been read as the replacement's: moved aside by
            # whichever of serve and its mapping process (both write the file) saw it first
            moved = {p for line in bridge.events("database_file_lost") for p in line["moved_aside"]}
            assert moved == {f"{db}-wal.orphaned", f"{db}-shm.orphaned"}
        assert await bridge.terminate() == 0
        return db, bridge

    async def test_deleted(self, tmp_path: Path, session: aiohttp.ClientSession) -> None:
        db, bridge = await self._run(tmp_path, session, replace=False)
        try:
            await bridge.start()  # a fresh database where the path points now
            assert await post(session, bridge, 200) == 200
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()
        # Every webhook acknowledged after the deletion is on disk: none was acknowledged.
        assert stored_attempts(db) == {"att-200"}

    async def test_replaced(self, tmp_path: Path, session: aiohttp.ClientSession) -> None:
        db, bridge = await self._run(tmp_path, session, replace=True)
        with sqlite3.connect(db) as conn:  # the replacement was not written into
            assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("unrelated",)]
        conn.close()
        try:
            await bridge.start()
            assert await post(session, bridge, 200) == 200
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()
        assert stored_attempts(db) == {"att-200"}

    async def test_an_idle_bridge_notices_within_a_second_or_two(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        config = write_config(tmp_path / "config.yaml", config_data(tmp_path / "bridge.db"))
        bridge = BridgeProcess(config)
        try:
            await bridge.start()
            assert await post(session, bridge, 1) == 200
            (tmp_path / "bridge.db").unlink()
            # No request: the idle writer's own check logs it.
            await eventually(lambda: bool(bridge.events("database_file_lost")), within=5.0)
            await turns_unready(session, bridge)
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()


def backup(db: Path, target: Path) -> None:
    """An operator's backup: SQLite's online backup into a file of its own."""
    source = sqlite3.connect(db)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


def quick_check(db: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:  # too broken for the check to finish
        return [(str(exc),)]
    finally:
        conn.close()


class TestRestoredOverTheLiveFile:
    """Same device and inode, other content: ``cp backup.db bridge.db`` or ``truncate -s 0``
    under a running serve. Before: 300 more webhooks answered 200 after the ``cp`` and the
    file turned malformed (all 700 acknowledged lost); after a restart ``/readyz`` said ready
    on the corrupt file."""

    async def _overwrite(
        self, tmp_path: Path, session: aiohttp.ClientSession, command: list[str]
    ) -> tuple[Path, BridgeProcess]:
        db = tmp_path / "bridge.db"
        config = write_config(tmp_path / "config.yaml", config_data(db))
        bridge = BridgeProcess(config)
        await bridge.start()
        assert [await post(session, bridge, n) for n in range(5)] == [200] * 5
        backup(db, tmp_path / "backup.db")
        inode = db.stat().st_ino
        assert [await post(session, bridge, n) for n in range(5, 40)] == [200] * 35
        # The live file has grown past the backup (the checkpointer copied the new pages in),
        # as it has by the time anyone restores yesterday's backup.
        saved = (tmp_path / "backup.db").stat().st_size
        await eventually(lambda: db.stat().st_size > saved, within=10.0)
        await asyncio.to_thread(subprocess.run, command, check=True, cwd=tmp_path, timeout=30)
        assert db.stat().st_ino == inode  # what the identity check alone does not see
        answers = await asyncio.gather(*(post(session, bridge, n) for n in range(100, 150)))
        assert answers == [503] * 50
        await turns_unready(session, bridge)
        # serve's own line: its mapping process, which writes the same file, may say it too
        (lost,) = [line for line in bridge.events("database_file_lost") if "stage" not in line]
        assert lost["level"] == "error"
        assert lost["how"] == "overwritten"
        moved = {p for line in bridge.events("database_file_lost") for p in line["moved_aside"]}
        assert moved == {f"{db}-wal.orphaned", f"{db}-shm.orphaned"}
        assert await bridge.terminate() == 0
        return db, bridge

    async def test_a_backup_copied_over_the_live_file(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        db, bridge = await self._overwrite(tmp_path, session, ["cp", "backup.db", "bridge.db"])
        # Nothing of ours was checkpointed into the restored file, even when serve closed.
        assert quick_check(db) == [("ok",)]
        assert stored_attempts(db) == {f"att-{n}" for n in range(5)}
        try:
            await bridge.start()  # the restored backup is served
            assert await post(session, bridge, 200) == 200
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()
        assert stored_attempts(db) == {f"att-{n}" for n in (*range(5), 200)}

    async def test_the_live_file_truncated(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        _, bridge = await self._overwrite(tmp_path, session, ["truncate", "-s", "0", "bridge.db"])
        await bridge.close()

    async def test_a_corrupt_file_is_never_served(
        self, tmp_path: Path, session: aiohttp.ClientSession
    ) -> None:
        db = tmp_path / "bridge.db"
        config = write_config(tmp_path / "config.yaml", config_data(db))
        bridge = BridgeProcess(config)
        try:
            await bridge.start()
            assert [await post(session, bridge, n) for n in range(40)] == [200] * 40
            assert await bridge.terminate() == 0
            # The last pages overwritten with zeros: the schema stays, a tree is broken.
            with db.open("r+b") as broken:
                page = int.from_bytes(broken.read(18)[16:18], "big")
                broken.seek(db.stat().st_size - 4 * page)
                broken.write(bytes(4 * page))
            assert quick_check(db) != [("ok",)]
            with pytest.raises(RuntimeError, match="did not start"):
                await bridge.start()
            assert await bridge.wait() == 1
            (line,) = bridge.events("database_corrupt")
            assert line["level"] == "error"
            assert "corrupt" in line["error"]
            assert not bridge.events("listening")
        finally:
            await bridge.close()


async def test_corruption_found_while_running_makes_the_store_unwritable(tmp_path: Path) -> None:
    """Found by a claim (the operator commands open without the start check): an error line
    once, and the readiness probe fails from then on instead of a warning per claim."""
    db = tmp_path / "bridge.db"
    store = SQLiteStore(db)
    await store.open()
    for n in range(60):
        await store.enqueue(hook(n), [msg(f"m{n}")])
    await store.close()
    conn = sqlite3.connect(db)
    ((root,),) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'")
    ((page,),) = conn.execute("PRAGMA page_size")
    conn.close()
    with db.open("r+b") as broken:  # the messages table's root page, zeroed
        broken.seek((root - 1) * page)
        broken.write(bytes(page))
    store = SQLiteStore(db, create=False)
    await store.open()
    try:
        with capture_logs() as lines:
            with pytest.raises(DatabaseCorruptError):
                await store.claim(NOW, 100, 60.0)
            for _ in range(2):
                with pytest.raises(DatabaseCorruptError):
                    await store.check_writable()
        (line,) = [line for line in lines if line["event"] == "database_corrupt"]
        assert line["log_level"] == "error"
    finally:
        await store.close()
