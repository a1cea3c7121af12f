"""Segment outages: everything arrives once Segment recovers, nothing becomes a dead letter.

* Through the real app (webhooks over HTTP, the background delivery task): the strict fake
  answers 503, then resets connections, then 429 with ``Retry-After``, then recovers.
* An outage of hours, with an injected clock and the real delivery, store and Segment sink
  (no real waiting): the backlog is kept, the backoff grows to ``retry.max_backoff_secs`` and
  stays there, and delivery resumes within one backoff step after Segment recovers; messages
  of one user arrive in the order they were received. Past ``retry.max_age_secs`` a message
  becomes a dead letter (never nothing) and replays once Segment is back.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.delivery.loop import Delivery
from bridge.delivery.retry import RetryPolicy
from bridge.delivery.sinks import SegmentSink
from bridge.mapping import intake
from bridge.receive.runtime import RUNTIME
from bridge.store import DeadLetterFilter
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import WRITE_KEY, attempt_completed, basic_auth, settled
from tests.fakes import FakeSegment, ManualClock

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

HOUR = 3600.0
T0 = 1_800_000_000.0  # an arbitrary epoch for the injected clock


def registered(user: str) -> dict[str, Any]:
    """user.registered: maps to an identify then a track ("User Registered")."""
    return {
        "objectId": user,
        "name": "Ada Lovelace",
        "email": f"{user}@example.org",
        "timeRegistered": "2026-11-01T09:00:00Z",
        "usergroups": [],
        "customAttributes": {},
    }


def traffic(users: int, attempts: int) -> list[tuple[str, dict[str, Any]]]:
    """Per user: registered first, then attempts - the order a user's events are received."""
    out: list[tuple[str, dict[str, Any]]] = []
    for u in range(users):
        out.append(("user.registered", registered(f"user-{u}")))
    for n in range(attempts):
        for u in range(users):
            out.append(("attempt.completed", completed(f"user-{u}", n)))
    return out


