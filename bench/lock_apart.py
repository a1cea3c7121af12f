"""Intake beside a mapping process that writes a file of its own: what sharing SQLite's one
write lock costs intake.

    python -m bench.lock_apart --reps 2 --secs 8

Why: on SQLite, ``serve``'s group commits and the mapping process's transactions take turns on
the database file's one write lock; at 64 connections they hold it about half the time each
(docs/operations.md, capacity). This measures what intake would be with the two apart. The
minimal durable receiver (bench/durable.py: raw body, group commit, ``synchronous=FULL``) is
driven by wrk at 64 connections, alone and beside a mapping process (``--map-child``: the real
:class:`~bridge.mapper.stage.MappingStage` over a backlog of benchmark ``exam.completed``
webhooks in another SQLite file, at niceness +5 as ``mapper.nice``), alternating per rep. Both
compete for the two cores as ``serve`` and its mapper do; only the lock is no longer shared.
The ratio beside-mapping / alone is the ceiling for a bridge whose raw webhooks live in a file
the mapping process never writes: a ceiling, not a forecast. The receiver is lighter than
``serve``, and a real split copies each body into the main file; a prototype of it gained no
intake on two cores and mapped ~20 % less (docs/benchmarks.md, decision log, 2026-12-06).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys

from bench import mapping_alone, procs, wrk
from bench.intake import PATH
from bench.intake_parts import CONNECTIONS
from bench.procs import OUT
from bridge import logs
from bridge.config import MapperConfig

#: Enough backlog that the mapping runs through the warm-up and the whole measured window.
BACKLOG = 60_000
#: The mapping as ``serve`` runs it by default (``mapper.batch``, ``mapper.nice``).
MAPPER = MapperConfig()
READY = "mapping"


def map_child(count: int) -> int:
    """The mapping process: keep ``count`` webhooks, say :data:`READY`, map them all."""
    logs.configure("warning", "json")

    def ready() -> None:
        os.nice(MAPPER.nice)
        print(READY, flush=True)

    rate, cpu_us = asyncio.run(
        mapping_alone.measure(count, MAPPER.batch, name="lock-apart-mapping", ready=ready)
    )
    print(f"mapped {count:,}: {rate:,.0f} webhooks/s, {cpu_us:.0f} µs CPU per webhook", flush=True)
    return 0


def one(secs: float, beside_mapping: bool) -> tuple[wrk.WrkResult, str]:
    """wrk against a fresh durable receiver, alone or beside a mapping process."""
    auth = procs.basic_auth()
    with procs.running(procs.durable_app("lock-apart")) as durable:
        mapper = None
        if beside_mapping:
            mapper = subprocess.Popen(
                [sys.executable, "-m", "bench.lock_apart", "--map-child", str(BACKLOG)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert mapper.stdout is not None
            if mapper.stdout.readline().strip() != READY:
                raise RuntimeError("the mapping process did not start")
        try:
            wrk.run(durable.url + PATH, CONNECTIONS, 2.0, "lockapartw", auth)
            result = wrk.run(durable.url + PATH, CONNECTIONS, secs, "lockapart", auth)
        finally:
            mapped = ""
            if mapper is not None:  # its rate covers the window and the rest of its backlog
                out, _ = mapper.communicate(timeout=300)
                mapped = out.strip()
    return result, mapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--secs", type=float, default=8.0)
    parser.add_argument("--map-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.map_child:
        return map_child(args.map_child)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.reps):
        for beside in (False, True):
            result, mapped = one(args.secs, beside)
            rates[beside].append(result.rate)
            label = "beside mapping" if beside else "alone"
            print(
                f"rep {rep + 1} {label}: {result.rate:,.0f} webhooks/s, p99 {result.p99_ms} ms"
                + (f"; {mapped}" if mapped else ""),
                flush=True,
            )
    alone_rate, beside_rate = statistics.median(rates[False]), statistics.median(rates[True])
    ratio = beside_rate / alone_rate
    print(f"beside a mapping process on its own file / alone (medians): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
