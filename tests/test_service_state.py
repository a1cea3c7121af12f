"""Operator commands tell the service's truth: ``stats`` reports what the serving process
records (mode, pause, last status and error per destination; which replicas are alive), not what
the command's own environment implies. The issue's case: ``stats`` run without the write key
printed ``dry_run_waiting: 46`` for a live bridge."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bridge.mapping import intake
from bridge.store.sqlite.store import SQLiteStore
from bridge.synap import samples
from tests.conftest import PASSWORD, USER, basic_auth, eventually, fixture_body, polled
from tests.fakes import FakeSegment
from tests.pgcluster import shared
from tests.process import REPO, BridgeProcess, write_config
from tests.test_cli_ops import load


async def stats(config: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``synap-bridge stats --json`` as another process, with no BRIDGE_ variable of ours."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "--config",
        str(config),
        "stats",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, **(env or {})},
        cwd=REPO,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


async def post(url: str, n: int) -> int:
    body = fixture_body("user.registered")
    body["objectId"] = f"usr_{n}"
    target = f"{url}/webhooks/synap/user.registered"
    async with (
        aiohttp.ClientSession() as session,
        session.post(target, json=body, headers=basic_auth()) as response,
    ):
        return response.status


async def test_stats_reports_the_serving_bridge_not_its_own_environment(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    data = {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "segment": {"endpoint": fake_segment.url},  # the key comes from the service's env
        "logging": {"format": "json"},
        "delivery": {"retry": {"initial_backoff_secs": 60, "max_backoff_secs": 60}},
    }
    path = write_config(tmp_path / "config.yaml", data)
    fake_segment.fail(401, times=10)
    bridge = BridgeProcess(path, {"BRIDGE_SEGMENT__WRITE_KEY": "a-key-segment-refuses"})
    try:
        url = f"http://127.0.0.1:{await bridge.start()}"
        for n in range(3):
            assert await post(url, n) == 200
        await eventually(lambda: any(b["status"] == 401 for b in bridge.events("batch")))

        async def recorded() -> bool:
            report = await stats(path)  # without the write key: the CLI alone would say dry-run
            found = report["destinations"][0]
            return bool(found.get("last_status") == 401)

        await polled(recorded, within=15)
        report = await stats(path)
        assert report["dry_run_waiting"] == 0  # the service is live, whatever the CLI has
        (destination,) = report["destinations"]
        assert destination["name"] == "default"
        assert destination["mode"] == "live"
        assert destination["refused"] is True
        assert destination["paused_until"].endswith("+00:00")
        assert "refused the write key" in destination["last_error"]
        assert destination["backlog"] == 6  # 3 webhooks x 2 messages, kept
        (process,) = report["service"]
        assert process["alive"] is True
        assert process["ready"] is True
        assert "service_note" not in report
        assert await bridge.terminate() == 0
        stopped = await stats(path)
        assert stopped["service"][0]["alive"] is False  # it said so on its way out
        assert "no serving process" in stopped["service_note"]
    finally:
        await bridge.close()
    for line in bridge.raw:
        assert "a-key-segment-refuses" not in line


async def test_replicas_on_postgresql_each_report_alive(tmp_path: Path) -> None:
    url = await asyncio.to_thread(shared().new_database)
    bridges = []
    for name in ("one", "two"):
        data = {
            "server": {"port": 0},
            "auth": {"username": USER, "password": PASSWORD},
            "storage": {"url": url},
            "logging": {"format": "json"},
        }
        bridges.append(BridgeProcess(write_config(tmp_path / f"{name}.yaml", data)))
    try:
        await asyncio.gather(*(b.start() for b in bridges))
        path = tmp_path / "one.yaml"

        async def both_alive() -> bool:
            report = await stats(path)
            return len([p for p in report["service"] if p["alive"]]) == 2

        await polled(both_alive, within=20)
        report = await stats(path)
        (destination,) = report["destinations"]
        assert (destination["mode"], destination["backlog"]) == ("dry-run", 0)
        assert await bridges[0].terminate() == 0

        async def one_alive() -> bool:
            report = await stats(path)
            return len([p for p in report["service"] if p["alive"]]) == 1

        await polled(one_alive, within=20)
    finally:
        for bridge in bridges:
            await bridge.close()


async def test_try_says_dry_run_at_once_and_does_not_wait(tmp_path: Path) -> None:
    data = {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "logging": {"format": "json"},
    }
    path = write_config(tmp_path / "config.yaml", data)
    bridge = BridgeProcess(path)
    try:
        url = f"http://127.0.0.1:{await bridge.start()}"

        async def recorded() -> bool:
            return bool((await stats(path))["service"])

        await polled(recorded, within=15)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bridge", "--config", str(path), "try", "user.registered"),
            *("--url", url, "--wait", "60"),
            stdout=asyncio.subprocess.PIPE,
            env=clean,
            cwd=REPO,
        )
        async with asyncio.timeout(30):  # well under --wait: nothing is waited for
            out, _ = await proc.communicate()
        text = out.decode()
        assert proc.returncode == 0, text
        assert text.startswith("dry-run: the serving bridge has no write key")
        assert text.count("  pending") == 2
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()


async def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``events --json | head -c 1``: no BrokenPipeError traceback (issue 23). The output is
    well over a pipe's buffer, so the command is still writing when ``head`` leaves."""
    data = {"storage": {"path": str(tmp_path / "bridge.db")}, "logging": {"format": "json"}}
    path = write_config(tmp_path / "config.yaml", data)
    config = load(path)
    store = SQLiteStore(tmp_path / "bridge.db")
    await store.open()
    try:
        for n in range(150):
            raw = orjson.loads(samples.raw("user.registered"))
            raw["objectId"] = f"usr_{n}"
            result = intake.process("user.registered", orjson.dumps(raw), 1e9 + n, config)
            await store.enqueue(result.webhook, result.messages, result.dead)
    finally:
        await store.close()
    for command in ("events --json --limit 150", "events --limit 150"):
        shell = (
            f"{sys.executable} -m bridge --config {path} {command} | head -c 1 >/dev/null;"
            " exit ${PIPESTATUS[0]}"
        )
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", shell, stderr=asyncio.subprocess.PIPE, cwd=REPO
        )
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert "Traceback" not in err.decode(), (command, err.decode())
        assert proc.returncode == 0, command


async def test_serve_that_cannot_listen_leaves_no_database(tmp_path: Path) -> None:
    """Issue 23: a serve that failed to start had already created an empty database."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "fresh" / "bridge.db"
        db.parent.mkdir()
        data = {
            "server": {"port": port},
            "storage": {"path": str(db)},
            "logging": {"format": "json"},
        }
        bridge = BridgeProcess(write_config(tmp_path / "config.yaml", data))
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bridge", "--config", str(bridge.config_path), "serve"),
            stdout=asyncio.subprocess.PIPE,
            env=bridge.env,
            cwd=REPO,
        )
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    assert proc.returncode == 1
    (line,) = [json.loads(x) for x in out.decode().splitlines() if '"cannot_listen"' in x]
    assert line["port"] == port
    assert list(db.parent.iterdir()) == []  # no database, no lock file