def per_user(messages: list[dict[str, Any]]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for message in messages:
        seen.setdefault(message["userId"], []).append(message["messageId"])
    return seen


class TestOutageThroughTheApp:
    async def test_503_then_resets_then_429_then_recovery(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        config = config_factory(
            fake_segment.url,
            delivery={"retry": {"initial_backoff_secs": 0.01, "max_backoff_secs": 0.05}},
        )
        fake_segment.fail(503, times=3)
        fake_segment.fail(reset=True, times=2)
        fake_segment.fail(429, times=1, retry_after="1")
        client = await aiohttp_client(build_app(config))
        runtime = client.app[RUNTIME]
        for code, body in traffic(users=4, attempts=3):
            response = await client.post(f"/webhooks/synap/{code}", json=body, headers=basic_auth())
            assert response.status == 200
        await settled(client.app)
        stats = await runtime.store.stats(0)
        expected = stats.pending + stats.in_flight + stats.delivered_total
        assert expected >= 12

        await fake_segment.wait_for(expected, within=20)
        # Every failure mode was met, in order, before anything got through.
        statuses = [status for status, _ in fake_segment.rejected]
        assert statuses == [503, 503, 503, 429]
        assert fake_segment.requests >= 7  # 3 x 503, 2 resets, 1 x 429, then success
        assert not fake_segment.failures
        stats = await runtime.store.stats(0)
        assert stats.dead_letters == {}
        assert await runtime.store.dead_letters(DeadLetterFilter()) == []
        assert fake_segment.unique == expected
        assert (await client.get("/readyz")).status == 200


def completed(user: str, n: int) -> dict[str, Any]:
    """attempt.completed: one track ("Completed Test") of ``user``."""
    return attempt_completed(f"{user}-{n}", user=user, score=n)


async def enqueue(
    store: SQLiteStore, config: Config, items: list[tuple[str, dict[str, Any]]], at: float
) -> list[str]:
    """Through the same intake path as the receiver; the messageIds in arrival order."""
    ids: list[str] = []
    for code, body in items:
        result = intake.process(code, orjson.dumps(body), at, config)
        assert result.dead is None
        await store.enqueue(result.webhook, result.messages)
        ids += [m.message_id for m in result.messages]
    return ids


class TestLongOutage:
    async def test_hours_of_outage_back_off_to_the_ceiling_and_resume_within_one_step(
        self, fake_segment: FakeSegment, config_factory: Callable[..., Config], tmp_path: Path
    ) -> None:
        config = config_factory(
            fake_segment.url,
            delivery={
                "concurrency": 1,
                "retry": {"initial_backoff_secs": 1, "max_backoff_secs": 300},
            },
        )
        clock = ManualClock(T0)
        store = SQLiteStore(tmp_path / "outage.db")
        await store.open()
        sink = SegmentSink(WRITE_KEY, fake_segment.url, 5, True)
        delivery = Delivery(
            store,
            {"default": sink},
            config.delivery,
            clock=clock,
            policy=RetryPolicy.from_config(config.delivery.retry, rng=random.Random(4)),
        )
        try:
            first = traffic(users=3, attempts=2)
            order = await enqueue(store, config, first, clock.now)
            fake_segment.fail(503, times=1_000_000)  # Segment is down

            attempts: list[float] = []
            later_added = False
            for _ in range(1000):  # bounded; about 80 tries fit in 6 hours
                if clock.now >= T0 + 6 * HOUR:
                    break
                if not later_added and clock.now >= T0 + 3 * HOUR:
                    more = traffic(users=3, attempts=4)[len(first) :]
                    order += await enqueue(store, config, more, clock.now)
                    later_added = True
                report = await delivery.run_once()
                if report.batches:
                    attempts.append(clock.now)
                    assert report.delivered == 0
                    assert report.dead == 0
                clock.now = max(clock.now, delivery.paused_until("default"))
            assert later_added

            stats = await store.stats(0)
            assert stats.pending + stats.in_flight == len(order)  # the backlog is all there
            assert stats.delivered_total == 0
            assert stats.dead_letters == {}
            gaps = [b - a for a, b in itertools.pairwise(attempts)]
            assert 1.0 <= gaps[0] <= 2.0  # the first backoff: initial + jitter
            assert max(gaps) == 300.0  # reached the ceiling...
            assert all(g <= 300.0 for g in gaps)  # ...and never went past it
            assert gaps[-20:] == [300.0] * 20  # and stayed there, no endless growth
            assert len(attempts) < 6 * HOUR / 300 + 15  # one probe per step, not a flood

            # Segment recovers in the middle of a backoff step.
            recovered_at = clock.now + 17.0
            clock.now = recovered_at
            fake_segment.failures.clear()
            for _ in range(10):
                report = await delivery.run_once()
                if report.delivered:
                    break
                clock.now = max(clock.now, delivery.paused_until("default"))
            assert clock.now - recovered_at <= 300.0  # within one backoff step
            await delivery.drain()
        finally:
            await delivery.stop(1)
            await store.close()

        assert fake_segment.unique == len(order)
        stats_after = await _stats_of(tmp_path / "outage.db")
        assert stats_after == (0, len(order), {})
        # Per user, the messages left in the order they were received (identify first).
        arrived = per_user(fake_segment.messages)
        for user, ids in arrived.items():
            assert ids == [i for i in order if i in set(ids)], user
            assert ids[0].startswith("identify")

    async def test_outage_past_max_age_makes_dead_letters_that_replay(
        self, fake_segment: FakeSegment, config_factory: Callable[..., Config], tmp_path: Path
    ) -> None:
        config = config_factory(
            fake_segment.url,
            delivery={
                "retry": {"initial_backoff_secs": 60, "max_backoff_secs": 600, "max_age_secs": HOUR}
            },
        )
        clock = ManualClock(T0)
        store = SQLiteStore(tmp_path / "aged.db")
        await store.open()
        sink = SegmentSink(WRITE_KEY, fake_segment.url, 5, True)
        delivery = Delivery(store, {"default": sink}, config.delivery, clock=clock)
        try:
            order = await enqueue(store, config, traffic(users=2, attempts=1), clock.now)
            fake_segment.fail(503, times=1_000_000)
            for _ in range(200):  # bounded
                await delivery.run_once()
                stats = await store.stats(0)
                if stats.pending + stats.in_flight == 0:
                    break
                clock.now = max(clock.now, delivery.paused_until("default"))
            assert clock.now >= T0 + HOUR
            assert stats.dead_letters == {"max_age_exceeded": len(order)}  # never nothing
            letters = await store.dead_letters(DeadLetterFilter())
            detail = await store.dead_letter(letters[0].id)
            assert detail is not None
            assert detail.last_error is not None
            assert "503" in detail.last_error

            fake_segment.failures.clear()
            outcome = await store.replay(
                DeadLetterFilter(reason="max_age_exceeded"), intake.remapper(config), clock.now
            )
            # A webhook's sibling messages revive together: count messages, not letters.
            assert outcome.messages == len(order)
            assert outcome.still_dead == 0
            assert await store.dead_letters(DeadLetterFilter()) == []
            clock.now = max(clock.now, delivery.paused_until("default"))  # the step ends
            await delivery.drain()
        finally:
            await delivery.stop(1)
            await store.close()
        assert fake_segment.unique == len(order)
        assert set(fake_segment.ids) == set(order)


async def _stats_of(path: Path) -> tuple[int, int, dict[str, int]]:
    store = SQLiteStore(path)
    await store.open()
    try:
        stats = await store.stats(0)
    finally:
        await store.close()
    return stats.pending + stats.in_flight, stats.delivered_total, stats.dead_letters
