"""CPU per ``SQLiteStore.enqueue`` under group commit, per thread (one-off, not in ``make bench``).

Run: ``.venv/bin/python -m bench.store_enqueue [--webhooks 10000] [--concurrency 64]
[--burn-us 0] [--reps 5]``.

Why this beside the HTTP benchmarks: on a shared two-core machine the whole-server rate moves by
±30% between runs, which hides a change of tens of microseconds in the store. Here the store is
alone in the process: the benchmark body (bench/body.py, fresh ids per webhook) is mapped once up
front with the real ``intake.process``, then ``--concurrency`` coroutines enqueue it on uvloop
against a fresh file (WAL, ``synchronous=FULL``). Printed per repeat: the rate, process CPU per
enqueue and each thread's CPU per enqueue (the event loop, the writer, the WAL checkpointer),
and the mean group size; then the best and the median of the process figure.

``--burn-us N`` makes each coroutine spend N µs of Python CPU before each enqueue, as mapping
and HTTP do on the real event loop: the writer then has to win the GIL from a busy thread, which
is where hand-offs cost. ``--switch-interval`` sets ``sys.setswitchinterval`` (default 5 ms):
how long a thread waits for the GIL before it makes the holder let go.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from bench import body
from bridge import config as config_module
from bridge.mapping import intake
from bridge.store.sqlite.store import SQLiteStore

if TYPE_CHECKING:  # only a type: the script also runs against older trees (PYTHONPATH=<tree>:.)
    from bridge.store.sqlite.enqueue import Item

TICKS = os.sysconf("SC_CLK_TCK")


def prepare(count: int) -> list[Item]:
    config = config_module.parse({"storage": {"path": "unused.db"}, "logging": {"level": "error"}})
    items: list[Item] = []
    for n in range(count):
        user, attempt = body.ids("enqueue", n)
        result = intake.process("exam.completed", body.render(user, attempt), 1.8e9 + n, config)
        items.append((result.webhook, tuple(result.messages), result.dead))
    return items


def thread_cpu() -> dict[int, float]:
    """CPU seconds so far of each thread of this process, by native id."""
    found: dict[int, float] = {}
    for task in os.listdir("/proc/self/task"):
        with Path(f"/proc/self/task/{task}/stat").open() as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        found[int(task)] = (int(fields[11]) + int(fields[12])) / TICKS
    return found


def burn(micros: float) -> None:
    end = time.thread_time() + micros / 1e6
    while time.thread_time() < end:
        pass


async def run(items: list[Item], path: Path, concurrency: int, burn_us: float) -> dict[str, float]:
    store = SQLiteStore(path, synchronous="FULL")
    await store.open()
    pending = iter(items)

    async def worker() -> None:
        for webhook, messages, dead in pending:
            if burn_us:
                burn(burn_us)
            await store.enqueue(webhook, messages, dead)

    assert store._writer is not None  # white-box: the commit count gives the group size
    commits = store._writer.commits
    names = {t.native_id: t.name.split(":")[0] for t in threading.enumerate()}
    before, cpu, wall = thread_cpu(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    after, cpu, wall = thread_cpu(), time.process_time() - cpu, time.perf_counter() - wall
    groups = len(items) / max(1, store._writer.commits - commits)
    await store.close()
    figures = {"rate": len(items) / wall, "process": cpu / len(items) * 1e6, "group": groups}
    for tid, seconds in after.items():
        name = "event loop" if tid == threading.main_thread().native_id else names.get(tid, "?")
        used = (seconds - before.get(tid, seconds)) / len(items) * 1e6
        figures[name] = figures.get(name, 0.0) + used
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--webhooks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--burn-us", type=float, default=0.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval, seconds")
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    items = prepare(args.webhooks)
    process = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory() as where:
            figures = uvloop.run(
                run(items, Path(where) / "enqueue.db", args.concurrency, args.burn_us)
            )
        process.append(figures.pop("process"))
        rate, group = figures.pop("rate"), figures.pop("group")
        threads = ", ".join(f"{k} {v:.0f}" for k, v in sorted(figures.items()) if v >= 1)
        print(
            f"rep {rep}: {rate:,.0f}/s, process {process[-1]:.0f} µs CPU per enqueue"
            f" (threads: {threads}), {group:.1f} per commit"
        )
    best, median = min(process), statistics.median(process)
    print(f"process CPU per enqueue: best {best:.0f} µs, median {median:.0f} µs")


if __name__ == "__main__":
    main()
