"""From a POST to the fake Segment: the three core codes travel with the right calls, user id,
event time and context, through the real app, a real SQLite file and the real delivery loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge import __version__
from bridge.app import build_app
from bridge.config import Config
from bridge.receive.runtime import RUNTIME, Runtime
from tests.conftest import basic_auth, eventually, fixture_body, settled
from tests.fakes import FakeSegment

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
USER_ID = "usr_7f3a9c21"  # the user of the fixtures


async def post(client: Client, code: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/webhooks/synap/{code}", json=body, headers=basic_auth())
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def stored(client: Client, webhook_id: str) -> int:
    """Once every kept webhook is mapped: how many messages ``webhook_id`` stored (what the
    answer said before mapping moved after it; a duplicate stores none)."""
    await settled(client.app)
    runtime = client.app[RUNTIME]
    detail = await runtime.store.event(webhook_id, runtime.clock())
    assert detail is not None, webhook_id
    assert detail.event.dead is None, detail.event.dead
    return len(detail.event.messages)


def by_event(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m.get("event") or m["type"]: m for m in messages}


async def test_core_codes_reach_segment(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, config_factory: Callable[..., Config]
) -> None:
    client = await aiohttp_client(build_app(config_factory(fake_segment.url)))
    await post(client, "attempt.completed", fixture_body("attempt.completed"))
    await post(client, "exam.completed", fixture_body("exam.completed"))  # same attempt
    await post(client, "user.registered", fixture_body("user.registered"))
    await fake_segment.wait_for(3)

    got = by_event(fake_segment.messages)
    assert set(got) == {"Completed Test", "identify", "User Registered"}
    assert fake_segment.accepted == 3  # the exam.* twin of the attempt was one message

    completed = got["Completed Test"]
    assert completed["type"] == "track"
    assert completed["userId"] == USER_ID
    assert completed["timestamp"] == "2024-05-14T09:41:28.020Z"  # meta.timestamp, not receipt
    assert completed["properties"]["testId"]
    assert completed["properties"]["attemptId"] == "att_51c0e8"
    assert completed["properties"]["score"] == 70.8
    assert completed["properties"]["scoreFrac"] == 0.708

    identify = got["identify"]
    assert identify["userId"] == USER_ID
    assert identify["traits"]["email"] == "amelia.hart@example.org"
    assert identify["traits"]["name"] == "Amelia Hart"
    assert identify["traits"]["createdAt"] == "2024-01-08T16:20:11.000Z"
    assert identify["timestamp"] == "2024-01-08T16:20:11.000Z"  # timeRegistered

    registered = got["User Registered"]
    assert registered["type"] == "track"
    assert registered["userId"] == USER_ID

    for message in fake_segment.messages:
        assert len(message["messageId"]) <= 100
        library = message["context"]["library"]
        assert library == {"name": "synap-segment-bridge", "version": __version__}
        assert message["context"]["integration"]["name"] == "synap-segment-bridge"


async def test_redelivered_webhook_is_one_event_in_segment(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, config_factory: Callable[..., Config]
) -> None:
    client = await aiohttp_client(build_app(config_factory(fake_segment.url)))
    first = await post(client, "attempt.completed", fixture_body("attempt.completed"))
    await fake_segment.wait_for(1)
    second = await post(client, "attempt.completed", fixture_body("attempt.completed"))
    assert first["webhook_id"] != second["webhook_id"]  # both raw bodies are kept
    # The duplicate stores nothing, as logged:
    assert (
        await stored(client, first["webhook_id"]),
        await stored(client, second["webhook_id"]),
    ) == (1, 0)
    third = await post(client, "user.registered", fixture_body("user.registered"))
    await fake_segment.wait_for(1 + await stored(client, third["webhook_id"]))
    assert [m.get("event") for m in fake_segment.messages].count("Completed Test") == 1


async def test_dry_run_logs_and_keeps_the_messages(
    aiohttp_client: MakeClient,
    config_factory: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build_app(config_factory())  # no write key: dry-run
    client = await aiohttp_client(app)
    answer = await post(client, "user.registered", fixture_body("user.registered"))
    assert await stored(client, answer["webhook_id"]) == 2
    runtime = app[RUNTIME]
    await eventually(lambda: caplog.text.count("dry_run_message") >= 2)
    stats = await runtime.store.stats(0)
    assert (stats.pending, stats.in_flight, stats.delivered_total) == (2, 0, 0)
    assert delivered(runtime) == 0
    logged = caplog.text
    assert "User Registered" in logged
    assert USER_ID in logged


def delivered(runtime: Runtime) -> float:
    sample = runtime.metrics.registry.get_sample_value(
        "synap_bridge_messages_delivered_total", {"destination": "default"}
    )
    return sample or 0.0
