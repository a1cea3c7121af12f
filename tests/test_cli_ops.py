"""The operator commands: ``stats`` and ``dead-letters {list,show,replay,purge}``.

The commands run in-process (``bridge.cli.command`` in a worker thread, as the console script
would, on its own event loop) or as a real subprocess where the terminal matters. The database
is a real SQLite file filled through the real intake path and store, with known times, or the
file of a real ``synap-bridge serve`` running at the same moment.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import logging
import os
import pty
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from bridge.cli import command as cli
from bridge.config import Config
from bridge.mapping import intake
from bridge.store import DeadLetterFilter, DeadReason
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import PASSWORD, USER, WRITE_KEY, basic_auth, polled
from tests.fakes import FakeSegment
from tests.process import REPO, BridgeProcess, write_config

DAY = 86400.0


# ---- running the CLI ---------------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    out: str

    def json(self) -> Any:
        return json.loads(self.out)


def _run_cli_blocking(argv: list[str]) -> Ran:
    """``synap-bridge ARGV`` in this process; logging is put back as it was afterwards."""
    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    try:
        code = cli.main(argv, out=out)
    finally:
        structlog.configure(**saved_structlog)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    return Ran(code, out.getvalue())


async def delivered_at_least(config_path: Path, count: int, within: float = 10.0) -> Any:
    """``stats --json`` once the database says ``count`` were delivered (bounded): the fake
    counts a batch before the bridge records its ack, and no event crosses the processes."""
    latest: list[Any] = []

    async def delivered() -> bool:
        latest[:] = [(await run_cli(config_path, "stats", "--json")).json()]
        return bool(latest[0]["delivered_total"] >= count)

    await polled(delivered, within)
    return latest[0]


async def run_cli(config_path: Path, *args: str) -> Ran:
    """The CLI has its own event loop (asyncio.run), so it runs in a worker thread."""
    return await asyncio.to_thread(_run_cli_blocking, ["--config", str(config_path), *args])


# ---- configurations ------------------------------------------------------------------------


def config_data(
    db: Path, segment_url: str = "http://127.0.0.1:9", *, fixed: bool
) -> dict[str, Any]:
    """``fixed=False``: user.registered is switched off and unrouted portals have nowhere to go
    (both dead-letter); ``fixed=True``: the operator's corrected configuration."""
    data: dict[str, Any] = {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "segment": {"write_key": WRITE_KEY, "endpoint": segment_url},
        "storage": {"path": str(db)},
        "delivery": {"batch": {"timeout_secs": 0.01}},
        "logging": {"format": "json"},
        "routing": {
            "destinations": {
                "school_b": {
                    "portal_ids": ["portal-b"],
                    "endpoint": segment_url,
                    "write_key": WRITE_KEY,
                }
            },
            "default_destination": "default" if fixed else None,
        },
    }
    if not fixed:
        data["mapping"] = {"codes": {"user.registered": {"enabled": False}}}
    return data


def load(path: Path) -> Config:
    from bridge import config as config_module

    return config_module.load(str(path), {})


# ---- webhooks ----------------------------------------------------------------------------------


def registered(user: str) -> dict[str, Any]:
    return {
        "objectId": user,
        "name": "Ada Lovelace",
        "email": f"{user}@example.org",
        "timeRegistered": "2026-11-01T09:00:00Z",
    }


def completed(n: int, portal: str = "portal-1", user: str | None = "u-1") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"att-{n}",
        "score": 5,
        "timeCompleted": "2026-11-01T10:00:00Z",
        "test": {"id": "t-1", "title": "Algebra"},
        "attempt": {"id": f"att-{n}", "isExam": False},
        "portal": {"id": portal},
        "meta": {"timestamp": "2026-11-01T10:00:01Z"},
    }
    if user is not None:
        body["user"] = {"id": user, "name": "Ada", "email": "ada@example.org"}
    return body


# ---- a database with known contents -----------------------------------------------------------


@dataclass
class Populated:
    broken_db: Path
    broken: Path  # the configuration the webhooks arrived under
    fixed: Path  # the corrected one
    bodies: dict[str, dict[str, Any]]  # by dead-letter reason: the raw body that was posted
    rejected_message_id: str


