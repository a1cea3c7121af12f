"""A/B of intake between code trees, judged against the durable receiver in the same run.

    python -m bench.ab --tree before=/tmp/before --tree after=. --reps 4 --secs 5

Each tree (a directory holding a ``bridge`` package, e.g. ``git archive main bridge | tar -x``)
runs as its own ``serve`` with its own fake Segment and database; wrk runs alternate between
them and the minimal durable receiver, so the machine's noise hits every server alike. Printed
per run: webhooks/s, p99, the server's CPU per request (``/proc/<pid>/stat`` around the run: on
a shared machine a steadier yardstick than the rate) and tree / durable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

from bench import procs, wrk
from bench.procs import OUT, Proc

PATH = "/webhooks/synap/exam.completed"


def tree_bridge(name: str, tree: Path) -> tuple[Proc, Proc]:
    """``serve`` importing ``bridge`` from ``tree`` first, with its own fake Segment."""
    fake = procs.fake_segment(f"ab-fake-{name}")
    config = procs.bridge_config(procs.fresh_db(f"ab-{name}"), procs.free_port(), fake.url)
    path = OUT / f"ab-{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    url = f"http://127.0.0.1:{config['server']['port']}"
    code = (
        f"import sys; sys.path.insert(0, {str(tree.resolve())!r}); import runpy; "
        "runpy.run_module('bridge', run_name='__main__')"
    )
    argv = procs.python("-c", code, "--config", str(path), "serve")
    proc = Proc(f"ab-{name}", argv, url=url)
    proc.wait_http(f"{url}/healthz", 60)
    return proc, fake


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", action="append", required=True, help="name=directory")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--secs", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    wrk.write_template()
    started: list[Proc] = []
    servers: dict[str, Proc] = {}
    try:
        servers["durable"] = procs.durable_app("ab-durable")
        started.append(servers["durable"])
        for spec in args.tree:
            name, _, tree = spec.partition("=")
            proc, fake = tree_bridge(name, Path(tree))
            started += [fake, proc]
            servers[name] = proc
        measure(servers, args.reps, args.secs, args.connections)
    finally:
        for proc in reversed(started):
            proc.stop()
    return 0


def measure(servers: dict[str, Proc], reps: int, secs: float, connections: int) -> None:
    auth = procs.basic_auth()
    rates: dict[str, list[float]] = {k: [] for k in servers}
    cpu: dict[str, list[float]] = {k: [] for k in servers}
    for name, proc in servers.items():
        wrk.run(proc.url + PATH, connections, 2, f"abw{name}{time.time_ns()}", auth)
    for rep in range(reps):
        for name, proc in servers.items():
            before = proc.cpu_seconds()
            res = wrk.run(proc.url + PATH, connections, secs, f"ab{name}{time.time_ns()}", auth)
            rates[name].append(res.rate)
            cpu[name].append((proc.cpu_seconds() - before) / max(1, res.requests) * 1e6)
            print(
                f"rep {rep} {name}: {res.rate:,.0f}/s p99 {res.p99_ms:.1f} ms "
                f"{cpu[name][-1]:.0f} µs CPU/request "
                f"({res.rate / rates['durable'][-1]:.2f} of durable)",
                flush=True,
            )
    for name in servers:
        shares = [r / d for r, d in zip(rates[name], rates["durable"], strict=True)]
        print(
            f"{name}: median {statistics.median(rates[name]):,.0f}/s, "
            f"{statistics.median(cpu[name]):.0f} µs CPU/request, "
            f"median {statistics.median(shares):.2f} of durable"
        )


if __name__ == "__main__":
    sys.exit(main())
