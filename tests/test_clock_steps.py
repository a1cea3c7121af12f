"""Wall-clock steps: a clock stepped back (or forward) never stalls delivery beyond one backoff.

The delivery gets two injected clocks, a wall clock and a monotonic one, moved by hand: the
real store, the real sink and the strict fake Segment, no real waiting. Reproduced before the
fix: with the wall clock stepped back one hour during a short outage, the destination stayed
paused (and the handed-back batch not due) for the hour, so nothing was delivered, not even
webhooks received after Segment recovered.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.config import DeliveryConfig
from bridge.delivery.clocks import StoreClock
from bridge.delivery.loop import Delivery
from bridge.delivery.retry import RetryPolicy
from bridge.delivery.sinks import SegmentSink
from bridge.messages import OutgoingMessage
from bridge.store import Webhook
from bridge.store.sqlite.store import SQLiteStore
from tests.fakes import FakeSegment, ManualClock

KEY = "clock-step-key"
HOUR = 3600.0
T0 = 1_800_000_000.0
MAX_BACKOFF = 300.0


class Clocks:
    """A wall clock and a monotonic clock; ``advance`` moves both, ``step`` the wall only."""

    def __init__(self) -> None:
        self.wall = ManualClock(T0)
        self.mono = ManualClock(1000.0)

    def advance(self, seconds: float) -> None:
        self.wall.now += seconds
        self.mono.now += seconds

    def step(self, seconds: float) -> None:
        self.wall.now += seconds


async def enqueue(store: SQLiteStore, at: float, tag: str, count: int) -> list[str]:
    messages = [
        OutgoingMessage.build(
            "default",
            {
                "type": "track",
                "event": "Exam Completed",
                "userId": f"user-{tag}-{n}",
                "messageId": f"{tag}-{n}",
                "timestamp": "2026-11-01T10:00:00.000Z",
            },
        )
        for n in range(count)
    ]
    await store.enqueue(Webhook("test.event", "p-1", at, b"{}"), messages)
    return [m.message_id for m in messages]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    db = SQLiteStore(tmp_path / "steps.db")
    await db.open()
    yield db
    await db.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegment]:
    async with FakeSegment(KEY) as server:
        yield server


def delivery(store: SQLiteStore, fake: FakeSegment, clocks: Clocks) -> Delivery:
    config = DeliveryConfig.model_validate(
        {"retry": {"initial_backoff_secs": 1.0, "max_backoff_secs": MAX_BACKOFF}}
    )
    return Delivery(
        store,
        {"default": SegmentSink(KEY, fake.url, 5.0, True)},
        config,
        clock=clocks.wall,
        monotonic=clocks.mono,
        policy=RetryPolicy.from_config(config.retry, random.Random(5)),
    )


class TestStepBackDuringAnOutage:
    async def test_everything_goes_out_one_backoff_after_recovery(
        self, store: SQLiteStore, fake: FakeSegment
    ) -> None:
        clocks = Clocks()
        running = delivery(store, fake, clocks)
        before = await enqueue(store, clocks.wall(), "before", 10)
        fake.fail(503)
        assert (await running.drain()).retried == 10  # the outage: paused, handed back
        clocks.step(-HOUR)  # NTP steps the wall clock back one hour
        after = await enqueue(store, clocks.wall(), "after", 5)  # Segment is back
        clocks.advance(2.0)  # the first backoff (1 s + up to 1 s jitter) has passed
        report = await running.drain()
        assert report.delivered == 15
        assert set(fake.ids) == set(before) | set(after)

    async def test_a_forward_step_makes_nothing_late(
        self, store: SQLiteStore, fake: FakeSegment
    ) -> None:
        clocks = Clocks()
        running = delivery(store, fake, clocks)
        before = await enqueue(store, clocks.wall(), "before", 3)
        fake.fail(503)
        await running.drain()
        clocks.step(+HOUR)
        after = await enqueue(store, clocks.wall(), "after", 3)
        clocks.advance(2.0)
        assert (await running.drain()).delivered == 6
        assert set(fake.ids) == set(before) | set(after)


class TestStepBackAcrossARestart:
    async def test_far_future_due_times_wait_one_longest_backoff_at_most(
        self, store: SQLiteStore, fake: FakeSegment
    ) -> None:
        """Handed back before the step, then the process restarts with the clock an hour
        back: the persisted due times lie an hour ahead and count as due in max_backoff."""
        clocks = Clocks()
        before = await enqueue(store, clocks.wall(), "before", 10)
        fake.fail(503)
        await delivery(store, fake, clocks).drain()
        clocks.step(-HOUR)
        restarted = delivery(store, fake, clocks)  # a new process: nothing carried over
        after = await enqueue(store, clocks.wall(), "after", 5)
        assert (await restarted.drain()).delivered == 5  # new webhooks go at once
        clocks.advance(MAX_BACKOFF - 1.0)
        assert (await restarted.drain()).delivered == 0
        clocks.advance(2.0)  # one longest backoff after the restart, not one hour
        assert (await restarted.drain()).delivered == 10
        assert set(fake.ids) == set(before) | set(after)


class TestStoreClock:
    def test_never_steps_back_and_follows_forward_steps(self) -> None:
        clocks = Clocks()
        store_clock = StoreClock(clocks.wall, clocks.mono)
        assert store_clock() == T0
        clocks.step(-HOUR)
        clocks.advance(5.0)
        assert store_clock() == T0 + 5.0  # carried at the monotonic pace
        clocks.step(+2 * HOUR)
        assert store_clock() == clocks.wall()  # a forward step is followed

    def test_slewing_under_the_tolerance_follows_the_wall_clock(self) -> None:
        clocks = Clocks()
        store_clock = StoreClock(clocks.wall, clocks.mono)
        clocks.step(-0.5)
        assert store_clock() == T0 - 0.5

    def test_not_before_advances_only(self) -> None:
        clocks = Clocks()
        store_clock = StoreClock(clocks.wall, clocks.mono)
        store_clock.not_before(T0 - 100)
        assert store_clock() == T0
        store_clock.not_before(T0 + 100)
        clocks.advance(1.0)
        assert store_clock() == T0 + 101