async def _store(store: SQLiteStore, config: Config, code: str, body: Any, at: float) -> None:
    result = intake.process(code, orjson.dumps(body), at, config)
    await store.enqueue(result.webhook, result.messages, result.dead)


@pytest.fixture
async def populated(tmp_path: Path) -> Populated:
    """Dead letters of every kind, 2 delivered messages (one in the last hour), 3 pending."""
    db = tmp_path / "bridge.db"
    broken = write_config(tmp_path / "broken.yaml", config_data(db, fixed=False))
    fixed = write_config(tmp_path / "fixed.yaml", config_data(db, fixed=True))
    config = load(broken)
    now = time.time()
    bodies = {
        "unknown_code": {"a": 1},
        "missing_user_id": completed(1, user=None),
        "code_disabled": registered("u-reg"),
        "no_destination": completed(2, portal="portal-x"),
        "old": {"very": "old"},
    }
    store = SQLiteStore(db)
    await store.open()
    try:
        await _store(store, config, "course.finished", bodies["old"], now - 10 * DAY)
        await _store(store, config, "course.finished", bodies["unknown_code"], now - 60)
        await _store(store, config, "attempt.completed", bodies["missing_user_id"], now - 60)
        await _store(store, config, "user.registered", bodies["code_disabled"], now - 60)
        await _store(store, config, "attempt.completed", bodies["no_destination"], now - 60)
        # Delivered: one 2 hours ago, one 30 minutes ago; one rejected by Segment.
        for n, portal in ((10, "portal-b"), (11, "portal-b"), (12, "portal-b")):
            await _store(store, config, "attempt.completed", completed(n, portal), now - 3 * 3600)
        claimed = await store.claim(now - 3 * 3600, 3, 60)
        assert len(claimed) == 3
        await store.ack([claimed[0].id], now - 2 * 3600)
        await store.ack([claimed[1].id], now - 1800)
        why = DeadReason("rejected_by_segment", "HTTP 400 invalid_request: bad message")
        await store.bury([claimed[2].id], why, "HTTP 400 invalid_request: bad message", now - 60)
        # Pending: the oldest was received 120 s ago.
        for n, age in ((20, 120), (21, 30), (22, 10)):
            await _store(store, config, "attempt.completed", completed(n, "portal-b"), now - age)
    finally:
        await store.close()
    return Populated(db, broken, fixed, bodies, claimed[2].message_id)


def ids_by_reason(listing: list[dict[str, Any]]) -> dict[str, int]:
    return {row["reason"]: row["id"] for row in listing}


# ---- the tests -----------------------------------------------------------------------------


class TestList:
    async def test_table_lists_every_dead_letter(self, populated: Populated) -> None:
        ran = await run_cli(populated.broken, "dead-letters", "list")
        assert ran.code == 0
        for reason in (
            "unknown_code",
            "missing_user_id",
            "code_disabled",
            "no_destination",
            "rejected_by_segment",
        ):
            assert reason in ran.out
        assert ran.out.rstrip().endswith("6 dead letter(s)")

    async def test_json_and_filters(self, populated: Populated) -> None:
        every = (await run_cli(populated.broken, "dead-letters", "list", "--json")).json()
        assert len(every) == 6
        first = every[0]
        assert set(first) >= {"id", "code", "reason", "detail", "attempts", "created_at"}
        assert first["created_at"].endswith("+00:00")  # ISO-8601, UTC

        by_code = await run_cli(
            populated.broken, "dead-letters", "list", "--code", "attempt.completed", "--json"
        )
        assert sorted(row["reason"] for row in by_code.json()) == [
            "missing_user_id",
            "no_destination",
            "rejected_by_segment",
        ]
        by_reason = await run_cli(
            populated.broken, "dead-letters", "list", "--reason", "unknown_code", "--json"
        )
        assert [row["code"] for row in by_reason.json()] == ["course.finished"] * 2
        both = await run_cli(
            populated.broken,
            "dead-letters",
            "list",
            "--code",
            "attempt.completed",
            "--reason",
            "unknown_code",
            "--json",
        )
        assert both.json() == []


