"""The mapping leaves part of the machine to a busy intake during a burst (``yield_to_intake``).

The rule alone (:func:`yield_secs`), the stage on a real SQLite file (reports say how long it
left), intake's count of webhooks in flight in the real app, and the wake-up byte through a real
mapping process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge import config as config_module
from bridge.app import build_app
from bridge.config import Config
from bridge.mapper.stage import MAX_YIELD_SECS, MappingStage, Report, yield_secs
from bridge.mapper.supervisor import MapperSupervisor
from bridge.receive import pacing
from bridge.receive.runtime import BUSY_IN_FLIGHT, RUNTIME
from bridge.store import Webhook
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import basic_auth, eventually, fixture_body, polled
from tests.fakes import FakeSegment
from tests.test_stages import bridge_config

KEPT = 300  # two full takes of 128, then 44


class TestRule:
    def test_a_full_take_while_intake_is_busy_waits_as_long_as_its_records(self) -> None:
        assert yield_secs(0.02, full=True, catching_up=False, intake_busy=True) == 0.02

    def test_the_pause_is_bounded(self) -> None:
        assert yield_secs(3.0, full=True, catching_up=False, intake_busy=True) == MAX_YIELD_SECS

    def test_a_store_whose_server_shares_the_cores_pauses_longer(self) -> None:
        """PostgreSQL's server runs the mapper's statements at full priority: ``burst_pause``."""
        pause = yield_secs(0.02, full=True, catching_up=False, intake_busy=True, factor=8.0)
        assert pause == pytest.approx(0.16)
        longest = yield_secs(3.0, full=True, catching_up=False, intake_busy=True, factor=8.0)
        assert longest == 8 * MAX_YIELD_SECS

    @pytest.mark.parametrize(
        ("full", "catching_up", "intake_busy"),
        [(False, False, True), (True, True, True), (True, False, False)],
        ids=["the-mapping-keeps-up", "catching-up", "intake-idle"],
    )
    def test_otherwise_no_pause(self, full: bool, catching_up: bool, intake_busy: bool) -> None:
        assert yield_secs(0.02, full=full, catching_up=catching_up, intake_busy=intake_busy) == 0


async def keep(store: SQLiteStore, count: int, received_at: float) -> None:
    for n in range(count):
        await store.keep(Webhook("attempt.completed", None, received_at, f'{{"n":{n}}}'.encode()))


async def yielded_while_mapping(
    tmp_path: Path,
    config: Config,
    *,
    busy: bool,
    received_at: float | None = None,
    **options: object,
) -> list[Report]:
    """Map ``KEPT`` webhooks with the stage on a real SQLite file; every round's report."""
    store = SQLiteStore(tmp_path / "yield.db")
    await store.open()
    reports: list[Report] = []
    try:
        await keep(store, KEPT, received_at if received_at is not None else time.time())

        def heard(report: Report) -> None:  # intake goes on keeping (and waking) meanwhile
            reports.append(report)
            stage.wake(intake_busy=busy)

        stage = MappingStage(store, lambda: config, on_report=heard, **options)  # type: ignore[arg-type]
        stage.wake(intake_busy=busy)
        running = asyncio.create_task(stage.run())
        await eventually(lambda: sum(r.mapped for r in reports) == KEPT, within=30)
        await stage.stop(time.monotonic() + 10)
        await running
    finally:
        await store.close()
    return reports


@pytest.fixture
def config(tmp_path: Path, fake_segment: FakeSegment) -> Config:
    return config_module.load(str(bridge_config(tmp_path, fake_segment)), {})


async def test_a_busy_intake_gets_a_pause_after_each_full_take(
    tmp_path: Path, config: Config
) -> None:
    reports = await yielded_while_mapping(tmp_path, config, busy=True, batch=128)
    assert [r.mapped for r in reports] == [128, 128, 44]
    assert reports[0].yielded_secs == 0  # nothing before the first round
    assert all(0 < r.yielded_secs <= MAX_YIELD_SECS for r in reports[1:])


