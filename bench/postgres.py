"""PostgreSQL: intake at 64 connections and the drain of a backlog, with one and two ``serve``
processes sharing one database, and the same two measurements on SQLite in the same run (the
machine's load changes between runs; within one run the backends are compared fairly).

A throwaway cluster (tests/pgcluster.py) runs on this machine with production durability
(``fsync``, ``synchronous_commit`` and ``full_page_writes`` on) and otherwise default settings.
With two replicas, two wrk processes drive 32 connections each, one per replica (a load
balancer's job); their rates add up and the p99 reported is the larger of the two. The backlog
is built through ``PostgresStore.enqueue`` (the group commit intake uses) before the clock starts.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench import backlog, drain, procs, profile, wrk
from bench.intake import PATH
from bench.procs import OUT
from bridge.store.postgres.store import PostgresStore
from tests.pgcluster import Cluster

CONNECTIONS = 64


@dataclass
class IntakePoint:
    backend: str
    replicas: int
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    acknowledged: int
    stored: int
    durable_rate: float = 0.0  # the minimal durable receiver on the same store, as many processes
    durable_p99_ms: float = 0.0


@dataclass
class DrainPoint:
    backend: str
    replicas: int
    count: int
    build_secs: float
    secs: float  # from the first process start until the fake counted every message
    first_secs: float  # from the first arrival until the last
    bridge_cpu_secs: float  # all replicas together
    postgres_cpu_secs: float

    @property
    def rate(self) -> float:
        return self.count / self.secs


@dataclass
class PostgresResult:
    intake: list[IntakePoint] = field(default_factory=list)
    drain: list[DrainPoint] = field(default_factory=list)
    server_version: str = ""
    profile: profile.Profile | None = None


SQLITE = "sqlite"  # in place of a URL: the same measurement on SQLite, in the same run


def bridge_settings(url: str, fake_url: str) -> dict[str, object]:
    if url == SQLITE:
        return procs.bridge_config(OUT / "pg-beside.db", procs.free_port(), fake_url)
    return procs.bridge_config(OUT / "unused.db", procs.free_port(), fake_url, storage={"url": url})


def _fresh_sqlite() -> str:
    for stale in OUT.glob("pg-beside.db*"):
        stale.unlink()
    return SQLITE


def server_cpu(cluster: Cluster) -> float:
    """CPU seconds used so far by the cluster's server processes (the postmaster and its
    children, from /proc), so the report can say where the machine's time went."""
    root = int((cluster.data / "postmaster.pid").read_text(encoding="ascii").split()[0])
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(entry.name) == root or int(fields[1]) == root:
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def drive(servers: list[procs.Proc], seconds: float, tag: str) -> tuple[list[wrk.WrkResult], int]:
    """wrk against each server at once, CONNECTIONS split between them (a load balancer's job):
    the measured runs, and the 2xx answers of warm-up and measured runs together."""
    per = CONNECTIONS // len(servers)
    auth = procs.basic_auth()
    with ThreadPoolExecutor(len(servers)) as pool:
        warm = list(
            pool.map(lambda s: wrk.run(s.url + PATH, per, 2.0, f"{tag}w{s.name}", auth), servers)
        )
        runs = list(
            pool.map(lambda s: wrk.run(s.url + PATH, per, seconds, f"{tag}{s.name}", auth), servers)
        )
    return runs, sum(r.acknowledged for r in runs + warm)


def settled(cluster: Cluster) -> None:
    """Start a measured run on a fresh checkpoint cycle: a run writes ~1 GB of WAL, so without
    this the point measured after another paid for that one's checkpoint (and for the full
    page images that follow a checkpoint), and the second of two points always looked worse."""
    cluster.psql("postgres", "CHECKPOINT")


def _durable(cluster: Cluster, processes: int, seconds: float, sqlite: bool) -> wrk.WrkResult:
    """The minimal durable receiver (bench/durable.py) on the same store, as many processes."""
    settled(cluster)
    if sqlite:
        servers = [procs.durable_app("durable-pg-beside")]
    else:
        url = cluster.new_database()
        servers = [procs.durable_app(f"durable-pg{processes}-{n}", url) for n in range(processes)]
    try:
        runs, _ = drive(servers, seconds, f"pgd{processes}")
    finally:
        for server in servers:
            server.stop()
    return _combined(runs)


def _combined(runs: list[wrk.WrkResult]) -> wrk.WrkResult:
    """Runs side by side as one: requests added (over the longest run), the worst latencies."""
    return wrk.WrkResult(
        connections=sum(r.connections for r in runs),
        requests=sum(r.requests for r in runs),
        seconds=max(r.seconds for r in runs),
        errors=sum(r.errors for r in runs),
        status_errors=sum(r.status_errors for r in runs),
        p50_ms=max(r.p50_ms for r in runs),
        p99_ms=max(r.p99_ms for r in runs),
        max_ms=max(r.max_ms for r in runs),
    )