class TestShow:
    async def test_show_has_raw_body_reason_attempts_and_last_error(
        self, populated: Populated
    ) -> None:
        listing = (await run_cli(populated.broken, "dead-letters", "list", "--json")).json()
        ids = ids_by_reason(listing)

        unmapped = await run_cli(
            populated.broken, "dead-letters", "show", str(ids["code_disabled"])
        )
        assert unmapped.code == 0
        shown = unmapped.json()
        assert shown["raw_body"] == populated.bodies["code_disabled"]
        assert shown["reason"] == "code_disabled"
        assert shown["segment_message"] is None  # the whole webhook did not map

        ran = await run_cli(
            populated.broken, "dead-letters", "show", str(ids["rejected_by_segment"])
        )
        rejected = ran.json()
        assert rejected["attempts"] == 1
        assert rejected["last_error"] == "HTTP 400 invalid_request: bad message"
        assert rejected["message_id"] == populated.rejected_message_id
        assert rejected["segment_message"]["messageId"] == populated.rejected_message_id
        assert rejected["raw_body"]["id"] == "att-12"

    async def test_both_id_kinds_are_accepted_where_an_id_is(self, populated: Populated) -> None:
        """Issue 23: one id space a user can type, ``wh_`` webhooks and ``dl_`` dead letters."""
        listing = (await run_cli(populated.broken, "dead-letters", "list", "--json")).json()
        letter = ids_by_reason(listing)["code_disabled"]
        (row,) = [r for r in listing if r["id"] == letter]
        assert row["ref"] == f"dl_{letter}"
        table = await run_cli(populated.broken, "dead-letters", "list")
        assert f"dl_{letter}" in table.out
        assert row["webhook_id"] in table.out
        shown = await run_cli(populated.broken, "dead-letters", "show", f"dl_{letter}")
        assert shown.json()["reason"] == "code_disabled"
        event = await run_cli(populated.broken, "events", "show", f"dl_{letter}", "--json")
        assert event.json()["webhook_id"] == row["webhook_id"]  # the dead letter's webhook
        webhook = await run_cli(populated.broken, "dead-letters", "show", row["webhook_id"])
        assert webhook.code == 1
        assert f"events show {row['webhook_id']}" in webhook.out

    async def test_show_unknown_id(self, populated: Populated) -> None:
        ran = await run_cli(populated.broken, "dead-letters", "show", "999999")
        assert ran.code == 1
        assert "no dead letter with id 999999" in ran.out


class TestReplay:
    async def test_replay_after_the_configuration_is_fixed(self, populated: Populated) -> None:
        """code_disabled and no_destination recover once the configuration allows them."""
        still = await run_cli(
            populated.broken, "dead-letters", "replay", "--code", "user.registered"
        )
        assert still.code == 0
        assert "replayed 0 dead letter(s)" in still.out
        assert "1 still cannot be mapped" in still.out

        fixed = await run_cli(
            populated.fixed, "dead-letters", "replay", "--code", "user.registered"
        )
        assert "replayed 1 dead letter(s) as 2 message(s)" in fixed.out  # identify + track
        routed = await run_cli(
            populated.fixed, "dead-letters", "replay", "--reason", "no_destination"
        )
        assert "replayed 1 dead letter(s) as 1 message(s)" in routed.out

        left = (await run_cli(populated.fixed, "dead-letters", "list", "--json")).json()
        assert sorted(row["reason"] for row in left) == [
            "missing_user_id",
            "rejected_by_segment",
            "unknown_code",
            "unknown_code",
        ]
        stats = (await run_cli(populated.fixed, "stats", "--json")).json()
        assert stats["pending"] == 3 + 2 + 1

    async def test_replay_by_id_and_all(self, populated: Populated) -> None:
        ids = ids_by_reason(
            (await run_cli(populated.fixed, "dead-letters", "list", "--json")).json()
        )
        one = await run_cli(
            populated.fixed, "dead-letters", "replay", str(ids["rejected_by_segment"])
        )
        assert "replayed 1 dead letter(s) as 1 message(s)" in one.out
        every = await run_cli(populated.fixed, "dead-letters", "replay", "--all")
        # code_disabled + no_destination map now; unknown_code (x2) and missing_user_id never.
        assert "replayed 2 dead letter(s)" in every.out
        assert "3 still cannot be mapped" in every.out
        # A replayed message that was already delivered is never sent again.
        stats = (await run_cli(populated.fixed, "stats", "--json")).json()
        assert stats["delivered_total"] == 2

    async def test_replay_needs_a_selection(self, populated: Populated) -> None:
        ran = await run_cli(populated.fixed, "dead-letters", "replay")
        assert ran.code == 2
        assert "--all" in ran.out


