"""Sustained end-to-end rate: does delivery keep up with intake at full load for 60 s?

wrk drives ``serve`` at 64 connections for the whole window while the bridge delivers to the fake
Segment (a separate process), as in production. Counted from the fake's ``/_stats`` at the start
and the end of the window: messages accepted by Segment per second beside webhooks acknowledged
per second (one message per benchmark webhook), the requests it took per 1,000 messages, and,
once wrk stops, how long the rest takes to arrive (the backlog the window left behind). Delivery
keeps up when it carries about what intake took in and the catch-up is short.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import procs, wrk
from bench.intake import PATH
from bench.procs import OUT

CONNECTIONS = 64
#: Entered around a window with the bridge and the fake Segment (bench.timeline).
Watch = Callable[[procs.Proc, procs.Proc], contextlib.AbstractContextManager[None]]
CATCH_UP_LIMIT_SECS = 120.0


@dataclass
class SustainedResult:
    seconds: float
    intake: wrk.WrkResult
    arrived_during: int  # messages the fake accepted inside the window
    requests_during: int  # batch requests the fake received inside the window
    backlog_at_end: int  # acknowledged but not yet arrived when wrk stopped
    catch_up_secs: float  # from wrk's end until every acknowledged webhook's message arrived

    @property
    def delivered_rate(self) -> float:
        return self.arrived_during / self.seconds

    @property
    def requests_per_1000(self) -> float:
        return 1000 * self.requests_during / self.arrived_during if self.arrived_during else 0.0


def _unique(fake: procs.Proc) -> tuple[int, int]:
    stats = procs.get_json(fake.url + "/_stats")
    return int(stats["unique"]), int(stats["requests"])


def run(
    seconds: float, tree: Path | None = None, name: str = "sustained", watch: Watch | None = None
) -> SustainedResult:
    """One window of full load on this tree's ``serve`` (or ``tree``'s: bench.ab_sustained);
    ``watch(bridge, fake)`` is entered around the window (bench.timeline samples it)."""
    db = OUT / f"{name}.db"
    _remove(name)
    try:
        return _run(seconds, tree, db, watch)
    finally:
        _remove(name)


def _remove(name: str) -> None:
    """A run's database files: 1.6-2.6 GB after 60 s at full load. Removed when the run ends,
    so the next run (the other tree's, in bench.ab_sustained) does not start beside them: a
    file removed leaves the page cache with its dirty pages unwritten, where one left behind
    may be written back by the kernel while the next run fsyncs; and six runs of make bench
    no longer leave ~12 GB behind until its end."""
    for stale in OUT.glob(f"{name}.db*"):
        stale.unlink()


def _run(seconds: float, tree: Path | None, db: Path, watch: Watch | None) -> SustainedResult:
    name = db.stem
    auth = procs.basic_auth()
    with procs.running(procs.fake_segment(f"fake-{name}")) as fake:
        config = procs.bridge_config(db, procs.free_port(), fake.url)
        with procs.running(procs.bridge(f"bridge-{name}", config, tree=tree)) as bridge:
            watching = watch(bridge, fake) if watch is not None else contextlib.nullcontext()
            with watching:
                warm = wrk.run(bridge.url + PATH, CONNECTIONS, 2.0, "sustw", auth)
                before, requests_before = _unique(fake)
                load = wrk.run(bridge.url + PATH, CONNECTIONS, seconds, "sust", auth)
                after, requests_after = _unique(fake)
            ended = time.monotonic()
            expected = warm.acknowledged + load.acknowledged
            arrived = after
            while arrived < expected and time.monotonic() - ended < CATCH_UP_LIMIT_SECS:
                time.sleep(0.05)  # polling another process: no event to wait on
                arrived, _ = _unique(fake)
            caught_up = time.monotonic() - ended
    return SustainedResult(
        seconds=load.seconds,
        intake=load,
        arrived_during=after - before,
        requests_during=requests_after - requests_before,
        backlog_at_end=max(0, expected - after),
        catch_up_secs=caught_up if arrived >= expected else float("inf"),
    )
