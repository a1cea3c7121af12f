"""A/B of the backlog drain between code trees, runs alternated so noise hits every tree alike.

    python -m bench.ab_drain --tree before=/tmp/before --tree after=. --reps 3 --count 100000

Each tree (a directory holding a ``bridge`` package, e.g. ``git archive main bridge | tar -x``)
builds its own backlog once: its own schema and mapping, through :mod:`bench.backlog` with the
tree's ``bridge`` first on ``sys.path``. ``name=tree@maker`` drains the messages ``maker``'s
mapping makes with ``tree``'s code (migrated before the clock runs): the same work for different
code. ``--keep`` reuses a backlog built before under the same name. Every run drains a fresh
copy with the tree's ``serve`` against its own fake Segment, timed as :mod:`bench.drain` does
(from process start until the fake counted every messageId). Printed per run: messages/s, the
bridge's CPU per message (``/proc/<pid>/stat``: steadier than the rate on a shared machine),
the fake's CPU per message, and requests to Segment per 1,000 messages.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench import procs
from bench.procs import OUT, Proc

TIMEOUT_SECS = 300.0


def _in_tree(tree: Path, code: str) -> list[str]:
    return procs.python("-c", f"import sys; sys.path.insert(0, {str(tree.resolve())!r}); {code}")


def _run(tree: Path, code: str, what: str) -> str:
    done = subprocess.run(
        _in_tree(tree, code), capture_output=True, text=True, cwd=procs.REPO, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def build(name: str, tree: Path, count: int, maker: Path, keep: bool) -> Path:
    """A backlog of ``count`` messages made by ``maker``'s bridge (its mapping and schema),
    then opened once by ``tree``'s store (migrated to its schema before the clock runs)."""
    db = OUT / f"abd-{name}-template.db"
    if keep and db.exists():
        return db
    code = (
        "from pathlib import Path; from bench import backlog; "
        f"print(backlog.build(Path({str(db)!r}), {count}, 'abd'))"
    )
    secs = float(_run(maker, code, f"{name}: backlog build").split()[-1])
    print(f"{name}: backlog built in {secs:.1f}s", flush=True)
    if maker != tree:
        code = (
            "import asyncio; from bridge.store.sqlite.store import SQLiteStore\n"
            "async def main():\n"
            f"    store = SQLiteStore({str(db)!r})\n"
            "    await store.open()\n"
            "    await store.close()\n"
            "asyncio.run(main())"
        )
        _run(tree, code, f"{name}: migration")
    return db


def drain(
    name: str, tree: Path, template: Path, count: int, env: dict[str, str]
) -> tuple[float, float, float, float]:
    """messages/s, bridge CPU µs/message, fake CPU µs/message, requests per 1,000 messages."""
    db = OUT / f"abd-{name}.db"
    for stale in OUT.glob(f"abd-{name}.db*"):
        stale.unlink()
    for part in template.parent.glob(template.name + "*"):
        shutil.copyfile(part, OUT / part.name.replace(template.name, db.name))
    with procs.running(procs.fake_segment(f"abd-fake-{name}")) as fake:
        fake_cpu = fake.cpu_seconds()
        config = procs.bridge_config(db, procs.free_port(), fake.url)
        path = OUT / f"abd-{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        serve = _in_tree(tree, "import runpy; runpy.run_module('bridge', run_name='__main__')")
        argv = [*serve, "--config", str(path), "serve"]
        started = time.perf_counter()
        bridge = Proc(f"abd-{name}", argv, env)
        try:
            deadline = started + TIMEOUT_SECS
            while True:
                stats = procs.get_json(fake.url + "/_stats")
                now = time.perf_counter()
                if int(stats["unique"]) >= count:
                    break
                if now > deadline or bridge.popen.poll() is not None:
                    raise RuntimeError(f"{name}: {stats} after {now - started:.0f}s")
                time.sleep(0.02)
            bridge_cpu = bridge.cpu_seconds()
            fake_cpu = fake.cpu_seconds() - fake_cpu
        finally:
            bridge.stop()
    secs = now - started
    return (
        count / secs,
        bridge_cpu / count * 1e6,
        fake_cpu / count * 1e6,
        int(stats["requests"]) / count * 1000,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--tree",
        action="append",
        required=True,
        help="name=directory, or name=directory@maker: the backlog made by maker's bridge",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="reuse the backlogs of a run before")
    parser.add_argument("--env", action="append", default=[], help="name=KEY=VALUE for a tree")
    args = parser.parse_args(argv)
    envs: dict[str, dict[str, str]] = {}
    for spec in args.env:
        name, _, assignment = spec.partition("=")
        key, _, value = assignment.partition("=")
        envs.setdefault(name, {})[key] = value
    OUT.mkdir(parents=True, exist_ok=True)
    trees = {}
    for spec in args.tree:
        name, _, where = spec.partition("=")
        tree, _, maker = where.partition("@")
        trees[name] = (
            Path(tree),
            build(name, Path(tree), args.count, Path(maker or tree), args.keep),
        )
    rates: dict[str, list[float]] = {name: [] for name in trees}
    for rep in range(args.reps):
        for name, (tree, template) in trees.items():
            rate, cpu, fake_cpu, requests = drain(
                name, tree, template, args.count, envs.get(name, {})
            )
            rates[name].append(rate)
            print(
                f"rep {rep} {name}: {rate:,.0f} messages/s, bridge {cpu:.0f} µs CPU/message, "
                f"fake {fake_cpu:.0f} µs, {requests:.1f} requests/1,000 messages",
                flush=True,
            )
    for name in trees:
        print(f"{name}: median {statistics.median(rates[name]):,.0f} messages/s {rates[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