class TestPurge:
    async def test_purge_older_than(self, populated: Populated) -> None:
        purge = ("dead-letters", "purge", "--older-than", "7d", "--yes")
        ran = await run_cli(populated.broken, *purge)
        assert ran.code == 0
        assert ran.out.strip() == "purged 1 dead letter(s)"
        left = (await run_cli(populated.broken, "dead-letters", "list", "--json")).json()
        assert len(left) == 5
        again = await run_cli(populated.broken, *purge)
        assert again.out.strip() == "purged 0 dead letter(s)"
        # Without --yes, and stdin here is no terminal: refused, whatever there is to delete.
        refused = await run_cli(populated.broken, *purge[:-1])
        assert refused.code == 2
        assert refused.out == ""

    async def test_the_question_is_answered_on_the_terminal(
        self, populated: Populated, terminal_stdin: int
    ) -> None:
        """In this process, with a real terminal (a pty) as stdin."""
        os.write(terminal_stdin, b"yes\n")
        ran = await run_cli(populated.broken, "dead-letters", "purge", "--older-than", "7d")
        assert ran.code == 0
        assert ran.out.strip() == "purged 1 dead letter(s)"

    async def test_dry_run_lists_what_would_go_and_deletes_nothing(
        self, populated: Populated
    ) -> None:
        purge = ("dead-letters", "purge", "--older-than", "7d", "--dry-run")
        ran = await run_cli(populated.broken, *purge)
        assert ran.code == 0
        lines = ran.out.splitlines()
        assert lines[0].split()[:4] == ["ID", "WEBHOOK", "CREATED", "(UTC)"]
        assert len(lines) == 3
        assert "unknown_code" in lines[1]  # the 10-day-old letter only
        assert lines[2].startswith("would purge 1 dead letter(s) created before ")
        left = (await run_cli(populated.broken, "dead-letters", "list", "--json")).json()
        assert len(left) == 6

    async def test_off_a_terminal_it_needs_yes(self, populated: Populated) -> None:
        done = await asyncio.to_thread(
            _cli_subprocess, populated.broken, "dead-letters", "purge", "--older-than", "7d"
        )
        assert done.returncode == 2
        assert b"refusing to purge without confirmation" in done.stderr
        assert b"--yes" in done.stderr
        assert done.stdout == b""
        assert await _letters(populated.broken_db) == 6

    @pytest.mark.parametrize(("answer", "code", "left"), [(b"n\n", 1, 6), (b"y\n", 0, 5)])
    async def test_on_a_terminal_it_asks(
        self,
        populated: Populated,
        terminal: tuple[int, int],
        answer: bytes,
        code: int,
        left: int,
    ) -> None:
        main, secondary = terminal
        os.write(main, answer)  # typed ahead: the terminal holds it until the command reads
        purge = ("dead-letters", "purge", "--older-than", "7d")
        done = await asyncio.to_thread(
            _cli_subprocess, populated.broken, *purge, stdin=secondary, out=secondary
        )
        shown = _drain(main)
        assert done.returncode == code
        assert b"Delete 1 dead letter(s) created before " in shown
        assert b"[y/N]" in shown
        assert (b"purged 1 dead letter(s)" in shown) == (code == 0)
        assert (b"nothing purged" in shown) == (code == 1)
        assert await _letters(populated.broken_db) == left

    async def test_bad_duration_is_a_usage_error(self, populated: Populated) -> None:
        with pytest.raises(SystemExit) as exited:
            await run_cli(populated.broken, "dead-letters", "purge", "--older-than", "soon")
        assert exited.value.code == 2


