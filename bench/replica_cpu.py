"""Where the CPU goes per webhook with one and two replicas on PostgreSQL.

    python -m bench.replica_cpu --replicas 1 --replicas 2 --secs 8

Why: intake with two replicas on one database reaches a smaller share of the durable receiver
than with one (issue 20, ``make bench`` section 5). This runs the same load (wrk, 64
connections split between the replicas, after a 2 s warm-up) and reads from /proc the CPU used
meanwhile by the ``serve`` processes, their mapping processes, the PostgreSQL server and the
fake Segment, per webhook acknowledged (the warm-up's CPU and webhooks included).
"""

from __future__ import annotations

import argparse
import contextlib
import time

from bench import postgres, procs
from bench.intake_parts import children
from tests.pgcluster import Cluster


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by ``pids`` together (a process gone meanwhile counts 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += procs.cpu_seconds(pid)
    return total


def measure(cluster: Cluster, replicas: int, secs: float) -> str:
    postgres.settled(cluster)
    url = cluster.new_database()
    with procs.running(procs.fake_segment(f"fake-cpu{replicas}")) as fake:
        config = postgres.bridge_settings(url, fake.url)
        bridges = [procs.bridge(f"bridge-cpu{replicas}-{n}", config) for n in range(replicas)]
        try:
            serve = [b.pid for b in bridges]
            mappers = [pid for b in bridges for pid in children(b.pid)]

            def sample() -> tuple[float, float, float, float]:
                return (
                    cpu_seconds(serve),
                    cpu_seconds(mappers),
                    postgres.server_cpu(cluster),
                    cpu_seconds([fake.pid]),
                )

            before, started = sample(), time.perf_counter()
            runs, acknowledged = postgres.drive(bridges, secs, f"cpu{replicas}")
            after, elapsed = sample(), time.perf_counter() - started
        finally:
            for bridge in bridges:
                bridge.stop()
    used = [(b - a) for a, b in zip(before, after, strict=True)]
    per = [u / acknowledged * 1e6 for u in used]
    cores = [u / elapsed for u in used]
    rate = sum(r.rate for r in runs)
    return (
        f"x{replicas}: {rate:,.0f} webhooks/s; µs CPU per webhook: serve {per[0]:.0f}, "
        f"mapping {per[1]:.0f}, PostgreSQL {per[2]:.0f}, fake {per[3]:.0f}; cores: serve "
        f"{cores[0]:.2f}, mapping {cores[1]:.2f}, PostgreSQL {cores[2]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, action="append")
    parser.add_argument("--secs", type=float, default=8.0)
    args = parser.parse_args(argv)
    cluster = Cluster().start(durable=True)
    try:
        for replicas in args.replicas or [1, 2]:
            print(measure(cluster, replicas, args.secs), flush=True)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
