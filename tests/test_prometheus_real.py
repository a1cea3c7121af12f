"""What the bridge says, read by a real Prometheus during real faults.

Real ``serve`` processes (four on SQLite, two replicas on one PostgreSQL), real fake Segments,
and Debian's ``prometheus`` scraping them every second with ``deploy/prometheus/alerts.yml``
loaded (durations scaled minutes -> seconds, :mod:`tests.promserver`). Each fault runs at the
same time as the others, and each alert is asserted through Prometheus's own API to fire during
its fault and to resolve after it:

* Segment answers 500 -> ``SynapBridgeDestinationPaused`` and ``SynapBridgeBacklogOld``;
* Segment refuses the write key (401) -> ``SynapBridgeWriteKeyRefused``;
* Segment hangs (no answer) -> ``SynapBridgeDestinationPaused``;
* the disk under ``storage.min_free_bytes`` -> ``SynapBridgeIntakeRefusing``, ``...NotReady``;
* PostgreSQL down -> ``SynapBridgeNotReady`` on both replicas;
* a webhook nobody maps -> ``SynapBridgeDeadLettersGrowing``; a bridge killed ->
  ``SynapBridgeDown``.

A mapping process stopped (SIGSTOP) while webhooks are kept: SynapBridgeMappingLag.

Then every panel query of deploy/grafana/synap-bridge.json runs against that Prometheus, for
one bridge and for the two replicas: each answers, with numbers, and the shared queue's backlog
is reported once (max), not once per replica.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import PASSWORD, USER, basic_auth, fixture_body, polled
from tests.fakes import FakeSegment
from tests.pgcluster import Cluster
from tests.process import BridgeProcess, write_config
from tests.promserver import Prometheus

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "synap-bridge.json"
#: Bound of one alert's fire or resolve: its scaled ``for:`` and window plus scrape and
#: evaluation delays, with room for a loaded machine.
ALERT_WITHIN = 45.0
GIB = 1024**3
PG_BACKLOG = 3  # webhooks kept on the shared queue (dry-run replicas): 2 messages each


def bridge_config(tmp_path: Path, name: str, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "storage": {"path": str(tmp_path / f"{name}.db"), "min_free_bytes": 0},
        "logging": {"format": "json"},
        "delivery": {
            "batch": {"timeout_secs": 0.05},
            "retry": {"initial_backoff_secs": 2, "max_backoff_secs": 2},
        },
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return write_config(tmp_path / f"{name}.yaml", data)


def live(fake: FakeSegment, **segment: Any) -> dict[str, Any]:
    return {"write_key": fake.write_key, "endpoint": fake.url, **segment}


async def post(bridge: BridgeProcess, n: int, code: str = "user.registered") -> int:
    body = fixture_body(code) if code != "no.such" else {}
    body["objectId"] = f"usr_{bridge.port}_{n}"
    url = f"{bridge.url}/webhooks/synap/{code}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=basic_auth()) as response,
    ):
        return response.status


@asynccontextmanager
async def started(bridge: BridgeProcess) -> AsyncIterator[BridgeProcess]:
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.close()


def instance(bridge: BridgeProcess) -> str:
    return f"127.0.0.1:{bridge.port}"


@pytest.mark.timeout(150)
async def test_alerts_fire_and_resolve_and_every_panel_answers(tmp_path: Path) -> None:
    cluster = await asyncio.to_thread(Cluster().start)
    async with AsyncExitStack() as stack:
        stack.callback(cluster.stop)
        outage_fake = await stack.enter_async_context(FakeSegment())
        refused_fake = await stack.enter_async_context(FakeSegment())
        hang_fake = await stack.enter_async_context(FakeSegment())
        free = shutil.disk_usage(tmp_path).free
        # The ballast (10 GiB, allocated, never written) takes free space 5 GiB under the
        # threshold; other processes writing on the same disk meanwhile stay within the slack.
        margin = 5 * GIB
        database = await asyncio.to_thread(cluster.new_database)
        configs = {
            "outage": bridge_config(tmp_path, "outage", segment=live(outage_fake)),
            "refused": bridge_config(tmp_path, "refused", segment=live(refused_fake)),
            "hang": bridge_config(
                tmp_path,
                "hang",
                segment=live(hang_fake, timeout_secs=0.5, total_timeout_secs=1.0),
            ),
            "disk": bridge_config(tmp_path, "disk", storage={"min_free_bytes": free - margin}),
            # (margin: disk_full's ballast is twice as large)
            "mapping": bridge_config(tmp_path, "mapping"),
            "replica1": bridge_config(tmp_path, "replica1", storage={"url": database}),
            "replica2": bridge_config(tmp_path, "replica2", storage={"url": database}),
        }
        procs = {name: BridgeProcess(path) for name, path in configs.items()}
        await asyncio.gather(*(stack.enter_async_context(started(p)) for p in procs.values()))
        prometheus = Prometheus([instance(p) for p in procs.values()])
        stack.push_async_callback(prometheus.stop)
        await prometheus.start()
        await prometheus.wait_scraped()

        for n in range(PG_BACKLOG):  # the shared queue: kept, since the replicas are dry-run
            assert await post(procs["replica1"], n) == 200

        await asyncio.gather(
            segment_outage(prometheus, procs["outage"], outage_fake),
            refused_key(prometheus, procs["refused"], refused_fake),
            segment_hangs(prometheus, procs["hang"], hang_fake),
            disk_full(prometheus, procs["disk"], tmp_path, 2 * margin),
            postgres_down(prometheus, procs["replica1"], procs["replica2"], cluster),
            mapping_stopped(prometheus, procs["mapping"]),
        )

        await panels_answer(prometheus, procs["outage"], procs["replica1"], procs["replica2"])

        gone = instance(procs["disk"])
        await procs["disk"].kill()
        await prometheus.wait_firing("SynapBridgeDown", ALERT_WITHIN, instance=gone)


async def segment_outage(prom: Prometheus, bridge: BridgeProcess, fake: FakeSegment) -> None:
    where = {"instance": instance(bridge)}
    fake.fail(500, times=10**6)
    assert await post(bridge, 1) == 200
    assert await post(bridge, 2, "no.such") == 200  # kept, then a dead letter, as well
    await prom.wait_firing("SynapBridgeDeadLettersGrowing", ALERT_WITHIN, **where)
    await prom.wait_firing(
        "SynapBridgeDestinationPaused", ALERT_WITHIN, destination="default", **where
    )
    await prom.wait_firing("SynapBridgeBacklogOld", ALERT_WITHIN, **where)
    fake.failures.clear()  # Segment is back
    await prom.wait_resolved("SynapBridgeDestinationPaused", ALERT_WITHIN, **where)
    await prom.wait_resolved("SynapBridgeBacklogOld", ALERT_WITHIN, **where)
    await prom.wait_resolved("SynapBridgeDeadLettersGrowing", ALERT_WITHIN, **where)


async def refused_key(prom: Prometheus, bridge: BridgeProcess, fake: FakeSegment) -> None:
    where = {"instance": instance(bridge), "destination": "default"}
    fake.fail(401, times=10**6)
    assert await post(bridge, 1) == 200
    alert = await prom.wait_firing("SynapBridgeWriteKeyRefused", ALERT_WITHIN, **where)
    assert alert["labels"]["severity"] == "critical"
    fake.failures.clear()  # the key is right again (Segment-side, or a reload)
    await prom.wait_resolved("SynapBridgeWriteKeyRefused", ALERT_WITHIN, **where)


async def segment_hangs(prom: Prometheus, bridge: BridgeProcess, fake: FakeSegment) -> None:
    where = {"instance": instance(bridge), "destination": "default"}
    fake.hold()
    assert await post(bridge, 1) == 200
    await prom.wait_firing("SynapBridgeDestinationPaused", ALERT_WITHIN, **where)
    fake.release()
    await prom.wait_resolved("SynapBridgeDestinationPaused", ALERT_WITHIN, **where)
    assert fake.unique == 2  # delivered once Segment answers again


async def disk_full(prom: Prometheus, bridge: BridgeProcess, folder: Path, size: int) -> None:
    where = {"instance": instance(bridge)}
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    try:
        await prom.wait_firing("SynapBridgeIntakeRefusing", ALERT_WITHIN, **where)
        await prom.wait_firing("SynapBridgeNotReady", ALERT_WITHIN, **where)
        assert await post(bridge, 1) == 503
    finally:
        ballast.unlink()
    await prom.wait_resolved("SynapBridgeNotReady", ALERT_WITHIN, **where)
    await prom.wait_resolved("SynapBridgeIntakeRefusing", ALERT_WITHIN, **where)


async def mapping_stopped(prom: Prometheus, bridge: BridgeProcess) -> None:
    """Intake keeps answering 200 while the mapping process is stopped; the lag shows it."""
    where = {"instance": instance(bridge)}
    mapper = bridge.events("stage_started")[-1]["pid"]
    os.kill(mapper, signal.SIGSTOP)
    try:
        assert await post(bridge, 1) == 200
        await prom.wait_firing("SynapBridgeMappingLag", ALERT_WITHIN, **where)
    finally:
        os.kill(mapper, signal.SIGCONT)
    await prom.wait_resolved("SynapBridgeMappingLag", ALERT_WITHIN, **where)


async def postgres_down(
    prom: Prometheus, one: BridgeProcess, two: BridgeProcess, cluster: Cluster
) -> None:
    await asyncio.to_thread(cluster.pg_ctl, "stop", "-m", "fast", "-w", "-t", "30")
    try:
        for bridge in (one, two):
            await prom.wait_firing("SynapBridgeNotReady", ALERT_WITHIN, instance=instance(bridge))
    finally:
        await asyncio.to_thread(cluster.ensure_running)
    for bridge in (one, two):
        await prom.wait_resolved("SynapBridgeNotReady", ALERT_WITHIN, instance=instance(bridge))


def panel_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []
    for panel in board["panels"]:
        for each in [panel, *panel.get("panels", [])]:
            found += [(each["title"], t["expr"]) for t in each.get("targets", []) if "expr" in t]
    return found


def grafana(expr: str, instances: str) -> str:
    """What Grafana sends for the query: its variables filled in (one scrape a second, so a
    20 s rate interval holds many samples)."""
    return (
        expr.replace("$__rate_interval", "20s")
        .replace("$__range", "5m")
        .replace("$instance", instances)
    )


async def panels_answer(
    prom: Prometheus, single: BridgeProcess, one: BridgeProcess, two: BridgeProcess
) -> None:
    for n in range(10, 14):  # fresh traffic for the rate panels
        assert await post(single, n) == 200
    replicas = f"{instance(one)}|{instance(two)}"

    async def backlog_seen() -> bool:
        got = await prom.query(f'synap_bridge_pending_messages{{instance=~"{replicas}"}}')
        return len(got) == 2 and all(float(s["value"][1]) == 2 * PG_BACKLOG for s in got)

    await polled(backlog_seen, within=20)

    async def delivered_rate_seen() -> bool:
        got = await prom.query(
            f'rate(synap_bridge_messages_delivered_total{{instance="{instance(single)}"}}[20s]) > 0'
        )
        return bool(got)

    await polled(delivered_rate_seen, within=20)
    empty: list[str] = []
    for title, expr in panel_queries():
        for instances in (instance(single), replicas):
            result = await prom.query(grafana(expr, instances))
            if not result:
                empty.append(f"{title}: {expr} ({instances})")
                continue
            for series in result:
                value = float(series["value"][1])
                if instances == instance(single) or "histogram_quantile" not in expr:
                    assert not math.isnan(value), (title, expr, instances)
    # The replicas are dry-run and take no traffic after the backlog: what may be empty there
    # is what needs deliveries, uploads or requests in the last 20 s; the single bridge has it all.
    assert not [e for e in empty if f"({instance(single)})" in e], empty
    for title, want in (("Ready", 1.0), ("Delivery task", 1.0), ("Intake", 0.0)):
        (expr,) = [e for t, e in panel_queries() if t == title]
        got = await prom.query(grafana(expr, replicas))
        assert sorted(float(s["value"][1]) for s in got) == [want, want], title
    backlog = [e for t, e in panel_queries() if t.startswith("Backlog and") and "pending" in e]
    (series,) = await prom.query(grafana(backlog[0], replicas))
    assert float(series["value"][1]) == 2 * PG_BACKLOG  # the shared queue once, never summed