class TestStats:
    async def test_json(self, populated: Populated) -> None:
        ran = await run_cli(populated.broken, "stats", "--json")
        assert ran.code == 0
        stats = ran.json()
        assert stats["pending"] == 3
        assert stats["dry_run_waiting"] == 0  # every destination has a write key
        assert stats["in_flight"] == 0
        assert 120 <= stats["oldest_pending_age_secs"] < 120 + 60
        assert stats["delivered_last_hour"] == 1
        assert stats["delivered_total"] == 2
        assert stats["dead_letters"] == {
            "code_disabled": 1,
            "missing_user_id": 1,
            "no_destination": 1,
            "rejected_by_segment": 1,
            "unknown_code": 2,
        }
        assert stats["storage_bytes"] > 0
        assert stats["last_delivered_at"].endswith("+00:00")

    async def test_human(self, populated: Populated) -> None:
        ran = await run_cli(populated.broken, "stats")
        lines = ran.out.splitlines()
        assert "pending: 3" in lines
        assert "delivered_total: 2" in lines
        assert "dead_letters: 6" in lines
        assert "  unknown_code: 2" in lines


# ---- the progress bar: on a terminal only -----------------------------------------------------


def _replay_subprocess(config: Path, stderr: int) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "--config",
            str(config),
            "dead-letters",
            "replay",
            "--all",
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )


