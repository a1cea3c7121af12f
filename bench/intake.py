"""Intake: durable webhooks per second and latency, the bridge beside two baselines.

Both servers get the same wrk script, the same ~6 KB ``exam.completed`` bodies with Basic auth,
the same connection counts and durations. The bridge runs as it does in production: the real
``synap-bridge serve``, ``synchronous=FULL``, and its delivery loop running, uploading what it
receives to the fake Segment (a separate process) while intake is measured. The baselines are
bare aiohttp (nothing kept: the price of durability shows) and the minimal durable receiver
(bench/durable.py: raw body, group commit, ``synchronous=FULL``: our own overhead shows).

The target ratio (bridge / durable at the top level) comes from :func:`pairs`: alternating runs
of the two, each on fresh processes, and the median of the pairs. Why: one run of each, minutes
apart, gave 0.52 in section 1 and 0.66 in section 5 of the same ``make bench``; the machine's
speed drifts between runs more than the target's margin, and alternating cancels the drift.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs, profile, wrk
from bench.procs import OUT

PATH = "/webhooks/synap/exam.completed"


@dataclass
class IntakeResult:
    bare: list[wrk.WrkResult] = field(default_factory=list)
    bridge: list[wrk.WrkResult] = field(default_factory=list)
    durable: list[wrk.WrkResult] = field(default_factory=list)  # the minimal durable receiver
    acknowledged: int = 0  # 2xx answers counted by wrk, warm-ups included
    stored: int = 0  # webhook rows in the database afterwards
    delivered_during: int = 0  # messages the fake Segment accepted meanwhile
    rss_kb: int = 0  # the bridge's peak RSS after the series
    profile: profile.Profile | None = None
    profiled: wrk.WrkResult | None = None  # the load during the profile (not in the table)
    pairs: list[Pair] = field(default_factory=list)  # alternating at the top level


@dataclass
class Pair:
    """The durable receiver, then the bridge, each fresh, at the same load."""

    durable: wrk.WrkResult
    bridge: wrk.WrkResult

    @property
    def ratio(self) -> float:
        return self.bridge.rate / self.durable.rate if self.durable.rate else float("nan")


def _series(
    url: str, levels: tuple[int, ...], seconds: float, tag: str
) -> tuple[list[wrk.WrkResult], int]:
    """One warm-up (2 s) and one measured run per level; also the 2xx answers of all runs."""
    results = []
    acknowledged = 0
    for connections in levels:
        auth = procs.basic_auth()
        warm = wrk.run(url, connections, min(2.0, seconds), f"{tag}w{connections}", auth)
        measured = wrk.run(url, connections, seconds, f"{tag}c{connections}", auth)
        results.append(measured)
        acknowledged += warm.acknowledged + measured.acknowledged
    return results, acknowledged


def pairs(connections: int, seconds: float, count: int) -> list[Pair]:
    """``count`` alternating pairs: the durable receiver, then ``serve`` on a fresh database with
    its mapping and delivery running (the mapping is busy from the warm-up on: at this load it
    falls behind intake by design), each started fresh and stopped after its run."""
    found = []
    for n in range(count):
        with procs.running(procs.durable_app(f"durable-pair{n}")) as durable:
            [measured_durable], _ = _series(durable.url + PATH, (connections,), seconds, f"pd{n}")
        with procs.running(procs.fake_segment(f"fake-pair{n}")) as fake:
            config = procs.bridge_config(procs.fresh_db(f"pair{n}"), procs.free_port(), fake.url)
            with procs.running(procs.bridge(f"bridge-pair{n}", config)) as bridge:
                [measured_bridge], _ = _series(bridge.url + PATH, (connections,), seconds, f"pb{n}")
        found.append(Pair(measured_durable, measured_bridge))
    return found


def _stored(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("SELECT count(*) FROM webhooks").fetchone()
    return int(count)


def run(
    levels: tuple[int, ...], seconds: float, profile_seconds: float, pair_count: int = 3
) -> IntakeResult:
    result = IntakeResult()
    with procs.running(procs.bare_app()) as bare:
        result.bare, _ = _series(bare.url + PATH, levels, seconds, "bare")
    with procs.running(procs.durable_app()) as durable:
        result.durable, _ = _series(durable.url + PATH, levels, seconds, "durable")
    db = procs.fresh_db("intake")
    with procs.running(procs.fake_segment("fake-intake")) as fake:
        config = procs.bridge_config(db, procs.free_port(), fake.url)
        bridge = procs.bridge("bridge-intake", config)
        try:
            result.bridge, result.acknowledged = _series(
                bridge.url + PATH, levels, seconds, "bridge"
            )
            result.rss_kb = bridge.memory_kb()["VmHWM"]
            if profile_seconds > 0:
                out = OUT / "intake.profile.txt"
                sampler = profile.start(bridge.pid, profile_seconds, out)
                load = wrk.run(
                    bridge.url + PATH, max(levels), profile_seconds + 1, "prof", procs.basic_auth()
                )
                result.profiled = load
                result.acknowledged += load.acknowledged
                if sampler is not None and sampler.wait(60) == 0 and out.exists():
                    result.profile = profile.summarise(out, profile_seconds)
            result.delivered_during = int(procs.get_json(fake.url + "/_stats")["unique"])
        finally:
            bridge.stop()
    result.stored = _stored(db)
    result.pairs = pairs(max(levels), seconds, pair_count)
    return result
