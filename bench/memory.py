"""Memory: the bridge's peak RSS holding a large backlog versus a small one.

Delivery points at the fake Segment answering 503 to every upload, so the backlog stays while
the daemon works as it would through a Segment outage: it claims, fails, backs off, pauses.
Meanwhile it takes webhooks (wrk, 16 connections) and serves /metrics and /readyz, so the peak
covers intake with a big backlog, not an idle process. ``storage.max_pending`` is raised above
the backlog so intake is not refused. The backlog's rows hold 100 messages per webhook row to
keep the 1,000,000-message setup short; the messages themselves are the realistic ~2 KB ones.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

from bench import backlog, procs, wrk
from bench.procs import OUT


@dataclass
class MemoryPoint:
    backlog: int
    build_secs: float
    hwm_kb: int
    rss_kb: int
    intake_rate: float


def _point(count: int, load_secs: float) -> MemoryPoint:
    db = OUT / f"memory-{count}.db"
    build_secs = backlog.build(db, count, f"mem{count}", per_webhook=100)
    with procs.running(procs.fake_segment(f"fake-memory-{count}")) as fake:
        procs.post_json(fake.url + "/_mode", {"fail": [{"status": 503, "times": 10**9}]})
        config = procs.bridge_config(
            db, procs.free_port(), fake.url, storage={"max_pending": 10 * count + 1_000_000}
        )
        with procs.running(procs.bridge(f"bridge-memory-{count}", config)) as bridge:
            time.sleep(2)  # delivery claims, fails on 503, pauses: the outage steady state
            for path in ("/metrics", "/readyz"):
                with urllib.request.urlopen(bridge.url + path, timeout=10):  # noqa: S310 - loopback only
                    pass
            load = wrk.run(
                bridge.url + "/webhooks/synap/exam.completed",
                16,
                load_secs,
                f"mem{count}",
                procs.basic_auth(),
            )
            with urllib.request.urlopen(bridge.url + "/metrics", timeout=10):  # noqa: S310 - loopback only
                pass
            memory = bridge.memory_kb()
    for stale in OUT.glob(db.name + "*"):
        stale.unlink()
    return MemoryPoint(count, build_secs, memory["VmHWM"], memory["VmRSS"], load.rate)


def run(small: int, large: int, load_secs: float) -> tuple[MemoryPoint, MemoryPoint]:
    return _point(small, load_secs), _point(large, load_secs)
