"""Exam attempts reach Segment once per attempt and stage, with the exam details, whatever the
order of the ``attempt.*`` and ``exam.*`` webhooks (issue 13, item 1).

The real app, a real SQLite file, the real delivery loop and the strict fake Segment; the crash
cases run the real ``serve`` as a subprocess and SIGKILL it between the two webhooks. Waits are on
conditions (``eventually`` / ``wait_for``), never fixed sleeps: "past the window" is reached by
waiting for the held message to arrive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.receive.runtime import RUNTIME
from tests.conftest import (
    PASSWORD,
    POLL_INTERVAL_SECS,
    USER,
    WRITE_KEY,
    basic_auth,
    fixture_body,
    polled,
    settled,
)
from tests.fakes import FakeSegment
from tests.process import BridgeProcess, write_config

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
LONG_HOLD = 60.0  # "within the window": the exam.* webhook always comes well inside it
SHORT_HOLD = 0.3  # "past the window": the test waits until the held message went out
EXAM_FIELDS = ("examId", "examName", "resitCount", "sourceTests", "userGroupId")
STAGES = ("started", "submitted", "completed")


def attempt_body(stage: str) -> dict[str, Any]:
    """The ``attempt.*`` webhook of the fixtures' exam attempt: the exam's body without what
    only ``exam.*`` carries (as Synap sends it for an exam attempt, ``isExam: true``)."""
    body = fixture_body(f"exam.{stage}")
    body.pop("exam", None)
    body.pop("userGroup", None)
    body["attempt"]["isExam"] = True
    if "eventName" in body["meta"]:
        body["meta"]["eventName"] = f"attempt.{stage}"
    return body


async def post(client: Client, code: str, body: dict[str, Any]) -> str:
    """Post one webhook; its ``webhook_id`` (it is kept, and mapped after the answer)."""
    response = await client.post(f"/webhooks/synap/{code}", json=body, headers=basic_auth())
    assert response.status == 200, await response.text()
    webhook_id: str = (await response.json())["webhook_id"]
    return webhook_id


def mapped_lines(records: list[logging.LogRecord]) -> dict[str, dict[str, Any]]:
    """The mapping stage's ``webhook_mapped`` lines (structlog hands logging a dict), by
    ``webhook_id``: what each webhook became (messages, duplicates, superseded)."""
    return {
        record.msg["webhook_id"]: record.msg
        for record in records
        if isinstance(record.msg, dict) and record.msg.get("event") == "webhook_mapped"
    }


async def mapped(
    client: Client, caplog: pytest.LogCaptureFixture, webhook_id: str
) -> tuple[int, int, int]:
    """Once the mapping stage has mapped everything kept: ``webhook_id``'s verdict as its
    ``(messages, duplicates, superseded)``."""
    await settled(client.app)
    line = mapped_lines(caplog.records)[webhook_id]
    return line["messages"], line["duplicates"], line["superseded"]


def tracks(fake: FakeSegment) -> list[dict[str, Any]]:
    return [m for m in fake.messages if m["type"] == "track"]


async def drained(client: Client, within: float = 10.0) -> None:
    """Wait (bounded) until nothing is pending or in flight: no further message can go out."""
    runtime = client.app[RUNTIME]
    async with asyncio.timeout(within):
        while True:
            stats = await runtime.store.stats(0)
            if stats.pending == 0 and stats.in_flight == 0:
                return
            await asyncio.sleep(POLL_INTERVAL_SECS)


class TestOrder:
    @pytest.mark.parametrize("stage", STAGES)
    async def test_attempt_first_then_exam_within_the_window(
        self,
        stage: str,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        config = config_factory(fake_segment.url, mapping={"exam_hold_secs": LONG_HOLD})
        client = await aiohttp_client(build_app(config))
        held = await post(client, f"attempt.{stage}", attempt_body(stage))
        assert await mapped(client, caplog, held) == (1, 0, 0)
        richer = await post(client, f"exam.{stage}", fixture_body(f"exam.{stage}"))
        assert await mapped(client, caplog, richer) == (0, 0, 1)  # replaced the held one
        await fake_segment.wait_for(1)  # due at once: the exam.* version waits for nothing
        await drained(client)
        [event] = tracks(fake_segment)
        assert all(key in event["properties"] for key in EXAM_FIELDS)
        assert event["context"]["groupId"] == "grp_y11b"
        assert fake_segment.accepted == 1

    @pytest.mark.parametrize("stage", STAGES)
    async def test_exam_first_then_attempt(
        self,
        stage: str,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        config = config_factory(fake_segment.url, mapping={"exam_hold_secs": LONG_HOLD})
        client = await aiohttp_client(build_app(config))
        first = await post(client, f"exam.{stage}", fixture_body(f"exam.{stage}"))
        assert await mapped(client, caplog, first) == (1, 0, 0)
        twin = await post(client, f"attempt.{stage}", attempt_body(stage))
        assert await mapped(client, caplog, twin) == (0, 1, 0)  # a duplicate of the exam's
        await fake_segment.wait_for(1)
        await drained(client)
        [event] = tracks(fake_segment)
        assert all(key in event["properties"] for key in EXAM_FIELDS)

    async def test_exam_past_the_window_is_a_duplicate(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        config = config_factory(fake_segment.url, mapping={"exam_hold_secs": SHORT_HOLD})
        client = await aiohttp_client(build_app(config))
        await post(client, "attempt.completed", attempt_body("completed"))
        await fake_segment.wait_for(1)  # the hold ran out: the attempt.* version went out
        late = await post(client, "exam.completed", fixture_body("exam.completed"))
        assert await mapped(client, caplog, late) == (0, 1, 0)  # too late to replace it
        await drained(client)
        [event] = tracks(fake_segment)
        assert event["properties"]["isExam"] is True
        assert "examName" not in event["properties"]

    async def test_a_plain_attempt_is_not_held(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        config = config_factory(fake_segment.url, mapping={"exam_hold_secs": 600})
        client = await aiohttp_client(build_app(config))
        await post(client, "attempt.completed", fixture_body("attempt.completed"))
        await fake_segment.wait_for(1)  # isExam false: due at once despite a 10-minute hold
        assert tracks(fake_segment)[0]["properties"]["isExam"] is False


class TestCrash:
    """The hold and the supersede live in the store: a SIGKILL between the two webhooks keeps
    both the held message and its replacement."""

    async def test_killed_between_attempt_and_exam(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        bridge = BridgeProcess(self._config(tmp_path, fake_segment, LONG_HOLD))
        try:
            port = await bridge.start()
            held = await self._post(port, "attempt.completed", attempt_body("completed"))
            assert await self._mapped(bridge, held) == (1, 0, 0)  # held in the store
            await bridge.kill()
            port = await bridge.start()
            richer = await self._post(port, "exam.completed", fixture_body("exam.completed"))
            assert await self._mapped(bridge, richer) == (0, 0, 1)
            await fake_segment.wait_for(1)
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()
        [event] = tracks(fake_segment)
        assert event["properties"]["examName"] == "Summer Mock Exams 2024 - Biology"
        assert fake_segment.accepted == 1

    async def test_a_held_message_survives_a_kill_and_goes_out_after_its_hold(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        bridge = BridgeProcess(self._config(tmp_path, fake_segment, 2.0))
        try:
            await self._post(await bridge.start(), "attempt.completed", attempt_body("completed"))
            await bridge.kill()
            assert fake_segment.accepted == 0  # it was still held when the process died
            await bridge.start()
            await fake_segment.wait_for(1)
            assert await bridge.terminate() == 0
        finally:
            await bridge.close()
        [event] = tracks(fake_segment)
        assert event["properties"]["isExam"] is True

    @staticmethod
    def _config(tmp_path: Path, fake: FakeSegment, hold: float) -> Path:
        return write_config(
            tmp_path / "config.yaml",
            {
                "server": {"port": 0},
                "auth": {"username": USER, "password": PASSWORD},
                "segment": {"write_key": WRITE_KEY, "endpoint": fake.url},
                "storage": {"path": str(tmp_path / "bridge.db")},
                "delivery": {"batch": {"timeout_secs": 0.05}},
                "mapping": {"exam_hold_secs": hold},
                "logging": {"format": "json"},
            },
        )

    @staticmethod
    async def _mapped(bridge: BridgeProcess, webhook_id: str) -> tuple[int, int, int]:
        """The mapper process's ``webhook_mapped`` line for ``webhook_id``, once written (its
        log goes to serve's output): ``(messages, duplicates, superseded)``."""

        async def written() -> bool:
            return any(line["webhook_id"] == webhook_id for line in bridge.events("webhook_mapped"))

        await polled(written)
        (line,) = [
            line for line in bridge.events("webhook_mapped") if line["webhook_id"] == webhook_id
        ]
        return line["messages"], line["duplicates"], line["superseded"]

    @staticmethod
    async def _post(port: int, code: str, body: dict[str, Any]) -> str:
        url = f"http://127.0.0.1:{port}/webhooks/synap/{code}"
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers=basic_auth()) as response,
        ):
            assert response.status == 200, await response.text()
            webhook_id: str = (await response.json())["webhook_id"]
            return webhook_id
