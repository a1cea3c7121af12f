"""Replicas whose clocks disagree by 30 s still hold exam attempts (a real PostgreSQL).

The docs' clock rule allows 30 s between replicas. Before, hold and due times were each
replica's own: with one replica 30 s behind receiving the ``attempt.*`` webhook and another 30 s
ahead delivering, the held message went out at once, and 0 of 4 tracks kept their exam details
(4 of 4 without the skew). Now the store moves every time into the database's clock
(bridge/store/postgres/clock.py). Two in-process replicas, each with its own shifted wall clock
(receipt stamps, the delivery loop and the store's measurement all use it), one database, the
strict fake Segment.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.messages import OutgoingMessage
from bridge.store import EventQuery, Webhook
from bridge.store.postgres.store import PostgresStore
from tests.conftest import basic_auth, fixture_body, settled
from tests.fakes import FakeSegment
from tests.pgcluster import Cluster
from tests.test_exam_hold import EXAM_FIELDS, STAGES, attempt_body, tracks

pytestmark = pytest.mark.timeout(120)

Client = TestClient[web.Request, web.Application]
SKEW = 30.0
HOLD = 20.0  # longer than the time the test takes between the two webhooks, shorter than SKEW


def shifted(by: float) -> Callable[[], float]:
    return lambda: time.time() + by


async def post(client: Client, code: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/webhooks/synap/{code}", json=body, headers=basic_auth())
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def test_a_replica_30_s_off_keeps_the_exam_hold(
    postgres: Cluster,
    fake_segment: FakeSegment,
    config_factory: Callable[..., Config],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    url = postgres.new_database()
    config = config_factory(
        fake_segment.url,
        storage={"url": url, "pool_size": 4},
        mapping={"exam_hold_secs": HOLD},
        delivery={"batch": {"timeout_secs": 0.05}},
    )
    behind, ahead = shifted(-SKEW), shifted(SKEW)
    receiver = await aiohttp_client(
        build_app(config, clock=behind, store=PostgresStore(url, pool_size=4, local_clock=behind))
    )
    deliverer = await aiohttp_client(
        build_app(config, clock=ahead, store=PostgresStore(url, pool_size=4, local_clock=ahead))
    )
    for stage in STAGES:
        await post(receiver, f"attempt.{stage}", attempt_body(stage))
        await settled(receiver.app)  # mapped (by either replica's mapper) and held
        await post(deliverer, f"exam.{stage}", fixture_body(f"exam.{stage}"))
        await settled(deliverer.app)
    # Each exam.* version found its attempt.* one still held and replaced it: one event each,
    # with the exam's details.
    await fake_segment.wait_for(len(STAGES))
    events = tracks(fake_segment)
    assert len(events) == len(STAGES)
    assert all(key in e["properties"] for e in events for key in EXAM_FIELDS)


async def test_a_held_message_is_held_on_the_database_clock(postgres: Cluster) -> None:
    """The store alone: a message held 20 s by a replica 30 s behind is not claimable by one
    30 s ahead (before: due 10 s before it was even received, claimed at once), and each
    replica reads its due time back on its own clock."""
    url = postgres.new_database()
    behind, ahead = shifted(-SKEW), shifted(SKEW)
    receiver = PostgresStore(url, pool_size=2, local_clock=behind)
    deliverer = PostgresStore(url, pool_size=2, local_clock=ahead)
    await receiver.open()
    await deliverer.open()
    try:
        assert abs(receiver.clock.skew - SKEW) < 1.0
        assert abs(deliverer.clock.skew + SKEW) < 1.0
        body = {"messageId": "track-held", "userId": "u", "type": "track"}
        held = OutgoingMessage.build("default", body, hold_secs=HOLD)
        await receiver.enqueue(Webhook("attempt.completed", "p", behind(), b"{}"), [held])
        assert await deliverer.claim(ahead(), 10, 30.0) == []
        due_here, due_there = await receiver.next_due_at(), await deliverer.next_due_at()
        assert due_here is not None
        assert due_there is not None
        assert HOLD - 5 < due_here - behind() <= HOLD
        assert HOLD - 5 < due_there - ahead() <= HOLD
    finally:
        await receiver.close()
        await deliverer.close()


async def test_the_event_search_bounds_move_with_the_clock(postgres: Cluster) -> None:
    """A replica 30 s behind searching "received in the last 10 s" finds what it just stored."""
    behind = shifted(-SKEW)
    store = PostgresStore(postgres.new_database(), pool_size=2, local_clock=behind)
    await store.open()
    try:
        body = {"messageId": "track-1", "userId": "u-1", "type": "track"}
        message = OutgoingMessage.build("default", body)
        await store.enqueue(Webhook("attempt.completed", "p", behind(), b"{}"), [message])
        now = behind()
        found = await store.find_events(EventQuery(user_id="u-1", since=now - 10), now)
        assert len(found) == 1
        assert await store.find_events(EventQuery(user_id="u-1", until=now - 10), now) == []
    finally:
        await store.close()
