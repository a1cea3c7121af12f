"""Secrets never reach a log line or the CLI's output.

The real ``synap-bridge serve`` (a subprocess, debug logging, secrets given the documented way:
``BRIDGE_AUTH__PASSWORD`` and ``BRIDGE_SEGMENT__WRITE_KEY``) talks to a hostile "Segment" that
echoes everything it was sent - the ``Authorization`` header and the whole request body, which
carries ``writeKey`` - in its error messages: first as transient errors (503), then as a
permanent rejection (400) of one message, which becomes a dead letter whose last error is that
echo. Wrong and malformed credentials are posted too. Then the operator commands run (also
subprocesses). Neither the password, the write key, nor either Basic token (base64 of
``user:password`` and of ``writekey:``) may appear anywhere in what was printed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from base64 import b64encode
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import attempt_completed, eventually
from tests.process import REPO, BridgeProcess, write_config

PASSWORD = "pw-Zq8Lk2-very-secret-password"
WRITE_KEY = "wk-9fXy7Qm-very-secret-write-key"
USER = "synap"
POISON_USER = "user-poison"


def secrets() -> dict[str, str]:
    return {
        "password": PASSWORD,
        "write key": WRITE_KEY,
        "webhook Basic token": b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        "Segment Basic token": b64encode(f"{WRITE_KEY}:".encode()).decode(),
    }


def leaks(text: str) -> list[str]:
    return [name for name, value in secrets().items() if value in text]


class EchoingSegment:
    """A Segment that repeats the request back in its errors: 503 twice, then 400 for any batch
    holding the poison user, else 200."""

    def __init__(self) -> None:
        self.requests = 0
        self.accepted: set[str] = set()
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        raw = await request.read()  # aiohttp has inflated the gzip body
        echo = f"you sent Authorization={request.headers.get('Authorization')} body={raw!r}"
        if self.requests <= 2:
            return web.json_response({"code": "unavailable", "message": echo}, status=503)
        batch: list[dict[str, Any]] = orjson.loads(raw)["batch"]
        if any(m.get("userId") == POISON_USER for m in batch):
            return web.json_response({"code": "invalid_request", "message": echo}, status=400)
        self.accepted.update(m["messageId"] for m in batch)
        self.changed.set()
        return web.json_response({"success": True})

    async def wait_for(self, count: int, within: float = 20) -> None:
        async with asyncio.timeout(within):
            while len(self.accepted) < count:
                self.changed.clear()
                await self.changed.wait()

    async def __aenter__(self) -> EchoingSegment:
        app = web.Application()
        app.router.add_post("/v1/batch", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def echo() -> AsyncIterator[EchoingSegment]:
    async with EchoingSegment() as server:
        yield server


async def cli(config: Path, env: dict[str, str], *args: str) -> tuple[str, str]:
    """Run a command; (stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, (out, err)
    return out.decode(errors="replace"), err.decode(errors="replace")


async def test_secrets_stay_out_of_logs_and_cli_output(
    tmp_path: Path, echo: EchoingSegment
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        {
            "server": {"port": 0},
            "auth": {"username": USER},
            "segment": {"endpoint": echo.url, "timeout_secs": 5},
            "storage": {"path": str(tmp_path / "bridge.db")},
            "delivery": {
                "batch": {"timeout_secs": 0.05},
                "retry": {"initial_backoff_secs": 0.01, "max_backoff_secs": 0.05},
            },
            "logging": {"format": "json", "level": "debug"},
        },
    )
    assert PASSWORD not in config.read_text()
    assert WRITE_KEY not in config.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_AUTH__PASSWORD=PASSWORD, BRIDGE_SEGMENT__WRITE_KEY=WRITE_KEY)
    bridge = BridgeProcess(config, env=env)
    outputs: dict[str, tuple[str, str]] = {}
    try:
        url = f"http://127.0.0.1:{await bridge.start()}"
        good = {"Authorization": secrets()["webhook Basic token"].join(("Basic ", ""))}
        wrong = [
            {"Authorization": "Basic " + b64encode(f"{USER}:{PASSWORD}-typo".encode()).decode()},
            {"Authorization": f"Basic {PASSWORD}"},  # the password itself, not encoded
            {"Authorization": f"Bearer {WRITE_KEY}"},
            {},
        ]
        hook = f"{url}/webhooks/synap/attempt.completed"
        async with aiohttp.ClientSession() as session:
            for headers in wrong:
                async with session.post(
                    hook, json=attempt_completed(0, user="u"), headers=headers
                ) as r:
                    assert r.status == 401
            for n, user in enumerate(["user-1", "user-2", POISON_USER, "user-3"], start=1):
                async with session.post(
                    hook, json=attempt_completed(n, user=user), headers=good
                ) as r:
                    assert r.status == 200
            unknown = f"{url}/webhooks/synap/course.finished"
            async with session.post(unknown, json={"note": PASSWORD}, headers=good) as r:
                assert r.status == 200  # kept; a dead letter (whose raw body happens to hold it)
        await echo.wait_for(3)
        # the poison message is buried after the others
        await eventually(lambda: bool(bridge.events("dead_letter")), within=20)

        outputs["check-config"] = await cli(config, env, "check-config")
        outputs["stats"] = await cli(config, env, "stats", "--json")
        outputs["list"] = await cli(config, env, "dead-letters", "list", "--json")
        letters = orjson.loads(outputs["list"][0])
        rejected = [x for x in letters if x["reason"] == "rejected_by_segment"]
        assert len(rejected) == 1
        outputs["show"] = await cli(config, env, "dead-letters", "show", str(rejected[0]["id"]))
        assert "you sent Authorization" in outputs["show"][0]  # the echo was kept...
        outputs["replay"] = await cli(config, env, "dead-letters", "replay", "--all")
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()
    outputs["serve"] = ("\n".join(bridge.raw), "")
    assert bridge.events("batch")  # there was something to leak

    # ... but not the secrets in it. (The unknown-code webhook carries the password in its
    # body: raw bodies are data, shown only by `show` of that letter, never logged.)
    found = {name: leaks(out + err) for name, (out, err) in outputs.items()}
    assert found == {name: [] for name in outputs}, found
