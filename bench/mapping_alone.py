"""The mapping stage alone, in-process: how fast it maps, and its CPU per webhook.

    python -m bench.mapping_alone --count 20000 --batch 128

Why: under full load the mapping process shares two cores with intake, delivery, wrk and the
fake Segment, so the sustained end-to-end rate is bounded by what mapping costs per webhook
(issue 20). This keeps ``count`` benchmark ``exam.completed`` webhooks in a fresh SQLite file
(as intake does), then times :meth:`MappingStage.drain` over them: webhooks/s and CPU per
webhook of the whole process (its writer, reader and checkpoint threads included). Run it
under ``py-spy record --threads`` to see where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from bench import body, procs
from bench.procs import OUT
from bridge import config as config_module
from bridge import logs
from bridge.mapper.stage import MappingStage
from bridge.store import Webhook
from bridge.store.sqlite.store import SQLiteStore

KEEP_GROUP = 256


async def keep_backlog(store: SQLiteStore, count: int) -> None:
    """``count`` fresh benchmark ``exam.completed`` webhooks kept unmapped, as intake keeps them."""
    for start in range(0, count, KEEP_GROUP):
        await asyncio.gather(
            *(
                store.keep(
                    Webhook(
                        "exam.completed",
                        None,
                        time.time(),
                        body.render(f"u{n:07d}", f"a{n:010d}"),
                    )
                )
                for n in range(start, min(count, start + KEEP_GROUP))
            )
        )


async def measure(
    count: int, batch: int, name: str = "mapping-alone", ready: Callable[[], None] | None = None
) -> tuple[float, float]:
    """Webhooks mapped per second, and CPU µs per webhook (all threads of this process).
    ``ready`` is called once the backlog is kept, just before the mapping starts."""
    db = OUT / f"{name}.db"
    for stale in OUT.glob(f"{name}.db*"):
        stale.unlink()
    store = SQLiteStore(db)
    await store.open()
    try:
        await keep_backlog(store, count)
        config = config_module.parse(procs.bridge_config(db, 1, "http://127.0.0.1:9"))
        stage = MappingStage(store, lambda: config, batch=batch)
        if ready is not None:
            ready()
        started, cpu = time.perf_counter(), time.process_time()
        await stage.drain(time.monotonic() + 600)
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await store.close()
    return count / elapsed, used / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=128, help="webhooks per take")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    logs.configure("warning", "json")
    rate, cpu_us = asyncio.run(measure(args.count, args.batch))
    print(f"mapped {args.count:,}: {rate:,.0f} webhooks/s, {cpu_us:.0f} µs CPU per webhook")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
