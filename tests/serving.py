"""A real ``synap-bridge serve`` subprocess posting to the strict fake Segment, for tests that
assert only what reached Segment (never the webhook's answer beyond its acceptance: how a
webhook is answered is the receiver's business and may change).

``settle`` posts a sentinel webhook last and waits (bounded) for its event: webhooks are mapped
and delivered in arrival order, so everything posted before it that is due has arrived by then.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import PASSWORD, USER, WRITE_KEY, basic_auth, fixture_body
from tests.fakes import FakeSegment
from tests.process import BridgeProcess, write_config

_SENTINELS = itertools.count(1)


class Serve:
    """One ``serve`` on a SQLite file in ``tmp_path``, configured with ``mapping``."""

    def __init__(self, tmp_path: Path, fake: FakeSegment, **mapping: Any) -> None:
        self.fake = fake
        config = {
            "server": {"port": 0},
            "auth": {"username": USER, "password": PASSWORD},
            "segment": {"write_key": WRITE_KEY, "endpoint": fake.url},
            "storage": {"path": str(tmp_path / "bridge.db")},
            "delivery": {"batch": {"timeout_secs": 0.05}},
            "mapping": mapping,
            "logging": {"format": "json"},
        }
        self.process = BridgeProcess(write_config(tmp_path / "config.yaml", config))

    async def __aenter__(self) -> Serve:
        await self.process.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.process.proc is not None and self.process.proc.returncode is None:
                assert await self.process.terminate() == 0
        finally:
            await self.process.close()

    async def restart(self) -> None:
        assert await self.process.terminate() == 0
        await self.process.start()

    async def post(self, code: str, body: dict[str, Any], query: str = "") -> None:
        """POST one webhook; only its acceptance (2xx) is asserted."""
        url = f"{self.process.url}/webhooks/synap/{code}{query}"
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers=basic_auth()) as response,
        ):
            assert response.status in (200, 202), await response.text()

    async def settle(self, within: float = 15.0) -> None:
        """Post a sentinel and wait until it arrived (then drop it from the fake's record)."""
        body = fixture_body("learningRecord.created")
        marker = f"sentinel-{next(_SENTINELS)}"
        body["learningRecord"]["objectId"] = marker
        await self.post("learningRecord.created", body)

        def arrived() -> bool:
            return any(_record_id(m) == marker for m in self.fake.messages)

        await self.fake.wait_until(arrived, within)

    def tracks(self, event: str | None = None) -> list[dict[str, Any]]:
        """The tracks that arrived (without sentinels), optionally of one event."""
        return [
            m
            for m in self.fake.messages
            if m["type"] == "track"
            and not str(_record_id(m)).startswith("sentinel-")
            and (event is None or m["event"] == event)
        ]

    def calls(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.fake.messages if m["type"] == kind]


def _record_id(message: dict[str, Any]) -> Any:
    return (message.get("properties") or {}).get("learningRecordId")
