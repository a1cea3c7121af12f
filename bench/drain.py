"""Drain: how fast a backlog leaves for Segment, the bridge beside segment-analytics' Client.

The backlog (``count`` realistic messages, one webhook each) is built through the store before
the clock starts. The bridge is then started on it, pointed at the fake Segment (its own
process), and the clock runs from the start of ``synap-bridge serve`` until the fake has
accepted every distinct messageId. The baseline sends the same messages with the library's
``Client`` (``bench.client``, its own process) to a fresh fake, timed from the first call to
``flush()`` returning, and the fake's count is checked.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import backlog, procs, profile
from bench.procs import OUT

TIMEOUT_SECS = 300.0


@dataclass
class DrainResult:
    count: int
    build_secs: float
    bridge_secs: float  # from process start until the fake counted every message
    bridge_first_secs: float  # from the first message seen at the fake until the last
    bridge_rss_kb: int
    bridge_cpu_secs: float  # CPU the bridge used during the drain (user + system)
    fake_cpu_secs: float  # CPU the fake Segment used meanwhile: it shares the two cores
    client_secs: float
    client_retries: int
    client_counted: int
    profile: profile.Profile | None = None

    @property
    def bridge_rate(self) -> float:
        return self.count / self.bridge_secs

    @property
    def client_rate(self) -> float:
        return self.count / self.client_secs


def _drain(
    db: Path, count: int, name: str, profile_out: Path | None
) -> tuple[float, float, int, float, float]:
    """Serve ``db`` until the fake counted ``count``.

    Returns total secs, secs after the first arrival, peak RSS, bridge CPU secs, fake CPU secs.
    """
    with procs.running(procs.fake_segment(f"fake-{name}")) as fake:
        fake_cpu = fake.cpu_seconds()
        config = procs.bridge_config(db, procs.free_port(), fake.url)
        started = time.perf_counter()
        bridge = procs.bridge(name, config)
        sampler = None
        try:
            if profile_out is not None:
                sampler = profile.start(bridge.pid, 5, profile_out)
            first, now = wait_delivered(fake, count, started, name)
            rss = bridge.memory_kb()["VmHWM"]
            bridge_cpu = bridge.cpu_seconds()
            fake_cpu = fake.cpu_seconds() - fake_cpu
        finally:
            if sampler is not None:
                sampler.wait(60)
            bridge.stop()
    return now - started, now - first, rss, bridge_cpu, fake_cpu


def _client(count: int, tag: str) -> tuple[float, int, int]:
    with procs.running(procs.fake_segment("fake-client")) as fake:
        argv = procs.python("-m", "bench.client", "--host", fake.url)
        argv += ["--write-key", procs.WRITE_KEY, "--count", str(count), "--tag", tag]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=TIMEOUT_SECS, cwd=procs.REPO, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"the Client baseline failed:\n{done.stderr[-3000:]}")
        report = orjson.loads(done.stdout.strip().splitlines()[-1])
        counted = int(procs.get_json(fake.url + "/_stats")["unique"])
    return float(report["seconds"]), int(report["queue_full_retries"]), counted


def wait_delivered(
    fake: procs.Proc, count: int, started: float, name: str, sender: procs.Proc | None = None
) -> tuple[float, float]:
    """Poll the fake (another process: no event to wait on) until it counted ``count``
    messageIds: the ``perf_counter`` times of the first arrival and of the end. Bounded by
    :data:`TIMEOUT_SECS` from ``started``; fails at once if ``sender`` has exited."""
    first = None
    deadline = started + TIMEOUT_SECS
    while True:
        unique = int(procs.get_json(fake.url + "/_stats")["unique"])
        now = time.perf_counter()
        if first is None and unique > 0:
            first = now
        if unique >= count:
            assert first is not None
            return first, now
        if now > deadline or (sender is not None and sender.popen.poll() is not None):
            raise RuntimeError(f"{name}: {unique} of {count} after {now - started:.0f}s")
        time.sleep(0.02)


def run(count: int, with_profile: bool) -> DrainResult:
    db = OUT / "drain.db"
    build_secs = backlog.build(db, count, "drain")
    spare = OUT / "drain-profile.db"
    if with_profile:
        shutil.copyfile(db, spare)
    total, after_first, rss, bridge_cpu, fake_cpu = _drain(db, count, "bridge-drain", None)
    client_secs, retries, counted = _client(count, "drain")
    result = DrainResult(
        count,
        build_secs,
        total,
        after_first,
        rss,
        bridge_cpu,
        fake_cpu,
        client_secs,
        retries,
        counted,
    )
    if with_profile:
        out = OUT / "drain.profile.txt"
        _drain(spare, count, "bridge-drain-profile", out)
        if out.exists():
            result.profile = profile.summarise(out, 5)
    return result