def _intake(cluster: Cluster, replicas: int, seconds: float, sqlite: bool = False) -> IntakePoint:
    settled(cluster)
    url = _fresh_sqlite() if sqlite else cluster.new_database()
    with procs.running(procs.fake_segment(f"fake-pg-intake{replicas}")) as fake:
        bridges = [
            procs.bridge(f"bridge-pg-intake{replicas}-{n}", bridge_settings(url, fake.url))
            for n in range(replicas)
        ]
        try:
            runs, acknowledged = drive(bridges, seconds, f"pg{replicas}")
        finally:
            for bridge in bridges:
                bridge.stop()
    if sqlite:
        with sqlite3.connect(OUT / "pg-beside.db") as conn:
            stored = int(conn.execute("SELECT count(*) FROM webhooks").fetchone()[0])
    else:
        stored = int(cluster.psql(url.rsplit("/", 1)[1], "SELECT count(*) FROM webhooks"))
    durable = _durable(cluster, replicas, seconds, sqlite)
    return IntakePoint(
        backend="SQLite" if sqlite else "PostgreSQL",
        replicas=replicas,
        rate=sum(r.rate for r in runs),
        p50_ms=max(r.p50_ms for r in runs),
        p99_ms=max(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        acknowledged=acknowledged,
        stored=stored,
        durable_rate=durable.rate,
        durable_p99_ms=durable.p99_ms,
    )


async def _build(url: str, count: int, tag: str) -> None:
    store = PostgresStore(url, pool_size=10)
    await store.open()
    try:
        pending: list[asyncio.Future[object]] = []
        for webhook, group in backlog._webhooks(count, 1, tag, time.time()):
            pending.append(asyncio.ensure_future(store.enqueue(webhook, group)))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await store.close()


def _drain(
    cluster: Cluster,
    replicas: int,
    count: int,
    profile_out: Path | None = None,
    sqlite: bool = False,
) -> tuple[DrainPoint, profile.Profile | None]:
    if sqlite:
        url = _fresh_sqlite()
        build_secs = backlog.build(OUT / "pg-beside.db", count, "pgdrain-sqlite")
    else:
        url = cluster.new_database()
        started = time.perf_counter()
        asyncio.run(_build(url, count, f"pgdrain{replicas}"))
        build_secs = time.perf_counter() - started
        cluster.psql(url.rsplit("/", 1)[1], "VACUUM ANALYZE")
    settled(cluster)
    summary = None
    with procs.running(procs.fake_segment(f"fake-pg-drain{replicas}")) as fake:
        pg_cpu = server_cpu(cluster)
        started = time.perf_counter()
        bridges = [
            procs.bridge(f"bridge-pg-drain{replicas}-{n}", bridge_settings(url, fake.url))
            for n in range(replicas)
        ]
        sampler = None
        try:
            if profile_out is not None:
                sampler = profile.start(bridges[0].pid, 5, profile_out)
            first, now = drain.wait_delivered(fake, count, started, "postgres drain")
            bridge_cpu = sum(bridge.cpu_seconds() for bridge in bridges)
            pg_cpu = server_cpu(cluster) - pg_cpu
        finally:
            if sampler is not None and sampler.wait(60) == 0 and profile_out is not None:
                summary = profile.summarise(profile_out, 5) if profile_out.exists() else None
            for bridge in bridges:
                bridge.stop()
    backend = "SQLite" if sqlite else "PostgreSQL"
    point = DrainPoint(
        backend, replicas, count, build_secs, now - started, now - first, bridge_cpu, pg_cpu
    )
    return point, summary


def run(count: int, seconds: float, with_profile: bool) -> PostgresResult:
    cluster = Cluster().start(durable=True)
    try:
        result = PostgresResult(server_version=cluster.psql("postgres", "SHOW server_version"))
        result.intake.append(_intake(cluster, 1, seconds, sqlite=True))
        for replicas in (1, 2):
            result.intake.append(_intake(cluster, replicas, seconds))
        point, _ = _drain(cluster, 1, count, sqlite=True)
        result.drain.append(point)
        for replicas in (1, 2):
            out = OUT / "pg-drain.profile.txt" if with_profile and replicas == 1 else None
            point, summary = _drain(cluster, replicas, count, out)
            result.drain.append(point)
            result.profile = result.profile or summary
        return result
    finally:
        cluster.stop()
