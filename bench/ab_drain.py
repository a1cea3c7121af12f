"""A/B of the backlog drain: the thread delivery against the asyncio one, both stores, one run.

    python -m bench.ab_drain --count 100000 --reps 3

Why: delivery moved from ``requests`` in daemon threads to aiohttp's client on the event loop
(issue 24); this measures that it is not slower, on SQLite and on PostgreSQL, in the same run so
the machine's noise hits both alike.

"threads" is the tree of :data:`THREADS_COMMIT` (the last commit with the thread delivery),
taken with ``git archive`` into a temporary directory (outside the repository, so no linter or
type checker reads it) and run with that directory first on
``sys.path`` (its own ``bridge``, its own ``bench`` to build its backlog); "asyncio" is this
tree. Each store's backlog is built once by the threads tree (its mapping and schema), then
copied per run; the asyncio tree drains a copy migrated to its own schema before the clock runs
(the same messages, the same work). Every run drains a fresh copy with the tree's ``serve``
against its own fake Segment, timed as :mod:`bench.drain` does (from process start until the
fake counted every messageId); runs alternate threads, asyncio, threads, ... Per run: messages/s
and the bridge's CPU per message (``/proc/<pid>/stat``: steadier than the rate on a shared
machine).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import procs
from bench.drain import wait_delivered
from bench.procs import OUT, Proc
from tests.pgcluster import Cluster

#: The last commit whose delivery uploads with ``requests`` in threads.
THREADS_COMMIT = "bd39a1b"
TREES = ("threads", "asyncio")
STORES = ("SQLite", "PostgreSQL")


@dataclass
class Run:
    rate: float  # messages/s, from process start until the fake counted every messageId
    cpu_us: float  # the bridge's CPU per message
    requests: float = 0.0  # requests to Segment per 1,000 messages
    first_secs: float = 0.0  # from process start until the fake saw the first message
    after_first: float = 0.0  # messages/s from the first arrival until the fake counted all


@dataclass
class ABResult:
    count: int
    reps: int
    base: str
    #: (store, tree) -> the runs, in order
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    def median(self, store: str, tree: str) -> Run:
        runs = self.runs[store, tree]
        return Run(
            statistics.median(r.rate for r in runs),
            statistics.median(r.cpu_us for r in runs),
            statistics.median(r.requests for r in runs),
            statistics.median(r.first_secs for r in runs),
            statistics.median(r.after_first for r in runs),
        )


def threads_tree(base: str) -> Path:
    """The thread version's ``bridge``, ``bench`` and ``tests`` (``git archive`` of ``base``)."""
    return procs.tree_of(base, "bridge", "bench", "tests", prefix="ab-threads-")


def _in_tree(tree: Path, code: str) -> list[str]:
    return procs.python("-c", f"import sys; sys.path.insert(0, {str(tree.resolve())!r}); {code}")


