"""An ack that fails after Segment accepted the batch: retried until it lands, or counted lost.

A real PostgreSQL is stopped while an upload is in flight (the fake Segment holds it), so the
upload succeeds and the ack meets a dead database. Before: the ack was tried once, the batch
stayed leased, and after the lease every message went out again (750 duplicates in three
crash-restarts under load, issue 21).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from bridge.config import DeliveryConfig
from bridge.delivery.loop import Delivery
from bridge.delivery.sinks import SegmentSink
from bridge.messages import OutgoingMessage
from bridge.metrics import Metrics
from bridge.store import Webhook
from bridge.store.postgres.store import PostgresStore
from tests.conftest import eventually
from tests.fakes import FakeSegment
from tests.pgcluster import Cluster

KEY = "ack-retry-test-key"
MESSAGES = 20


def config() -> DeliveryConfig:
    return DeliveryConfig.model_validate(
        {"concurrency": 1, "batch": {"max_events": 100, "timeout_secs": 0.05}}
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegment]:
    async with FakeSegment(KEY) as server:
        yield server


@pytest.fixture
async def store(postgres: Cluster) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres.new_database(), pool_size=2, connect_timeout_secs=2.0)
    await opened.open()
    try:
        yield opened
    finally:
        await asyncio.to_thread(postgres.ensure_running)
        await opened.close()


async def enqueue(store: PostgresStore) -> list[str]:
    messages = [
        OutgoingMessage.build(
            "default",
            {
                "type": "track",
                "event": "Exam Completed",
                "userId": f"user-{n}",
                "messageId": f"ack-{n:04d}",
                "timestamp": "2024-05-01T10:00:00.000Z",
            },
        )
        for n in range(MESSAGES)
    ]
    await store.enqueue(Webhook("test.event", "p-1", time.time(), b"{}"), messages)
    return [m.message_id for m in messages]


async def stop_postgres_mid_ack(postgres: Cluster, fake: FakeSegment) -> None:
    """Stop the server while the fake holds the upload, then let Segment accept it."""
    await fake.wait_until(lambda: fake.active >= 1, within=20.0)
    await asyncio.to_thread(postgres.pg_ctl, "stop", "-m", "fast", "-w", "-t", "60")
    fake.release()
    await fake.wait_until(lambda: fake.batches >= 1)


def counted(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"destination": "default"}) or 0.0


@pytest.mark.timeout(120)
async def test_an_ack_failing_through_a_restart_lands_once_the_database_is_back(
    postgres: Cluster, store: PostgresStore, fake: FakeSegment
) -> None:
    ids = await enqueue(store)
    metrics = Metrics()
    delivery = Delivery(
        store, {"default": SegmentSink(KEY, fake.url, 5.0, True)}, config(), metrics=metrics
    )
    fake.hold()
    with capture_logs() as lines:
        loop = asyncio.create_task(delivery.run())
        delivery.wake()
        await stop_postgres_mid_ack(postgres, fake)
        await eventually(lambda: counted(metrics, "synap_bridge_ack_retries_total") >= 2, 20.0)
        await asyncio.to_thread(postgres.ensure_running)
        await eventually(
            lambda: counted(metrics, "synap_bridge_messages_delivered_total") == MESSAGES, 30.0
        )
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 10)
    assert fake.ids == dict.fromkeys(ids, 1)  # Segment got each message once
    stats = await store.stats(0.0)
    assert (stats.pending, stats.in_flight, stats.delivered_total) == (0, 0, MESSAGES)
    assert counted(metrics, "synap_bridge_acks_lost_total") == 0
    events = [line["event"] for line in lines]
    assert events.count("ack_retry") == 1  # one line per batch, not one per try
    landed = [line for line in lines if line["event"] == "ack_landed"]
    assert len(landed) == 1
    assert landed[0]["messages"] == MESSAGES
    assert landed[0]["attempts"] >= 3


@pytest.mark.timeout(120)
async def test_an_ack_that_cannot_land_within_the_lease_is_counted_and_sent_again(
    postgres: Cluster, store: PostgresStore, fake: FakeSegment
) -> None:
    """Past its lease the claim is no longer ours to settle: the retry gives up, says so, and
    the messages go out again once the database is back (duplicates Segment collapses)."""
    ids = await enqueue(store)
    metrics = Metrics()
    lease = 6.5  # the ack is retried for lease - batch age - 5 s margin: about 1.5 s
    delivery = Delivery(
        store,
        {"default": SegmentSink(KEY, fake.url, 5.0, True)},
        config(),
        metrics=metrics,
        lease_secs=lease,
    )
    fake.hold()
    with capture_logs() as lines:
        loop = asyncio.create_task(delivery.run())
        delivery.wake()
        await stop_postgres_mid_ack(postgres, fake)
        await eventually(lambda: counted(metrics, "synap_bridge_acks_lost_total") > 0, 20.0)
        await asyncio.to_thread(postgres.ensure_running)
        await fake.wait_until(lambda: all(fake.ids.get(i) == 2 for i in ids), within=40.0)
        await eventually(
            lambda: counted(metrics, "synap_bridge_messages_delivered_total") == MESSAGES, 20.0
        )
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 10)
    assert counted(metrics, "synap_bridge_acks_lost_total") == MESSAGES
    assert counted(metrics, "synap_bridge_ack_retries_total") >= 2
    lost = [line for line in lines if line["event"] == "ack_lost"]
    assert len(lost) == 1
    assert "duplicates" in lost[0]["detail"]
    stats = await store.stats(0.0)
    assert (stats.pending, stats.in_flight, stats.delivered_total) == (0, 0, MESSAGES)
