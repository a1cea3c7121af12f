"""``serve`` as a supervisor of its stages, with real processes: kill each, poison the mapper,
let a backlog of unmapped webhooks drain while intake goes on.

The mapper is made to crash by a ``sitecustomize`` module on the serve's ``PYTHONPATH`` (fault
injection in the real child process, the way an operator's broken mapping would crash it): a
body containing ``POISON-DIE`` makes the process exit at once, ``POISON-RAISE`` makes the
mapping raise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bridge.mapper import child
from bridge.mapper.stage import Report
from bridge.mapper.supervisor import MapperSupervisor
from bridge.store import DeadLetter, DeadLetterFilter, Webhook
from bridge.store.sqlite.store import SQLiteStore
from bridge.systemd import watchdog_loop
from tests.conftest import PASSWORD, USER, WRITE_KEY, attempt_completed, basic_auth, polled
from tests.fakes import FakeSegment
from tests.process import BridgeProcess, write_config

POISON = """
import os
from bridge.mapping import intake

_judge = intake.judge


def judge(code, raw, *args, **kwargs):
    if b"POISON-DIE" in raw:
        os._exit(70)
    if b"POISON-RAISE" in raw:
        raise RuntimeError("the mapping broke on this body")
    return _judge(code, raw, *args, **kwargs)


intake.judge = judge
"""


def bridge_config(tmp_path: Path, fake: FakeSegment, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "segment": {"write_key": WRITE_KEY, "endpoint": fake.url},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "delivery": {"batch": {"timeout_secs": 0.05}},
        "logging": {"format": "json"},
        **extra,
    }
    return write_config(tmp_path / "config.yaml", data)


async def post_many(
    url: str, bodies: list[dict[str, Any]], concurrency: int = 16
) -> tuple[set[str], list[float]]:
    """Post every body; the user ids answered 200 and each answer's latency."""
    acked: set[str] = set()
    latencies: list[float] = []
    queue = list(bodies)
    timeout = aiohttp.ClientTimeout(total=10)

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            body = queue.pop(0)
            started = time.monotonic()
            try:
                async with session.post(
                    f"{url}/webhooks/synap/attempt.completed", json=body, headers=basic_auth()
                ) as response:
                    if response.status == 200:
                        acked.add(body["user"]["id"])
                        latencies.append(time.monotonic() - started)
            except (aiohttp.ClientError, TimeoutError):
                pass

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return acked, latencies


async def delivered(fake: FakeSegment, users: set[str], within: float) -> None:
    async with asyncio.timeout(within):
        while not users <= {m["userId"] for m in fake.messages}:
            await fake.wait_for(fake.unique + 1)


def mapper_pids(bridge: BridgeProcess) -> list[int]:
    return [line["pid"] for line in bridge.events("stage_started")]


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text(encoding="ascii").strip()


