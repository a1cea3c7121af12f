"""A/B of the sustained end-to-end rate: the bridge before "keep first, judge after" against this
tree, 60 s of full load each, in one run.

    python -m bench.ab_sustained --secs 60 --reps 1

Why: issue 20 moved mapping out of the request path into a process of its own, so one ``serve``
uses a second core; the figure that says whether that pays is what reaches Segment per second
at full load (and what is left behind when the load stops), beside the same load on the tree of
:data:`BASE` (the last commit that mapped in the request path, one process), measured on the
same machine in the same run. Runs alternate before, after, before, ... (``bench.sustained``
each: wrk at 64 connections, the fake Segment in its own process).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs, sustained

#: The last commit whose request path mapped each webhook before committing it.
BASE = "bd39a1b"
TREES = ("before", "after")


@dataclass
class ABSustained:
    seconds: float
    reps: int
    base: str = BASE
    runs: dict[str, list[sustained.SustainedResult]] = field(
        default_factory=lambda: {tree: [] for tree in TREES}
    )

    def delivered(self, tree: str) -> float:
        """Median messages/s arrived at the fake Segment inside the window."""
        return statistics.median(r.delivered_rate for r in self.runs[tree])

    def acknowledged(self, tree: str) -> float:
        return statistics.median(r.intake.rate for r in self.runs[tree])

    def backlog(self, tree: str) -> int:
        return int(statistics.median(r.backlog_at_end for r in self.runs[tree]))

    def catch_up(self, tree: str) -> float:
        return statistics.median(r.catch_up_secs for r in self.runs[tree])


def base_tree(base: str = BASE) -> Path:
    """The ``bridge`` package of ``base`` (``git archive``), in a temporary directory."""
    return procs.tree_of(base, "bridge", prefix="ab-sustained-")


def run(seconds: float, reps: int) -> ABSustained:
    result = ABSustained(seconds, reps)
    before = base_tree()
    try:
        for rep in range(reps):
            for tree in TREES:
                where = before if tree == "before" else None
                result.runs[tree].append(
                    sustained.run(seconds, tree=where, name=f"ab-sustained-{tree}-{rep}")
                )
    finally:
        shutil.rmtree(before, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--secs", type=float, default=60.0)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args(argv)
    procs.OUT.mkdir(parents=True, exist_ok=True)
    res = run(args.secs, args.reps)
    for tree in TREES:
        print(
            f"{tree}: acknowledged {res.acknowledged(tree):,.0f}/s, arrived "
            f"{res.delivered(tree):,.0f}/s, backlog {res.backlog(tree):,}, catch-up "
            f"{res.catch_up(tree):.1f} s; each run "
            + ", ".join(f"{r.delivered_rate:,.0f}" for r in res.runs[tree])
        )
    print(f"after / before (arrived): {res.delivered('after') / res.delivered('before'):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
