"""Several real ``serve`` processes on one PostgreSQL database (the throwaway test cluster).

* Two live replicas under concurrent load: every acknowledged webhook is delivered and no
  message reaches Segment twice (SKIP LOCKED claims are disjoint; nothing is delivered by two
  replicas while both hold it).
* Three replicas, SIGKILLed at random moments and restarted: every acknowledged webhook is
  delivered; the duplicates (re-sent after a dead replica's lease expired, same messageId) are
  counted and bounded by what the killed replicas could have held.
* PostgreSQL stopped, then restarted under load: while it is down intake answers 503 with
  Retry-After and /readyz fails; never a 2xx for anything not committed, nothing acknowledged
  is lost, and intake and delivery resume by themselves, without restarting the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import (
    PASSWORD,
    PROCESS_POLL_SECS,
    USER,
    WRITE_KEY,
    attempt_completed,
    basic_auth,
    eventually,
    polled,
)
from tests.fakes import FakeSegment
from tests.pgcluster import Cluster, with_password
from tests.process import BridgeProcess, write_config

# Longer than the 60 s default: replicas are started, killed and restarted, and the tests wait up
# to 90 s of their own for a dead replica's leases to expire and everything to be delivered.
pytestmark = pytest.mark.timeout(300)

CONCURRENCY = 12
BATCH = 50  # delivery.batch.max_events: bounds what one replica holds
DELIVERY_CONCURRENCY = 2
LEASE_SECS = 4.0
TIMEOUT = aiohttp.ClientTimeout(total=10)
SECRET = "pg-password-never-logged"


def replica_config(tmp_path: Path, name: str, url: str, fake: FakeSegment) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        {
            "server": {"port": 0},
            "auth": {"username": USER, "password": PASSWORD},
            "segment": {"write_key": WRITE_KEY, "endpoint": fake.url},
            "storage": {
                "url": with_password(url, SECRET),
                "lease_secs": LEASE_SECS,
                "pool_size": 4,
            },
            "delivery": {
                "batch": {"timeout_secs": 0.05, "max_events": BATCH},
                "concurrency": DELIVERY_CONCURRENCY,
                "retry": {"initial_backoff_secs": 0.05, "max_backoff_secs": 0.5},
            },
            "logging": {"format": "json"},
        },
    )


class Load:
    """Posts numbered webhooks to whichever replicas are up, recording every answer."""

    def __init__(self, replicas: list[BridgeProcess]) -> None:
        self.replicas = replicas
        self.acked: set[int] = set()
        self.statuses: Counter[int] = Counter()
        self.retry_after_missing = 0
        self.next = 0

    async def run(self, count: int, stop: asyncio.Event | None = None) -> None:
        numbers = list(range(self.next, self.next + count))
        self.next += count
        auth = basic_auth()

        async def worker(session: aiohttp.ClientSession) -> None:
            while numbers and not (stop and stop.is_set()):
                n = numbers.pop(0)
                live = [r for r in self.replicas if r.port is not None]
                if not live:
                    await asyncio.sleep(PROCESS_POLL_SECS)  # no replica up: ask again soon
                    numbers.append(n)
                    continue
                target = random.choice(live)
                try:
                    async with session.post(
                        f"{target.url}/webhooks/synap/attempt.completed",
                        json=attempt_completed(n),
                        headers=auth,
                    ) as response:
                        self.statuses[response.status] += 1
                        if response.status == 200:
                            self.acked.add(n)
                        elif response.status == 503 and "Retry-After" not in response.headers:
                            self.retry_after_missing += 1
                except (aiohttp.ClientError, TimeoutError):
                    self.statuses[0] += 1  # the replica died under this request

        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))


async def delivered_all(fake: FakeSegment, acked: set[int], within: float = 60.0) -> None:
    wanted = {f"user-{n}" for n in acked}
    await fake.wait_until(lambda: wanted <= {m["userId"] for m in fake.messages}, within)


def duplicates(fake: FakeSegment) -> int:
    return sum(times - 1 for times in fake.ids.values())


def duplicate_bound(replicas: list[BridgeProcess], deaths: int) -> tuple[int, dict[str, int]]:
    """docs/reliability.md's bound, from what happened: every message sent twice was in a batch
    that a dying replica had in flight (at most ``concurrency`` batches each), or whose ack
    failed for good after Segment took it, or whose answer was lost (a transient outcome after
    which Segment may have it): ``max_events x (concurrency x deaths + failed acks + lost
    answers)``. The counts come from the replicas' own log lines (a killed replica's included):
    ``delivery_batch_error`` for "mark delivered", and ``batch`` lines with outcome transient."""
    failed_acks = lost_answers = 0
    for replica in replicas:
        for raw in replica.raw:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            if line.get("event") == "delivery_batch_error" and "mark delivered" in raw:
                failed_acks += 1
            elif line.get("event") == "batch" and line.get("outcome") == "transient":
                lost_answers += 1
    counted = {"deaths": deaths, "failed_acks": failed_acks, "lost_answers": lost_answers}
    return BATCH * (DELIVERY_CONCURRENCY * deaths + failed_acks + lost_answers), counted


async def start_all(replicas: list[BridgeProcess]) -> None:
    await asyncio.gather(*(replica.start() for replica in replicas))


async def close_all(replicas: list[BridgeProcess]) -> None:
    await asyncio.gather(*(replica.close() for replica in replicas))


async def test_two_live_replicas_deliver_each_message_once(
    tmp_path: Path, postgres: Cluster, fake_segment: FakeSegment
) -> None:
    url = postgres.new_database()
    replicas = [
        BridgeProcess(replica_config(tmp_path, f"r{i}", url, fake_segment)) for i in range(2)
    ]
    try:
        await start_all(replicas)
        load = Load(replicas)
        await load.run(600)
        assert load.acked == set(range(600)), load.statuses
        await delivered_all(fake_segment, load.acked)
        assert duplicates(fake_segment) == 0
        codes = await asyncio.gather(*(replica.terminate() for replica in replicas))
        assert codes == [0, 0]
    finally:
        await close_all(replicas)


async def test_sigkilled_replicas_lose_nothing_acknowledged(
    tmp_path: Path, postgres: Cluster, fake_segment: FakeSegment
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    url = postgres.new_database()
    replicas = [
        BridgeProcess(replica_config(tmp_path, f"r{i}", url, fake_segment)) for i in range(3)
    ]
    load = Load(replicas)
    kills = 0
    try:
        await start_all(replicas)
        for _ in range(4):
            posting = asyncio.create_task(load.run(250))
            await asyncio.sleep(rng.uniform(0.05, 0.6))  # a random moment under load
            victim = rng.choice(replicas)
            await victim.kill()
            kills += 1
            await posting
            await victim.start()
        await load.run(100)  # after the last restart: every replica takes load again
        await delivered_all(fake_segment, load.acked, within=90)
        codes = await asyncio.gather(*(replica.terminate() for replica in replicas))
        assert codes == [0, 0, 0]
    finally:
        await close_all(replicas)
    dupes = duplicates(fake_segment)
    bound, counted = duplicate_bound(replicas, kills)
    report = (
        f"seed={seed} kills={kills} acknowledged={len(load.acked)} "
        f"delivered={fake_segment.unique} duplicates={dupes} bound={bound} {counted} "
        f"answers={dict(load.statuses)}"
    )
    print(report)
    assert len(load.acked) >= 500, report
    # The documented bound, as a formula of what happened (docs/reliability.md).
    assert dupes <= bound, report
    assert set(load.statuses) <= {0, 200, 503}, report


async def readyz(session: aiohttp.ClientSession, replica: BridgeProcess) -> int:
    async with session.get(f"{replica.url}/readyz") as response:
        return response.status


async def test_postgres_down_and_restarted_under_load(
    tmp_path: Path, postgres: Cluster, fake_segment: FakeSegment
) -> None:
    url = postgres.new_database()
    replicas = [
        BridgeProcess(replica_config(tmp_path, f"r{i}", url, fake_segment)) for i in range(2)
    ]
    load = Load(replicas)
    try:
        await start_all(replicas)
        await load.run(100)
        assert load.statuses[200] == 100
        postgres.pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
        try:
            down = Load(replicas)
            await down.run(20)
            assert down.statuses == Counter({503: 20})
            assert down.retry_after_missing == 0
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                assert [await readyz(session, r) for r in replicas] == [503, 503]
                # Anyone may ask /readyz: it says what, never the connection error's text.
                for replica in replicas:
                    async with session.get(f"{replica.url}/readyz") as response:
                        said = await response.json()
                    assert "storage unavailable" in said["problems"], said
                    assert not [p for p in said["problems"] if "127.0.0.1" in p or "connect" in p]
        finally:
            postgres.ensure_running()
        # Back by itself: the pools reconnect, no restart of the bridge.
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

            async def both_ready() -> bool:
                return [await readyz(session, r) for r in replicas] == [200, 200]

            await polled(both_ready, 30)
        # Now a fast restart in the middle of a load: only 200s and 503s, nothing acked lost.
        stop = asyncio.Event()
        posting = asyncio.create_task(load.run(1500, stop))
        await fake_segment.wait_until(lambda: fake_segment.unique >= 150, within=30)
        await asyncio.to_thread(postgres.restart)
        await_more = load.statuses[200]
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: load.statuses[200] >= await_more + 100, within=30)
        stop.set()
        await posting
        # In one clean-clone run of four (2026-12-06) no webhook was kept for 30 s after the
        # restart (all 503): the replicas' last lines say why, should it happen again.
        said = [line for r in replicas for line in r.raw[-15:]]
        assert load.statuses[200] >= await_more + 100, (dict(load.statuses), said)
        errors = [
            line
            for r in replicas
            for line in r.raw
            if "unhandled_error" in line or "delivery_loop_error" in line
        ]
        assert not errors, errors[:1]  # every storage failure is StorageUnavailableError
        assert set(load.statuses) <= {200, 503}, (dict(load.statuses), errors[:1])
        assert load.retry_after_missing == 0
        await delivered_all(fake_segment, load.acked)
        codes = await asyncio.gather(*(replica.terminate() for replica in replicas))
        assert codes == [0, 0]
        # No replica died: only acks that failed for good and lost answers may send twice.
        bound, counted = duplicate_bound(replicas, deaths=0)
        print(f"duplicates={duplicates(fake_segment)} bound={bound} {counted}")
        assert duplicates(fake_segment) <= bound, counted
        logged = "\n".join(line for replica in replicas for line in replica.raw)
        assert "storage_unavailable" in logged  # the outage was logged...
        assert SECRET not in logged  # ...without the password
    finally:
        postgres.ensure_running()
        await close_all(replicas)