def _cli_subprocess(
    config: Path, *args: str, stdin: int = subprocess.DEVNULL, out: int = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """``synap-bridge --config CONFIG ARGS`` as a real process (stdin not a terminal unless
    given one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(config), *args],
        stdin=stdin,
        stdout=out,
        stderr=out,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    main, secondary = pty.openpty()
    # A real terminal has a size; tqdm draws nothing on a 0-column one.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        yield main, secondary
    finally:
        os.close(main)
        os.close(secondary)


@pytest.fixture
def terminal_stdin(terminal: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """This process's stdin is the terminal's; the test types on the returned descriptor."""
    main, secondary = terminal
    with open(secondary, encoding="utf-8", closefd=False) as tty:
        monkeypatch.setattr(sys, "stdin", tty)
        yield main


def _drain(fd: int) -> bytes:
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class TestProgress:
    async def test_no_progress_bar_off_a_terminal(self, populated: Populated) -> None:
        done = await asyncio.to_thread(_replay_subprocess, populated.fixed, subprocess.PIPE)
        assert done.returncode == 0
        assert b"replayed" in done.stdout
        assert b"letter" not in done.stderr
        assert b"%|" not in done.stderr
        assert b"\r" not in done.stderr

    async def test_progress_bar_on_a_terminal(
        self, populated: Populated, terminal: tuple[int, int]
    ) -> None:
        main, secondary = terminal
        done = await asyncio.to_thread(_replay_subprocess, populated.fixed, secondary)
        assert done.returncode == 0
        shown = _drain(main)
        assert b"100%" in shown
        assert b"6/6" in shown
        assert b"letter" in shown


# ---- a mistyped database path ------------------------------------------------------------------


class TestNoDatabase:
    @pytest.mark.parametrize(
        "command",
        [
            ("stats",),
            ("dead-letters", "list"),
            ("dead-letters", "purge", "--yes", "--older-than", "1d"),
        ],
    )
    async def test_a_mistyped_path_is_an_error_and_creates_nothing(
        self, tmp_path: Path, command: tuple[str, ...]
    ) -> None:
        for db in (tmp_path / "bridge.dbx", tmp_path / "typo" / "bridge.db"):
            config = write_config(tmp_path / "config.yaml", config_data(db, fixed=True))
            done = await asyncio.to_thread(_cli_subprocess, config, *command)
            assert done.returncode == 66
            assert done.stdout == b""
            assert f"synap-bridge: no database at {db}".encode() in done.stderr
            assert b"storage.path" in done.stderr
            assert not db.exists()
            assert not db.parent.joinpath("bridge.dbx-wal").exists()
            assert not (tmp_path / "typo").exists()

    async def test_a_file_that_is_not_a_bridge_database_is_left_alone(self, tmp_path: Path) -> None:
        db = tmp_path / "empty.db"
        db.touch()  # an empty file is an empty SQLite database to SQLite
        config = write_config(tmp_path / "config.yaml", config_data(db, fixed=True))
        done = await asyncio.to_thread(_cli_subprocess, config, "stats")
        assert done.returncode == 66
        assert b"not a bridge database" in done.stderr
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
        conn.close()

    async def test_in_process_the_same(self, tmp_path: Path) -> None:
        db = tmp_path / "nowhere" / "bridge.db"
        config = write_config(tmp_path / "config.yaml", config_data(db, fixed=True))
        ran = await run_cli(config, "dead-letters", "show", "1")
        assert ran.code == 66
        assert ran.out == ""
        assert not db.parent.exists()

    async def test_migrate_still_creates_it(self, tmp_path: Path) -> None:
        db = tmp_path / "new" / "bridge.db"
        config = write_config(tmp_path / "config.yaml", config_data(db, fixed=True))
        done = await asyncio.to_thread(_cli_subprocess, config, "migrate")
        assert done.returncode == 0, done.stderr
        stats = await asyncio.to_thread(_cli_subprocess, config, "stats", "--json")
        assert stats.returncode == 0
        assert json.loads(stats.stdout)["pending"] == 0


# ---- while serve runs on the same database ---------------------------------------------------


class TestBesideServe:
    async def test_commands_work_while_serve_runs(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        db = tmp_path / "bridge.db"
        broken = write_config(
            tmp_path / "broken.yaml", config_data(db, fake_segment.url, fixed=False)
        )
        fixed = write_config(tmp_path / "fixed.yaml", config_data(db, fake_segment.url, fixed=True))
        bridge = BridgeProcess(broken)
        try:
            url = f"http://127.0.0.1:{await bridge.start()}"
            async with aiohttp.ClientSession(headers=basic_auth()) as session:

                async def post(code: str, body: dict[str, Any]) -> int:
                    async with session.post(f"{url}/webhooks/synap/{code}", json=body) as answer:
                        return answer.status

                disabled = await post("user.registered", registered("u-live"))
                assert disabled == 200  # kept; the mapping stage dead-letters it (code_disabled)
                # Intake and the operator commands at the same moment, on one database.
                posts = [post("attempt.completed", completed(n, "portal-b")) for n in range(40)]
                looks = [run_cli(broken, "stats", "--json") for _ in range(4)]
                looks += [run_cli(broken, "dead-letters", "list", "--json") for _ in range(4)]
                posted = asyncio.gather(*posts)
                looked = asyncio.gather(*looks)
                assert await posted == [200] * 40
                assert [ran.code for ran in await looked] == [0] * len(looks)
                await fake_segment.wait_for(40)

                # The fake counts a batch before the bridge records its ack: wait for the ack.
                stats = await delivered_at_least(broken, 40)
                assert stats["delivered_total"] == 40
                assert stats["dead_letters"] == {"code_disabled": 1}
                replay = await run_cli(fixed, "dead-letters", "replay", "--all")
                assert "replayed 1 dead letter(s) as 2 message(s)" in replay.out
                # serve re-reads the queue on its next wake-up: new traffic is one.
                assert await post("attempt.completed", completed(99, "portal-b")) == 200
                await fake_segment.wait_for(43)
            assert {m["userId"] for m in fake_segment.messages} >= {"u-live", "u-1"}
            assert (await run_cli(broken, "dead-letters", "list", "--json")).json() == []
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()
        left = await _letters(db)
        assert left == 0


async def _letters(db: Path) -> int:
    store = SQLiteStore(db)
    await store.open()
    try:
        return len(await store.dead_letters(DeadLetterFilter()))
    finally:
        await store.close()