def _run(tree: Path, code: str, what: str) -> str:
    done = subprocess.run(
        _in_tree(tree, code), capture_output=True, text=True, cwd=procs.REPO, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _migrate(tree: Path, store_expr: str) -> None:
    """Open the store once with ``tree``'s code: its schema migration runs before any clock."""
    code = (
        "import asyncio\n"
        "from bridge.store.sqlite.store import SQLiteStore\n"
        "from bridge.store.postgres.store import PostgresStore\n"
        "async def main():\n"
        f"    store = {store_expr}\n"
        "    await store.open()\n"
        "    await store.close()\n"
        "asyncio.run(main())"
    )
    _run(tree, code, "migration")


class Backlogs:
    """One backlog per store, built by the threads tree; a fresh copy per run."""

    def __init__(self, old: Path, count: int, cluster: Cluster) -> None:
        self.count = count
        self.cluster = cluster
        self.sqlite = {tree: OUT / f"abd-{tree}-template.db" for tree in TREES}
        for stale in OUT.glob("abd-*.db*"):
            stale.unlink()
        code = (
            "from pathlib import Path; from bench import backlog; "
            f"print(backlog.build(Path({str(self.sqlite['threads'])!r}), {count}, 'abd'))"
        )
        secs = float(_run(old, code, "SQLite backlog").split()[-1])
        print(f"SQLite backlog of {count:,} built in {secs:.1f}s", flush=True)
        for part in OUT.glob(self.sqlite["threads"].name + "*"):
            shutil.copyfile(part, OUT / part.name.replace("threads", "asyncio"))
        _migrate(procs.REPO, f"SQLiteStore({str(self.sqlite['asyncio'])!r})")

        self.pg = {tree: f"abd_{tree}_template" for tree in TREES}
        for name in self.pg.values():
            cluster.psql("postgres", f"DROP DATABASE IF EXISTS {name}")
        cluster.psql("postgres", f"CREATE DATABASE {self.pg['threads']} TEMPLATE template_bridge")
        started = time.perf_counter()
        url = cluster.url(self.pg["threads"])
        code = (
            "import asyncio; from bench import postgres; "
            f"asyncio.run(postgres._build({url!r}, {count}, 'abd'))"
        )
        _run(old, code, "PostgreSQL backlog")
        cluster.psql(self.pg["threads"], "VACUUM ANALYZE")
        print(f"PostgreSQL backlog built in {time.perf_counter() - started:.1f}s", flush=True)
        cluster.psql(
            "postgres", f"CREATE DATABASE {self.pg['asyncio']} TEMPLATE {self.pg['threads']}"
        )
        _migrate(procs.REPO, f"PostgresStore({cluster.url(self.pg['asyncio'])!r}, pool_size=2)")

    def storage(self, store: str, tree: str, run: str) -> dict[str, Any]:
        """A fresh copy of the backlog for one run: the ``storage`` section pointing at it."""
        if store == "SQLite":
            db = OUT / f"abd-run-{run}.db"
            for stale in OUT.glob(db.name + "*"):
                stale.unlink()
            template = self.sqlite[tree]
            for part in OUT.glob(template.name + "*"):
                shutil.copyfile(part, OUT / part.name.replace(template.name, db.name))
            return {"path": str(db), "synchronous": "FULL"}
        name = f"abd_run_{run}"
        self.cluster.psql("postgres", f"DROP DATABASE IF EXISTS {name}")
        self.cluster.psql("postgres", f"CREATE DATABASE {name} TEMPLATE {self.pg[tree]}")
        return {"url": self.cluster.url(name)}


def drain(tree: Path, name: str, storage: dict[str, Any], count: int) -> Run:
    """Serve the backlog in ``storage`` with ``tree``'s bridge until the fake counted it all."""
    with procs.running(procs.fake_segment(f"abd-fake-{name}")) as fake:
        config = procs.bridge_config(OUT / "unused.db", procs.free_port(), fake.url)
        config["storage"] = storage
        path = OUT / f"abd-{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        serve = _in_tree(tree, "import runpy; runpy.run_module('bridge', run_name='__main__')")
        started = time.perf_counter()
        bridge = Proc(f"abd-{name}", [*serve, "--config", str(path), "serve"])
        try:
            first, now = wait_delivered(fake, count, started, name, sender=bridge)
            cpu = bridge.cpu_seconds()
        finally:
            bridge.stop()
        requests = int(procs.get_json(fake.url + "/_stats")["requests"])
    per_k = requests / count * 1000
    after_first = count / max(now - first, 1e-9)
    return Run(count / (now - started), cpu / count * 1e6, per_k, first - started, after_first)


@contextmanager
def _cluster() -> Iterator[Cluster]:
    cluster = Cluster().start(durable=True)
    try:
        yield cluster
    finally:
        cluster.stop()


def run(
    count: int, reps: int, base: str = THREADS_COMMIT, stores: tuple[str, ...] = STORES
) -> ABResult:
    OUT.mkdir(parents=True, exist_ok=True)
    old = threads_tree(base)
    trees = {"threads": old, "asyncio": procs.REPO}
    result = ABResult(count, reps, base)
    with _cluster() as cluster:
        backlogs = Backlogs(old, count, cluster)
        for rep in range(reps):
            for store in stores:
                for tree in TREES:
                    name = f"{store.lower()}_{tree}_{rep}"
                    point = drain(trees[tree], name, backlogs.storage(store, tree, name), count)
                    result.runs.setdefault((store, tree), []).append(point)
                    print(
                        f"rep {rep} {store} {tree}: {point.rate:,.0f} messages/s, "
                        f"{point.cpu_us:.0f} µs bridge CPU/message, "
                        f"{point.requests:.1f} requests/1,000 messages, "
                        f"first arrival after {point.first_secs:.2f}s, "
                        f"{point.after_first:,.0f} messages/s from it",
                        flush=True,
                    )
    for stale in OUT.glob("abd-*.db*"):
        stale.unlink()
    shutil.rmtree(old, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--base", default=THREADS_COMMIT, help="the thread version's commit")
    parser.add_argument("--store", action="append", choices=STORES, help="default: both")
    args = parser.parse_args(argv)
    stores = tuple(args.store or STORES)
    result = run(args.count, args.reps, args.base, stores)
    for store in stores:
        for tree in TREES:
            median = result.median(store, tree)
            print(
                f"{store} {tree}: median {median.rate:,.0f} messages/s, "
                f"{median.cpu_us:.0f} µs CPU/message"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
