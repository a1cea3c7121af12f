"""Dry-run never consumes the queue: the real ``serve`` process, a real SQLite file, the fake.

Reproduced before the fix: a ``serve`` without a write key (unset, ``~``, or a second ``serve``
from a shell without the secrets) marked the pending backlog "delivered", so it never reached
Segment and replay could not bring it back. Now dry-run logs each message it would send, in
full, leaves it queued, says how many wait (``stats``, the ``dry_run_messages`` gauge), and the
backlog goes out once a write key is configured: by SIGHUP reload or by a restart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import PASSWORD, USER, WRITE_KEY, attempt_completed, basic_auth, polled
from tests.fakes import FakeSegment
from tests.process import REPO, BridgeProcess, write_config

COUNT = 20


def config_data(tmp_path: Path, endpoint: str, write_key: str | None) -> dict[str, Any]:
    return {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "segment": {"write_key": write_key, "endpoint": endpoint},  # None: ``~`` in the file
        "storage": {"path": str(tmp_path / "bridge.db")},
        "delivery": {"batch": {"timeout_secs": 0.05}},
        "logging": {"format": "json"},
    }


async def post_all(url: str, numbers: range) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for n in numbers:
            async with session.post(
                f"{url}/webhooks/synap/attempt.completed",
                json=attempt_completed(n),
                headers=basic_auth(),
            ) as answer:
                assert answer.status == 200


async def shown(bridge: BridgeProcess, count: int, within: float = 20.0) -> list[dict[str, Any]]:
    """Wait (bounded) until the process logged ``count`` dry_run_message lines."""

    async def logged() -> bool:
        return len(bridge.events("dry_run_message")) >= count

    await polled(logged, within)
    return bridge.events("dry_run_message")


def stats(config: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(config), "stats", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


async def gauge(url: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/metrics", headers=basic_auth()) as answer,
    ):
        text = await answer.text()
    line = next(row for row in text.splitlines() if row.startswith("synap_bridge_dry_run_messages"))
    return float(line.split()[-1])


async def dry_run_backlog(
    bridge: BridgeProcess, config: Path, fake: FakeSegment
) -> list[dict[str, Any]]:
    """Post COUNT webhooks to a dry-run bridge; check nothing was sent and all is kept."""
    url = f"http://127.0.0.1:{await bridge.start()}"
    await post_all(url, range(COUNT))
    lines = await shown(bridge, COUNT)
    assert fake.requests == 0
    backlog = stats(config)
    assert (backlog["pending"], backlog["dry_run_waiting"], backlog["delivered_total"]) == (
        COUNT,
        COUNT,
        0,
    )
    assert bridge.events("delivery_loop_error") == []

    async def counted() -> bool:
        return await gauge(url) == COUNT

    await polled(counted, 20)
    return lines


class TestDryRunKeepsTheQueue:
    async def test_reload_with_a_write_key_sends_the_whole_backlog(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        config = write_config(
            tmp_path / "config.yaml", config_data(tmp_path, fake_segment.url, None)
        )
        bridge = BridgeProcess(config)
        try:
            lines = await dry_run_backlog(bridge, config, fake_segment)
            message = lines[0]["message"]  # the JSON that would go out, personal data masked
            assert message["type"] == "track"
            assert message["userId"] == "user-0"
            assert message["messageId"] == lines[0]["message_id"]
            assert message["context"]["traits"]["email"] == "***"
            assert "ada@example.org" not in "\n".join(bridge.raw)
            write_config(config, config_data(tmp_path, fake_segment.url, WRITE_KEY))
            assert bridge.proc is not None
            bridge.proc.send_signal(signal.SIGHUP)
            await fake_segment.wait_until(
                lambda: (
                    {m["userId"] for m in fake_segment.messages}
                    >= {f"user-{n}" for n in range(COUNT)}
                ),
                within=30.0,
            )
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()
        after = stats(config)
        assert (after["pending"], after["dry_run_waiting"], after["delivered_total"]) == (
            0,
            0,
            COUNT,
        )
        assert WRITE_KEY not in "\n".join(bridge.raw)
        assert bridge.events("delivery_loop_error") == []

    async def test_restart_with_a_write_key_sends_the_whole_backlog(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        """A ``serve`` started without the secrets, then the real one."""
        config = write_config(
            tmp_path / "config.yaml", config_data(tmp_path, fake_segment.url, None)
        )
        bridge = BridgeProcess(config)
        try:
            await dry_run_backlog(bridge, config, fake_segment)
            assert await bridge.terminate() == 0
            keyed = BridgeProcess(config, env={"BRIDGE_SEGMENT__WRITE_KEY": WRITE_KEY})
            try:
                url = f"http://127.0.0.1:{await keyed.start()}"
                await post_all(url, range(COUNT, COUNT + 5))
                await fake_segment.wait_until(
                    lambda: (
                        {m["userId"] for m in fake_segment.messages}
                        >= {f"user-{n}" for n in range(COUNT + 5)}
                    ),
                    within=30.0,
                )
                assert await keyed.terminate() == 0
            finally:
                await keyed.close()
        finally:
            await bridge.close()
        assert stats(config)["delivered_total"] == COUNT + 5
