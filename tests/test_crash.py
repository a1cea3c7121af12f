"""SIGKILL under load loses nothing acknowledged (the real server as a subprocess).

Webhooks are posted concurrently; the bridge is SIGKILLed while requests are in flight,
restarted, killed again, and finally left to drain. Every webhook answered 2xx must then be at
the fake Segment (by its unique user id). Webhooks whose request failed with the kill were
never acknowledged; Synap would resend them, and if they were committed they arrive too.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import PASSWORD, USER, WRITE_KEY, basic_auth
from tests.fakes import FakeSegment
from tests.process import BridgeProcess, write_config

ROUNDS = 3
PER_ROUND = 120
CONCURRENCY = 16


def webhook(n: int) -> dict[str, Any]:
    return {
        "id": f"attempt-{n}",
        "score": n % 10,
        "scoreFrac": (n % 10) / 10,
        "timeStarted": "2026-11-01T09:00:00Z",
        "timeCompleted": "2026-11-01T10:00:00Z",
        "test": {"id": "test-1", "title": "Physics"},
        "attempt": {"id": f"attempt-{n}", "isExam": False},
        "user": {"id": f"user-{n}", "name": "Crash Test", "email": "c@example.org"},
        "portal": {"id": "portal-1"},
        "meta": {"timestamp": "2026-11-01T10:00:00Z"},
    }


async def post_round(
    url: str, numbers: range, acked: set[int], kill_after: int, killer: asyncio.Event
) -> None:
    auth = basic_auth()
    queue = list(numbers)
    timeout = aiohttp.ClientTimeout(total=10)

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            n = queue.pop(0)
            try:
                async with session.post(
                    f"{url}/webhooks/synap/attempt.completed", json=webhook(n), headers=auth
                ) as response:
                    if response.status == 200:
                        acked.add(n)
                        if len(acked) >= kill_after:
                            killer.set()
            except (aiohttp.ClientError, TimeoutError):
                pass  # the process died under this request: not acknowledged

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))


# Longer than the 60 s default: rounds of load and SIGKILL, then up to 60 s of its own for the
# drain after the last restart.
@pytest.mark.timeout(180)
async def test_sigkill_under_load_loses_nothing_acknowledged(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        {
            "server": {"port": 0},
            "auth": {"username": USER, "password": PASSWORD},
            "segment": {"write_key": WRITE_KEY, "endpoint": fake_segment.url},
            "storage": {"path": str(tmp_path / "bridge.db")},
            "delivery": {"batch": {"timeout_secs": 0.05}},
            "logging": {"format": "json"},
        },
    )
    bridge = BridgeProcess(config)
    acked: set[int] = set()
    try:
        for round_no in range(ROUNDS):
            url = f"http://127.0.0.1:{await bridge.start()}"
            killer = asyncio.Event()
            numbers = range(round_no * PER_ROUND, (round_no + 1) * PER_ROUND)
            target = len(acked) + PER_ROUND // 2
            posting = asyncio.create_task(post_round(url, numbers, acked, target, killer))
            done, _ = await asyncio.wait(
                {posting, asyncio.create_task(killer.wait())},
                return_when=asyncio.FIRST_COMPLETED,
                timeout=60,
            )
            assert done, "posting stalled"
            await bridge.kill()  # SIGKILL while the rest of the round is in flight
            with contextlib.suppress(asyncio.CancelledError):
                await posting
        assert len(acked) >= ROUNDS * PER_ROUND // 2
        await bridge.start()  # the last start drains everything committed
        wanted = {f"user-{n}" for n in acked}

        async with asyncio.timeout(60):
            while not wanted <= {m["userId"] for m in fake_segment.messages}:
                await fake_segment.wait_for(fake_segment.unique + 1)
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()
    delivered = {m["userId"] for m in fake_segment.messages}
    assert wanted <= delivered
    # Resends after the kills reuse messageIds: the fake counts each at most as often as sent,
    # and Segment would keep one. No message reached it with a different id for the same fact.
    per_user: dict[str, set[str]] = {}
    for message in fake_segment.messages:
        per_user.setdefault(message["userId"], set()).add(message["messageId"])
    assert all(len(ids) == 1 for ids in per_user.values())
