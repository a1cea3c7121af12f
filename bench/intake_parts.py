"""Intake at 64 connections with parts of the pipeline switched off: what each part costs it.

    python -m bench.intake_parts --reps 2 --secs 8
    python -m bench.intake_parts --modes all --nice 0 --nice 19

Why: keep first, judge after (issue 20) answers once the raw webhook is committed, yet intake
under load still depends on what else runs: the mapping process (its CPU, and SQLite's one
write lock) and delivery (on ``serve``'s event loop). Each mode runs ``serve`` with its own
fake Segment and a fresh database, wrk at 64 connections after a 2 s warm-up, modes
alternating per rep:

- ``all``: mapping and delivery running (what ``make bench`` measures);
- ``no-delivery``: Segment's endpoint refuses connections, so delivery pauses and backs off;
- ``no-mapping``: the mapping process stopped (SIGSTOP while idle, before the load), so
  nothing is mapped or delivered: the request path alone.

``--nice N`` (repeatable) runs ``all`` once per niceness of the mapping process instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import procs, wrk
from bench.intake import PATH
from bench.procs import OUT

CONNECTIONS = 64
MODES = ("all", "no-delivery", "no-mapping")
#: Nothing listens here: delivery's uploads are refused at once.
CLOSED_ENDPOINT = "http://127.0.0.1:9"


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (the mapping process of a ``serve``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def run_mode(mode: str, secs: float, nice: int | None) -> wrk.WrkResult:
    name = f"parts-{mode}" if nice is None else f"parts-nice{nice}"
    db = procs.fresh_db(name)
    with procs.running(procs.fake_segment(f"fake-{name}")) as fake:
        endpoint = CLOSED_ENDPOINT if mode == "no-delivery" else fake.url
        overrides: dict[str, Any] = {} if nice is None else {"mapper": {"nice": nice}}
        config = procs.bridge_config(db, procs.free_port(), endpoint, **overrides)
        with procs.running(procs.bridge(f"bridge-{name}", config)) as bridge:
            mappers = children(bridge.pid) if mode == "no-mapping" else []
            with stopped(mappers):
                auth = procs.basic_auth()
                wrk.run(bridge.url + PATH, CONNECTIONS, 2.0, f"{name}w", auth)
                return wrk.run(bridge.url + PATH, CONNECTIONS, secs, name, auth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--secs", type=float, default=8.0)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    parser.add_argument("--nice", type=int, action="append", help="niceness of the mapper")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    points: list[tuple[str, int | None]] = (
        [("all", n) for n in args.nice]
        if args.nice
        else [(m, None) for m in args.modes.split(",") if m]
    )
    for rep in range(args.reps):
        for mode, nice in points:
            result = run_mode(mode, args.secs, nice)
            label = mode if nice is None else f"nice {nice}"
            print(
                f"rep {rep} {label}: {result.rate:,.0f} webhooks/s, p50 {result.p50_ms:.1f} ms, "
                f"p99 {result.p99_ms:.1f} ms, errors {result.errors}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