async def _true(value: bool) -> bool:
    return value


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
async def test_mapper_killed_under_load_is_restarted_and_loses_nothing(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    bridge = BridgeProcess(bridge_config(tmp_path, fake_segment))
    try:
        await bridge.start()
        [first] = mapper_pids(bridge)
        bodies = [attempt_completed(n) for n in range(400)]
        posting = asyncio.create_task(post_many(bridge.url, bodies))
        async with asyncio.timeout(30):
            while len(fake_segment.messages) < 50:
                await fake_segment.wait_for(fake_segment.unique + 1)
        os.kill(first, signal.SIGKILL)
        acked, _ = await posting
        assert len(acked) == 400  # intake never depended on the mapper
        await delivered(fake_segment, acked, 60)
        died = bridge.events("stage_died")
        assert [line["exit_status"] for line in died] == [-signal.SIGKILL]
        assert len(mapper_pids(bridge)) == 2
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()


@pytest.mark.timeout(120)
async def test_serve_killed_takes_its_mapper_along(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    bridge = BridgeProcess(bridge_config(tmp_path, fake_segment))
    try:
        await bridge.start()
        [mapper] = mapper_pids(bridge)
        acked, _ = await post_many(bridge.url, [attempt_completed(n) for n in range(100)])
        await bridge.kill()
        await polled(lambda: _true(not alive(mapper)))
        await bridge.start()
        await delivered(fake_segment, acked, 60)
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()


@pytest.mark.timeout(180)
async def test_a_poison_webhook_is_dead_lettered_while_a_thousand_flow(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(POISON, encoding="utf-8")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    config = bridge_config(tmp_path, fake_segment, mapper={"max_tries": 2})
    bridge = BridgeProcess(config, env)
    try:
        await bridge.start()
        bodies = [attempt_completed(n) for n in range(1000)]
        bodies.insert(300, {**attempt_completed("die"), "note": "POISON-DIE"})
        bodies.insert(600, {**attempt_completed("raise"), "note": "POISON-RAISE"})
        acked, _ = await post_many(bridge.url, bodies)
        assert len(acked) == 1002
        await delivered(fake_segment, acked - {"user-die", "user-raise"}, 120)
        store = SQLiteStore(tmp_path / "bridge.db", create=False)
        await store.open()
        letters: list[DeadLetter] = []

        async def both_dead() -> bool:
            letters[:] = await store.dead_letters(DeadLetterFilter())
            return len(letters) == 2

        try:
            await polled(both_dead, within=60)
        finally:
            await store.close()
        assert {letter.reason for letter in letters} == {"mapping_failed"}
        details = {letter.detail.split("last error: ")[1] for letter in letters}
        assert details == {
            "RuntimeError: the mapping broke on this body",
            "the mapper process died",
        }
        assert bridge.events("stage_died")  # the die poison killed it; it came back
        assert {m["userId"] for m in fake_segment.messages} & {"user-die", "user-raise"} == set()
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()


BACKLOG = 100_000


@pytest.mark.timeout(400)
async def test_a_backlog_of_unmapped_webhooks_drains_without_blocking_intake(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    """100,000 webhooks kept while no mapper ran (as after a long mapper outage), then serve
    starts: intake answers at once while the backlog maps and delivers."""
    store = SQLiteStore(tmp_path / "bridge.db")
    await store.open()
    try:
        for start in range(0, BACKLOG, 2000):
            await asyncio.gather(
                *(
                    store.keep(
                        Webhook(
                            "attempt.completed",
                            None,
                            time.time(),
                            orjson.dumps(attempt_completed(f"b{n}")),
                        )
                    )
                    for n in range(start, start + 2000)
                )
            )
        assert (await store.stats(0)).unmapped == BACKLOG
    finally:
        await store.close()
    bridge = BridgeProcess(bridge_config(tmp_path, fake_segment))
    try:
        await bridge.start()
        acked, latencies = await post_many(
            bridge.url, [attempt_completed(n) for n in range(200)], concurrency=4
        )
        assert len(acked) == 200
        latencies.sort()
        assert latencies[int(len(latencies) * 0.99)] < 1.0, latencies[-5:]
        wanted = acked | {f"user-b{n}" for n in range(BACKLOG)}
        await delivered(fake_segment, wanted, 300)
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()


@pytest.mark.timeout(120)
async def test_sigterm_maps_what_was_kept_then_sends_it(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    """Webhooks kept while the mapper was stopped (SIGSTOP): at SIGTERM intake stops, the mapper
    maps them, delivery sends them, and only then does serve exit 0."""
    bridge = BridgeProcess(bridge_config(tmp_path, fake_segment))
    try:
        await bridge.start()
        [mapper] = mapper_pids(bridge)
        os.kill(mapper, signal.SIGSTOP)
        acked, _ = await post_many(bridge.url, [attempt_completed(n) for n in range(50)])
        assert len(acked) == 50
        assert fake_segment.messages == []  # kept, not mapped: nothing could be sent
        os.kill(mapper, signal.SIGCONT)
        assert await bridge.terminate() == 0
        assert acked <= {m["userId"] for m in fake_segment.messages}
        assert [line["event"] for line in bridge.lines][-1] == "stopped"
    finally:
        await bridge.close()


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_a_stuck_mapper_is_not_healthy_and_the_watchdog_stops(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    """The supervisor with a real child: SIGSTOP makes it silent, so ``healthy()`` turns False
    (serve's watchdog loop then stops pinging systemd); SIGCONT makes it healthy again. Its
    process is named ``bridge-mapper`` for ``ps`` and ``top`` and runs at ``mapper.nice`` more
    than its parent."""
    created = SQLiteStore(tmp_path / "bridge.db")  # serve creates it before its mapper starts
    await created.open()
    await created.close()
    reports: list[Report] = []
    supervisor = MapperSupervisor(
        str(bridge_config(tmp_path, fake_segment)),
        on_report=reports.append,
        on_restart=lambda: None,
        stale_secs=1.5,
        nice=3,
    )
    await supervisor.start(ready_within=20)
    try:
        pid = supervisor.pid
        assert pid is not None
        assert process_name(pid) == "bridge-mapper"
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(ours + 3, 19)
        assert supervisor.healthy()
        os.kill(pid, signal.SIGSTOP)
        await polled(lambda: _true(not supervisor.healthy()), within=10)
        os.kill(pid, signal.SIGCONT)
        await polled(lambda: _true(supervisor.healthy()), within=10)
        assert supervisor.restarts == 0
    finally:
        await supervisor.stop(10)


@pytest.mark.process
def test_the_mapping_process_hands_the_gil_to_its_writer_soon() -> None:
    """The mapping process maps on its event loop while its writer thread records the part
    before; at Python's default 5 ms switch interval each of the writer's statements waited
    for a turn (bridge.mapper.child.SWITCH_INTERVAL_SECS)."""
    code = (
        "import sys; from bridge.mapper import child; child._scheduling(0); "
        "print(sys.getswitchinterval(), child.SWITCH_INTERVAL_SECS)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=True)
    interval, wanted = (float(word) for word in done.stdout.split())
    assert interval == pytest.approx(wanted)
    assert wanted < 0.005  # below Python's default


@pytest.mark.process
def test_the_mapping_process_collects_cycles_less_often() -> None:
    """The mapping reads each body into a few hundred dicts and lists: the collector's young
    generation is larger there, and what start-up loaded is frozen, never walked again
    (bridge.mapper.child.GC_YOUNG_OBJECTS)."""
    code = (
        "import gc; from bridge.mapper import child; default = gc.get_threshold(); "
        "child._collector(); print(*default, *gc.get_threshold(), gc.get_freeze_count())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=True)
    young, older, oldest, tuned, tuned_older, tuned_oldest, frozen = map(int, done.stdout.split())
    assert tuned == child.GC_YOUNG_OBJECTS > young  # above Python's default
    assert (tuned_older, tuned_oldest) == (older, oldest)
    assert frozen > 1000  # the modules imported by then


async def test_the_watchdog_loop_does_not_ping_for_an_unhealthy_service() -> None:
    pings: list[bool] = []

    class Notifier:
        watchdog_interval = 0.01

        def watchdog(self) -> bool:
            pings.append(True)
            return True

    waits = 0

    async def fake_sleep(_: float) -> None:
        nonlocal waits
        waits += 1
        if waits == 5:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await watchdog_loop(Notifier(), sleep=fake_sleep, healthy=lambda: False)  # type: ignore[arg-type]
    assert pings == []