@pytest.mark.parametrize(
    ("busy", "options", "old"),
    [
        (False, {}, False),
        (True, {"yield_to_intake": False}, False),
        (True, {"catch_up_after_secs": 10.0}, True),
    ],
    ids=["intake-idle", "switched-off", "catching-up"],
)
async def test_no_pause_when_intake_is_idle_when_off_or_while_catching_up(
    tmp_path: Path, config: Config, busy: bool, options: dict[str, object], old: bool
) -> None:
    received_at = time.time() - 60 if old else None
    reports = await yielded_while_mapping(
        tmp_path, config, busy=busy, received_at=received_at, batch=128, **options
    )
    assert sum(r.mapped for r in reports) == KEPT
    assert [r.yielded_secs for r in reports] == [0.0] * len(reports)


MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


async def test_intake_counts_the_webhooks_it_is_handling(
    aiohttp_client: MakeClient,
    fake_segment: FakeSegment,
    config_factory: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real app: a webhook held at its turn (the pace) is in flight until it is answered;
    the mapping's wake-up says busy from :data:`BUSY_IN_FLIGHT` on."""
    monkeypatch.setattr(pacing, "MAX_TURNS", 0)
    monkeypatch.setattr(pacing, "MAX_WAIT_SECS", 30.0)  # the turn comes from the test, not time
    client = await aiohttp_client(build_app(config_factory(fake_segment.url), mapping="none"))
    runtime = client.app[RUNTIME]
    wakes: list[bool] = []
    runtime.mapping_waker = wakes.append
    runtime.pacer.reported(0, catching_up=True)
    held = [
        asyncio.create_task(
            client.post(
                "/webhooks/synap/attempt.completed",
                json=fixture_body("attempt.completed"),
                headers=basic_auth(),
            )
        )
        for _ in range(BUSY_IN_FLIGHT)
    ]
    await eventually(lambda: runtime.pacer.waiting == BUSY_IN_FLIGHT)
    assert runtime.webhooks_in_flight == BUSY_IN_FLIGHT
    runtime.pacer.reported(BUSY_IN_FLIGHT, catching_up=False)
    assert [r.status for r in await asyncio.gather(*held)] == [200] * BUSY_IN_FLIGHT
    assert runtime.webhooks_in_flight == 0
    assert wakes[0] is True  # kept while all of them were in flight
    assert wakes[-1] is False  # the last one alone


@pytest.mark.process
@pytest.mark.timeout(60)
@pytest.mark.parametrize("busy", [True, False])
async def test_the_mapping_process_hears_a_busy_intake_through_its_wake_up(
    tmp_path: Path, fake_segment: FakeSegment, busy: bool
) -> None:
    """The supervisor and a real child: webhooks kept while it is stopped, then wake-ups that
    say whether intake is busy; the child's reports say it paused after its full takes only
    if so."""
    store = SQLiteStore(tmp_path / "bridge.db")
    await store.open()
    reports: list[Report] = []
    supervisor = MapperSupervisor(
        str(bridge_config(tmp_path, fake_segment)),
        on_report=reports.append,
        on_restart=lambda: None,
    )
    try:
        await supervisor.start(ready_within=20)
        assert supervisor.pid is not None
        os.kill(supervisor.pid, signal.SIGSTOP)  # it sees all of them at once: full takes
        await asyncio.gather(*(keep(store, 1, time.time()) for _ in range(KEPT)))
        os.kill(supervisor.pid, signal.SIGCONT)

        async def mapped_all() -> bool:  # intake goes on keeping (and waking) meanwhile
            supervisor.wake(intake_busy=busy)
            return sum(r.mapped for r in reports) == KEPT

        await polled(mapped_all, within=30)
    finally:
        await supervisor.stop(10)
        await store.close()
    assert (sum(r.yielded_secs for r in reports) > 0) is busy
