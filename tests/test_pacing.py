"""Intake's pace while the mapping catches up (bridge.receive.pacing): turns granted by reports,
bounded waits, a pace that lapses without reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app, reported
from bridge.config import Config
from bridge.mapper.stage import Report
from bridge.receive import pacing
from bridge.receive.pacing import MAX_TURNS, Pacer
from bridge.receive.runtime import RUNTIME
from tests.conftest import basic_auth, eventually, fixture_body
from tests.fakes import FakeSegment


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_off_until_the_mapping_says_it_is_catching_up() -> None:
    pacer = Pacer()
    assert not pacer.engaged
    assert not await pacer.turn()
    pacer.reported(128, catching_up=False)
    assert not pacer.engaged


async def test_an_intake_slower_than_the_mapping_never_waits() -> None:
    """A backlog mapped while Synap sends a trickle: turns pile up (to MAX_TURNS), nobody waits."""
    pacer = Pacer()
    pacer.reported(512, catching_up=True)
    assert pacer.engaged
    for _ in range(MAX_TURNS):
        assert not await pacer.turn()
    pacer.reported(512, catching_up=True)
    assert [await pacer.turn() for _ in range(512)] == [False] * 512


async def test_past_its_turns_intake_waits_for_the_next_mapped_webhooks() -> None:
    pacer = Pacer()
    pacer.reported(0, catching_up=True)
    for _ in range(MAX_TURNS):
        await pacer.turn()
    waiting = [asyncio.create_task(pacer.turn()) for _ in range(5)]
    await asyncio.sleep(0)  # the tasks reach their wait
    assert pacer.waiting == 5
    pacer.reported(3, catching_up=True)  # three mapped: the three oldest go, in order
    await asyncio.sleep(0)
    assert [task.done() for task in waiting] == [True, True, True, False, False]
    pacer.reported(0, catching_up=False)  # caught up: everyone goes
    assert await asyncio.gather(*waiting) == [True] * 5
    assert not pacer.engaged
    assert not await pacer.turn()


async def test_a_turn_that_does_not_come_is_given_up_after_the_bounded_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mapper that reports nothing more (stuck, killed): each webhook waits MAX_WAIT_SECS at
    most and is kept anyway; the pace itself lapses after STALE_SECS without a report."""
    monkeypatch.setattr(pacing, "MAX_WAIT_SECS", 0.05)
    clock = Clock()
    pacer = Pacer(clock)
    pacer.reported(0, catching_up=True)
    for _ in range(MAX_TURNS):
        await pacer.turn()
    started = time.monotonic()
    assert await pacer.turn()  # waited, then went on
    assert 0.04 < time.monotonic() - started < 1.0
    clock.now += pacing.STALE_SECS
    assert not pacer.engaged
    assert not await pacer.turn()


async def test_a_waiter_that_gave_up_does_not_take_a_turn_from_the_next() -> None:
    pacer = Pacer()
    pacer.reported(0, catching_up=True)
    for _ in range(MAX_TURNS):
        await pacer.turn()
    gone = asyncio.create_task(pacer.turn())
    await asyncio.sleep(0)
    gone.cancel()  # the client hung up while waiting
    await asyncio.gather(gone, return_exceptions=True)
    after = asyncio.create_task(pacer.turn())
    await asyncio.sleep(0)
    pacer.reported(1, catching_up=True)
    assert await after


MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.mark.parametrize("pace_intake", [True, False])
async def test_a_webhook_waits_for_the_mapping_that_catches_up_then_is_kept(
    aiohttp_client: MakeClient,
    fake_segment: FakeSegment,
    config_factory: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    pace_intake: bool,
) -> None:
    """The real app: a mapping report that says "catching up" with no turns left holds the next
    webhook before its body is read (counted in ``synap_bridge_intake_paced_total``); the
    report of one mapped webhook lets it in, and it is kept and answered 200. With
    ``mapper.pace_intake: false`` the same report holds nothing."""
    monkeypatch.setattr(pacing, "MAX_TURNS", 0)
    monkeypatch.setattr(pacing, "MAX_WAIT_SECS", 30.0)  # the turn comes from the test, not time
    config = config_factory(fake_segment.url, mapper={"pace_intake": pace_intake})
    client = await aiohttp_client(build_app(config))
    runtime = client.app[RUNTIME]
    reported(runtime, Report(catching_up=True))
    post = asyncio.create_task(
        client.post(
            "/webhooks/synap/attempt.completed",
            json=fixture_body("attempt.completed"),
            headers=basic_auth(),
        )
    )
    paced = "synap_bridge_intake_paced_total"
    if pace_intake:
        await eventually(lambda: runtime.pacer.waiting == 1)
        assert (await runtime.store.stats(0)).unmapped == 0  # not read, not kept yet
        reported(runtime, Report(mapped=1, catching_up=True))
    response = await post
    assert response.status == 200
    assert (await response.json())["accepted"] is True
    assert runtime.metrics.registry.get_sample_value(paced) == (1 if pace_intake else 0)
