"""The delivery loop end to end: a real SQLite store, the real sink, the strict fake Segment.

Time is an injected clock: an outage of minutes or a max age of an hour passes in no time.
Only the tests of :meth:`Delivery.run` use the real clock, and they wait on conditions.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.config import DeliveryConfig
from bridge.delivery.loop import IDLE_MAX_SECS, Delivery
from bridge.delivery.retry import RetryPolicy
from bridge.delivery.sinks import DryRunSink, SegmentSink, Sink
from bridge.messages import OutgoingMessage
from bridge.metrics import Metrics
from bridge.store import ClaimedMessage, DeadLetterFilter, Webhook
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import eventually
from tests.fakes import FakeSegment, ManualClock

KEY = "delivery-test-key"
START = 1_700_000_000.0


def body(n: int, destination: str = "default", pad: int = 0) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Exam Completed",
        "userId": f"user-{n}",
        "messageId": f"{destination}-track-{n:06d}",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "properties": {"n": n, "examId": "E-1", "pad": "p" * pad},
        "context": {"library": {"name": "synap-segment-bridge", "version": "0.1.0"}},
    }


async def enqueue(
    store: SQLiteStore,
    at: float,
    numbers: range,
    destination: str = "default",
    pad: int = 0,
    per_webhook: int = 100,
) -> list[str]:
    ids = []
    items = list(numbers)
    for start in range(0, len(items), per_webhook):
        chunk = [
            OutgoingMessage.build(destination, body(n, destination, pad))
            for n in items[start : start + per_webhook]
        ]
        webhook = Webhook(code="test.event", portal_id="p-1", received_at=at, raw_body=b"{}")
        await store.enqueue(webhook, chunk)
        ids += [m.message_id for m in chunk]
    return ids


def settings(
    concurrency: int = 1, max_events: int = 100, timeout: float = 1.0, max_age: float = 3600.0
) -> DeliveryConfig:
    return DeliveryConfig.model_validate(
        {
            "concurrency": concurrency,
            "batch": {"max_events": max_events, "timeout_secs": timeout},
            "retry": {
                "initial_backoff_secs": 1.0,
                "max_backoff_secs": 300.0,
                "max_age_secs": max_age,
            },
        }
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    db = SQLiteStore(tmp_path / "bridge.db")
    await db.open()
    yield db
    await db.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegment]:
    async with FakeSegment(KEY) as server:
        yield server


MakeDelivery = Callable[..., Delivery]


@pytest.fixture
async def make(store: SQLiteStore, fake: FakeSegment) -> AsyncIterator[MakeDelivery]:
    made: list[Delivery] = []

    def factory(
        config: DeliveryConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        sinks: dict[str, Sink] | None = None,
        metrics: Metrics | None = None,
        retention_secs: float | None = None,
    ) -> Delivery:
        config = config or settings()
        delivery = Delivery(
            store,
            sinks if sinks is not None else {"default": SegmentSink(KEY, fake.url, 5.0, True)},
            config,
            clock=clock or ManualClock(START),
            metrics=metrics,
            retention_secs=retention_secs,
            policy=RetryPolicy.from_config(config.retry, random.Random(3)),
        )
        made.append(delivery)
        return delivery

    yield factory
    for delivery in made:  # closes the sinks' sessions (stop() does, as serve's shutdown)
        await delivery.stop(grace_secs=1.0)


class TestDrain:
    async def test_everything_arrives_once_in_limits(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        ids = await enqueue(store, START, range(1234))
        metrics = Metrics()
        delivery = make(settings(concurrency=2, max_events=500), metrics=metrics)
        report = await delivery.drain()
        assert (report.delivered, report.dead, report.retried) == (1234, 0, 0)
        assert fake.accepted == 1234
        assert set(fake.ids) == set(ids)
        assert max(fake.batch_sizes) <= 500
        assert report.batches == len(fake.batch_sizes) == 3
        stats = await store.stats(START)
        assert (stats.pending, stats.in_flight, stats.delivered_total) == (0, 0, 1234)
        sample = metrics.registry.get_sample_value
        assert sample("synap_bridge_messages_delivered_total", {"destination": "default"}) == 1234
        assert sample("synap_bridge_delivery_attempts_total", {"result": "ok"}) == 3

    async def test_one_batch_log_line_without_the_key(
        self, store: SQLiteStore, make: MakeDelivery
    ) -> None:
        await enqueue(store, START, range(3))
        with capture_logs() as lines:
            await make().drain()
        batches = [line for line in lines if line["event"] == "batch"]
        assert len(batches) == 1
        line = batches[0]
        assert {
            k: line[k] for k in ("destination", "messages", "outcome", "attempt", "status")
        } == {
            "destination": "default",
            "messages": 3,
            "outcome": "delivered",
            "attempt": 1,
            "status": 200,
        }
        assert line["bytes"] > 0
        assert line["latency_ms"] >= 0
        assert KEY not in repr(lines)

    async def test_concurrent_batches(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        await enqueue(store, START, range(100))
        # The fake answers only once four requests are in flight together.
        fake.require_concurrency(4)
        report = await make(settings(concurrency=4, max_events=25)).drain()
        assert report.delivered == 100
        assert fake.rejected == []
        assert fake.max_active >= 4

    async def test_dry_run_logs_in_full_and_keeps_the_queue(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """Dry-run used to ack: the backlog was "delivered" and never reached Segment."""
        ids = await enqueue(store, START, range(30))
        metrics = Metrics()
        dry = make(sinks={"default": DryRunSink()}, metrics=metrics)
        with capture_logs() as lines:
            report = await dry.drain()
            again = await dry.drain()  # each message is shown once per process
        assert (report.claimed, report.delivered, again.claimed) == (0, 0, 0)
        shown = [line for line in lines if line["event"] == "dry_run_message"]
        assert [line["message_id"] for line in shown] == ids
        assert shown[0]["message"] == body(0)  # the JSON that would go out, in full
        assert KEY not in repr(lines)
        stats = await store.stats(START)
        assert (stats.pending, stats.in_flight, stats.delivered_total) == (30, 0, 0)
        gauge = metrics.registry.get_sample_value("synap_bridge_dry_run_messages")
        assert gauge == 30
        # A write key arrives (reload): the whole backlog goes out, and the gauge says 0.
        dry.replace_sinks({"default": SegmentSink(KEY, fake.url, 5.0, True)})
        assert (await dry.drain()).delivered == 30
        assert set(fake.ids) == set(ids)
        assert metrics.registry.get_sample_value("synap_bridge_dry_run_messages") == 0

    async def test_a_reload_without_the_key_keeps_the_queue(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """The write key removed (or emptied) by a SIGHUP reload: from then on nothing is
        claimed, and nothing is marked delivered."""
        delivery = make()
        await enqueue(store, START, range(5))
        assert (await delivery.drain()).delivered == 5
        delivery.replace_sinks({"default": DryRunSink()})
        await enqueue(store, START, range(5, 12))
        report = await delivery.drain()
        assert (report.claimed, report.delivered) == (0, 0)
        stats = await store.stats(START)
        assert (stats.pending, stats.delivered_total) == (7, 5)
        assert fake.unique == 5

    async def test_dry_run_destination_is_never_claimed_beside_a_live_one(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        live = await enqueue(store, START, range(10))
        await enqueue(store, START, range(10, 15), destination="eu")
        sinks: dict[str, Sink] = {
            "default": SegmentSink(KEY, fake.url, 5.0, True),
            "eu": DryRunSink("eu"),
        }
        report = await make(sinks=sinks).drain()
        assert (report.claimed, report.delivered) == (10, 10)
        assert set(fake.ids) == set(live)
        stats = await store.stats(START)
        assert (stats.pending, stats.in_flight) == (5, 0)


class TestFailures:
    async def test_outage_backs_off_and_loses_nothing(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        ids = await enqueue(store, START, range(250))
        fake.fail(503, times=2)
        fake.fail(reset=True)
        fake.fail(429, retry_after="30")
        clock = ManualClock(START)
        metrics = Metrics()
        delivery = make(clock=clock, metrics=metrics)
        waits = []
        for _ in range(20):
            await delivery.drain()
            if fake.unique == 250:
                break
            resume = delivery.paused_until("default")
            waits.append(resume - clock.now)
            requests = fake.requests
            assert (await delivery.drain()).claimed == 0  # paused: nothing is even claimed
            assert fake.requests == requests
            clock.now = resume
        assert set(fake.ids) == set(ids)
        assert fake.accepted == 250
        # One probe per backoff, growing (1s, 2s, 4s + up to 1s jitter), then Retry-After: 30.
        assert fake.requests == 4 + 3
        assert len(waits) == 4
        assert 1.0 <= waits[0] <= 2.0
        assert 2.0 <= waits[1] <= 3.0
        assert 4.0 <= waits[2] <= 5.0
        assert waits[3] >= 30.0
        stats = await store.stats(START)
        assert stats.dead_letters == {}
        assert stats.pending == 0
        sample = metrics.registry.get_sample_value
        assert sample("synap_bridge_delivery_attempts_total", {"result": "transient"}) == 4
        assert sample("synap_bridge_delivery_attempts_total", {"result": "ok"}) == 3

    async def test_poison_message_is_found_and_buried_alone(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        ids = await enqueue(store, START, range(1000))
        poison = {ids[437], ids[901]}
        fake.poison.update(poison)
        metrics = Metrics()
        report = await make(settings(max_events=1000), metrics=metrics).drain()
        assert (report.delivered, report.dead) == (998, 2)
        assert set(fake.ids) == set(ids) - poison
        # Binary search: about two requests per halving per culprit, not one per message.
        assert fake.requests <= 4 * 10 + 1
        letters = await store.dead_letters(DeadLetterFilter())
        assert {letter.message_id for letter in letters} == poison
        assert {letter.reason for letter in letters} == {"rejected_by_segment"}
        assert all("400" in letter.detail for letter in letters)
        dead = metrics.registry.get_sample_value(
            "synap_bridge_dead_letters_total", {"reason": "rejected_by_segment"}
        )
        assert dead == 2

    @pytest.mark.parametrize("status", [404, 413])
    async def test_whole_request_refusal_pauses_and_buries_nothing(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery, status: int
    ) -> None:
        """A 404 (a wrong endpoint path) or 413 (a proxy's limit) answered to every request
        used to split and bury the whole backlog (1,000 of 1,000): now the destination pauses
        with backoff, and once the endpoint is fixed everything is delivered."""
        ids = await enqueue(store, START, range(1000))
        fake.fail(status, times=1_000_000)
        clock = ManualClock(START)
        delivery = make(settings(concurrency=2, max_events=100), clock=clock)
        for _ in range(5):
            report = await delivery.drain()
            assert report.dead == 0
            resume = delivery.paused_until("default")
            assert resume > clock.now  # paused, with backoff
            clock.now = resume
        assert fake.requests <= 5 * 2  # one probe per backoff (a sibling batch at most)
        assert (await store.stats(START)).dead_letters == {}
        fake.failures.clear()  # the endpoint is fixed
        await delivery.drain()
        assert set(fake.ids) == set(ids)
        stats = await store.stats(START)
        assert (stats.pending, stats.in_flight, stats.dead_letters) == (0, 0, {})

    async def test_max_age_makes_dead_letters(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        await enqueue(store, START, range(10))
        fake.fail(503, times=100)
        clock = ManualClock(START)
        delivery = make(settings(max_age=3600.0), clock=clock)
        first = await delivery.drain()
        assert (first.retried, first.dead) == (10, 0)
        clock.now = START + 3600.0
        second = await delivery.drain()
        assert (second.retried, second.dead) == (0, 10)
        letters = await store.dead_letters(DeadLetterFilter(reason="max_age_exceeded"))
        assert len(letters) == 10
        assert "503" in letters[0].detail
        assert await store.next_due_at() is None

    async def test_oversized_and_unknown_destination_are_buried(
        self, store: SQLiteStore, make: MakeDelivery
    ) -> None:
        await enqueue(store, START, range(1), pad=33_000)
        await enqueue(store, START, range(1, 2), destination="removed")
        await enqueue(store, START, range(2, 4))
        report = await make().drain()
        assert (report.delivered, report.dead) == (2, 2)
        reasons = await store.stats(START)
        assert reasons.dead_letters == {"message_too_large": 1, "unknown_destination": 1}


class TestRetention:
    async def test_prune_forgets_old_deliveries_only(
        self, store: SQLiteStore, make: MakeDelivery
    ) -> None:
        await enqueue(store, START, range(3))
        clock = ManualClock(START)
        delivery = make(clock=clock, retention_secs=3600.0)
        await delivery.drain()
        assert await delivery.prune() == 0  # delivered just now
        clock.now = START + 3601.0
        assert await delivery.prune() == 3
        # Forgotten: the same messageIds are new to the store again.
        receipt = await store.enqueue(
            Webhook("test.event", "p-1", clock.now, b"{}"),
            [OutgoingMessage.build("default", body(n)) for n in range(3)],
        )
        assert (receipt.stored, receipt.duplicates) == (3, 0)

    async def test_no_retention_keeps_everything(
        self, store: SQLiteStore, make: MakeDelivery
    ) -> None:
        await enqueue(store, START, range(2))
        clock = ManualClock(START)
        delivery = make(clock=clock)
        await delivery.drain()
        clock.now = START + 1e9
        assert await delivery.prune() == 0
        assert (await store.stats(START)).delivered_total == 2


class TestStop:
    async def test_unfinished_batch_is_handed_back(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        await enqueue(store, START, range(5))
        fake.hold()
        delivery = make()
        running = asyncio.create_task(delivery.run_once())
        await fake.wait_until(lambda: fake.active >= 1)
        await delivery.stop(grace_secs=0.05)
        report = await asyncio.wait_for(running, 5)
        assert report.delivered == 0
        stats = await store.stats(START)
        assert (stats.pending, stats.in_flight) == (5, 0)
        assert await store.next_due_at() == START  # due again at once
        assert (await delivery.run_once()).claimed == 0  # stopped: claims nothing more

    async def test_batch_in_flight_finishes_within_grace(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        await enqueue(store, START, range(5))
        fake.hold()
        delivery = make()
        running = asyncio.create_task(delivery.run_once())
        await fake.wait_until(lambda: fake.active >= 1)
        stopping = asyncio.create_task(delivery.stop(grace_secs=10.0))
        await asyncio.sleep(0)  # let stop() begin waiting before the answer comes
        fake.release()
        await asyncio.wait_for(stopping, 10)
        assert (await running).delivered == 5
        assert (await store.stats(START)).pending == 0


def count_claims(store: SQLiteStore) -> list[int]:
    """The sizes of the store's claims from now on, in order (the real claim, counted)."""
    claimed: list[int] = []
    original = store.claim

    async def counted(
        now: float, limit: int, lease_secs: float, exclude: Any = (), only: Any = None
    ) -> list[ClaimedMessage]:
        got = await original(now, limit, lease_secs, exclude, only)
        claimed.append(len(got))
        return got

    store.claim = counted  # type: ignore[method-assign]
    return claimed


def count_idles(store: SQLiteStore) -> asyncio.Event:
    """Set each time the loop, going idle, reads the next due time (the real read); the test
    clears it."""
    idle = asyncio.Event()
    original = store.next_due_at

    async def noted() -> float | None:
        due = await original()
        idle.set()
        return due

    store.next_due_at = noted  # type: ignore[method-assign]
    return idle


class TestPipelining:
    async def test_a_backlog_claims_the_next_batch_while_every_slot_uploads(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """While the only upload slot is busy (held at the fake), the next batch is claimed
        already, so it is ready when the slot frees; one claim ahead, not the backlog."""
        claimed = count_claims(store)
        ids = await enqueue(store, START, range(500))
        delivery = make(settings(concurrency=1, max_events=100))
        fake.hold()
        draining = asyncio.create_task(delivery.drain())
        await fake.wait_until(lambda: fake.active >= 1)
        await eventually(lambda: claimed == [100, 100])  # the second while the first uploads
        assert (await store.stats(START)).in_flight == 200
        fake.release()
        report = await asyncio.wait_for(draining, 10)
        assert (report.delivered, report.batches) == (500, 5)
        assert set(fake.ids) == set(ids)
        assert fake.batch_sizes == [100] * 5

    async def test_a_backlog_of_large_messages_leaves_in_full_batches(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """Claims are sized to whole batches by bytes: ~2 KB messages fill 475 KB at ~230,
        and claims of 500 used to leave a tail batch of ~40 behind each (3 requests where 2
        carry them)."""
        ids = await enqueue(store, START, range(2000), pad=1800)
        delivery = make(settings(concurrency=2, max_events=500))
        report = await delivery.drain()
        assert report.delivered == 2000
        assert set(fake.ids) == set(ids)
        full = max(fake.batch_sizes)
        assert 200 < full < 250
        # Small batches: the tail of the first claim (by count: nothing is known of the sizes
        # yet) and the end of the backlog; none per claim (that was 11 requests, 3 small).
        assert sum(1 for size in fake.batch_sizes if size < full * 0.9) <= 2
        assert len(fake.batch_sizes) <= 10

    async def test_a_batch_claimed_ahead_does_not_probe_an_outage_again(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """The failed upload pauses the destination before its slot passes on: the batch
        claimed ahead goes back to the store unsent."""
        await enqueue(store, START, range(300))
        fake.fail(503, times=5)
        delivery = make(settings(concurrency=1, max_events=100))
        report = await delivery.drain()
        assert fake.requests == 1
        assert (report.delivered, report.batches, report.retried) == (0, 1, 200)
        stats = await store.stats(START)
        assert (stats.pending, stats.in_flight) == (300, 0)


class TestRunLoop:
    async def test_wake_delivers_and_stop_ends_the_loop(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        delivery = make(settings(max_events=3, timeout=30.0), clock=time.time)
        loop = asyncio.create_task(delivery.run())
        fake.hold()  # the first upload stays in flight while three more arrive
        await enqueue(store, time.time(), range(1))
        delivery.wake()
        await fake.wait_until(lambda: fake.active >= 1)
        started = time.monotonic()
        for n in range(1, 4):  # three commits, three wake-ups
            await enqueue(store, time.time(), range(n, n + 1))
            delivery.wake()
        fake.release()
        await fake.wait_for(4)
        assert time.monotonic() - started < 20.0  # flushed by size, not by the 30 s age
        assert fake.batch_sizes == [1, 3]  # what waited behind the upload went in one batch
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 5)

    async def test_stop_during_run_hands_back_the_batch(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        delivery = make(settings(timeout=0.01), clock=time.time)
        loop = asyncio.create_task(delivery.run())
        fake.hold()
        await enqueue(store, time.time(), range(4))
        delivery.wake()
        await fake.wait_until(lambda: fake.active >= 1)
        await delivery.stop(grace_secs=0.05)
        await asyncio.wait_for(loop, 5)
        stats = await store.stats(0.0)
        assert (stats.pending, stats.in_flight, stats.delivered_total) == (4, 0, 0)

    async def test_a_gathering_batch_claims_again_only_when_arrivals_can_fill_it(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """Claiming on every commit cost a write transaction (an fsync) per intake round.
        A batch gathers while another upload is in flight (the fake holds it)."""
        claimed = count_claims(store)
        delivery = make(settings(concurrency=2, max_events=10, timeout=30.0), clock=time.time)
        loop = asyncio.create_task(delivery.run())
        fake.hold()
        await enqueue(store, time.time(), range(100, 101))
        delivery.wake(1)
        await fake.wait_until(lambda: fake.active >= 1)  # an upload in flight, held
        await enqueue(store, time.time(), range(1))
        delivery.wake(1)
        await eventually(lambda: claimed[-1:] == [1])  # the second batch has started gathering
        before = len(claimed)
        for n in range(1, 9):  # eight arrivals: not enough to fill the batch, no claim
            await enqueue(store, time.time(), range(n, n + 1))
            delivery.wake(1)
        await enqueue(store, time.time(), range(9, 10))
        delivery.wake(1)  # the ninth fills it: one claim takes all nine
        await fake.wait_until(lambda: fake.active >= 2)
        fake.release()
        await fake.wait_for(11)
        assert sorted(fake.batch_sizes) == [1, 10]  # flushed by size, long before the 30 s age
        assert claimed[before] == 9
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 5)

    async def test_an_upload_that_finishes_does_not_repeat_a_claim_that_found_nothing(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """Each claim is a write transaction (SQLite's one write lock): under load, half of
        them found nothing, made again each time an upload finished. Only an arrival (or a
        wait that ran its course) makes another claim worth it."""
        claimed = count_claims(store)
        idle = count_idles(store)
        delivery = make(settings(concurrency=2, max_events=1, timeout=30.0), clock=time.time)
        loop = asyncio.create_task(delivery.run())
        fake.hold()
        await enqueue(store, time.time(), range(1))
        delivery.wake()
        await fake.wait_until(lambda: fake.active >= 1)  # one upload in flight, held
        await eventually(lambda: claimed == [1, 0])  # the free slot looked, found nothing
        idle.clear()
        fake.release()
        await asyncio.wait_for(idle.wait(), 10)  # delivered, and the loop went idle
        assert claimed == [1, 0]  # no claim when the upload finished
        await enqueue(store, time.time(), range(1, 2))
        delivery.wake()  # an arrival: claimed and sent at once
        await fake.wait_for(2)
        assert claimed[:3] == [1, 0, 1]
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 5)

    async def test_an_empty_claim_holds_off_claims_for_at_most_idle_max_secs(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """A message can fall due by the clock alone (a hold ends, a retry's time comes), with
        no arrival to say so: once IDLE_MAX_SECS have passed since the empty claim, the next
        upload that finishes claims again, before the loop goes idle."""
        claimed = count_claims(store)
        idle = count_idles(store)
        clock = ManualClock(START)
        delivery = make(settings(concurrency=2, max_events=1, timeout=30.0), clock=clock)
        loop = asyncio.create_task(delivery.run())
        fake.hold()
        await enqueue(store, clock(), range(1))
        delivery.wake()
        await fake.wait_until(lambda: fake.active >= 1)  # one upload in flight, held
        await eventually(lambda: claimed == [1, 0])
        await enqueue(store, clock(), range(1, 2))  # due, and nothing tells the loop
        clock.now += IDLE_MAX_SECS + 1
        idle.clear()
        fake.release()
        await asyncio.wait_for(idle.wait(), 10)  # the loop's first idle since the release
        assert claimed[2:3] == [1]  # claimed as the upload finished, not after an idle wait
        await fake.wait_for(2)
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 5)

    async def test_partial_batch_flushes_by_age(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        delivery = make(settings(concurrency=2, max_events=100, timeout=0.2), clock=time.time)
        loop = asyncio.create_task(delivery.run())
        fake.hold()
        await enqueue(store, time.time(), range(100, 101))
        delivery.wake()
        await fake.wait_until(lambda: fake.active >= 1)  # an upload in flight, held
        enqueued = time.time()
        await enqueue(store, enqueued, range(2))
        delivery.wake()
        await fake.wait_until(lambda: fake.requests >= 2)
        assert time.time() - enqueued >= 0.2  # it waited for more, up to the batch age
        fake.release()
        await fake.wait_for(3)
        assert sorted(fake.batch_sizes) == [1, 2]
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 5)

    async def test_a_trickling_answer_is_cut_at_the_total_deadline_and_others_flow_meanwhile(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """A peer answering one byte every 0.5 s never trips the 1 s read timeout: the upload
        used to hold its batch for the whole answer (8 s here; forever in the wild) while the
        loop claimed nothing into the free slot."""
        sink = SegmentSink(KEY, fake.url, 1.0, True, total_timeout_secs=2.5)
        config = DeliveryConfig.model_validate(
            {
                "concurrency": 2,
                "batch": {"max_events": 5, "timeout_secs": 0.05},
                "retry": {"initial_backoff_secs": 0.2},
            }
        )
        delivery = make(config, clock=time.time, sinks={"default": sink})
        fake.fail(trickle=0.5)
        loop = asyncio.create_task(delivery.run())
        stuck = await enqueue(store, time.time(), range(5))
        delivery.wake()
        await fake.wait_until(lambda: fake.trickling == 1)
        stuck_at = time.monotonic()
        others = await enqueue(store, time.time(), range(5, 10))
        delivery.wake()
        await fake.wait_until(lambda: set(others) <= set(fake.ids), within=10.0)
        assert fake.trickling == 1  # delivered while the stuck upload was still stuck
        await fake.wait_until(lambda: all(fake.ids.get(i) == 2 for i in stuck), within=15.0)
        assert time.monotonic() - stuck_at < 2.5 + 5.0  # cut at the deadline, then retried
        await fake.wait_until(lambda: fake.trickles_abandoned == 1)  # the socket was closed
        await delivery.stop(grace_secs=5.0)  # lets the retry's ack land
        await asyncio.wait_for(loop, 5)
        stats = await store.stats(0.0)
        assert (stats.pending, stats.in_flight, stats.dead_letters) == (0, 0, {})

    async def test_an_idle_destination_sends_at_once(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        """With no upload in flight nothing is gained by waiting: a quiet bridge used to hold
        every event for the whole batch age (p50 519 ms at 200 webhooks/s)."""
        delivery = make(settings(concurrency=2, max_events=100, timeout=30.0), clock=time.time)
        loop = asyncio.create_task(delivery.run())
        for n in range(3):
            started = time.monotonic()
            await enqueue(store, time.time(), range(n, n + 1))
            delivery.wake()
            await fake.wait_for(n + 1, within=10.0)
            assert time.monotonic() - started < 5.0  # not the 30 s batch age
        assert fake.batch_sizes == [1, 1, 1]
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 5)

    async def test_retry_due_time_wakes_the_loop(
        self, store: SQLiteStore, fake: FakeSegment, make: MakeDelivery
    ) -> None:
        config = DeliveryConfig.model_validate(
            {"batch": {"timeout_secs": 0.01}, "retry": {"initial_backoff_secs": 0.05}}
        )
        delivery = make(config, clock=time.time)
        fake.fail(503)
        await enqueue(store, time.time(), range(4))
        loop = asyncio.create_task(delivery.run())
        await fake.wait_for(4)  # no wake(): the loop slept until the retry fell due
        assert fake.requests == 2
        await delivery.stop(grace_secs=5.0)
        await asyncio.wait_for(loop, 5)
