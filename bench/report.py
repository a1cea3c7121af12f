"""Write docs/benchmarks.md: the report of the last run, and the decision log kept as it is.

One present tense: the file is what the last ``make bench`` measured, followed by a short
decision log (one entry per decision: what, the figure, the date) between ``<!-- decisions -->``
and ``<!-- /decisions -->``, which a run keeps and people edit; history lives in git. The
headline figures of each run are stored in an HTML comment, so the next run can show them
beside its own: before/after figures of a change come from two plain ``make bench`` runs.
Profiles (py-spy tables) go to ``bench/out/profiles.md``, not into the report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

DECISIONS_START = "<!-- decisions -->"
DECISIONS_END = "<!-- /decisions -->"
_FIGURES = re.compile(r"<!-- figures: (\{.*?\}) -->", re.DOTALL)
#: The figures shown beside the previous run (every figure stays in the HTML comment).
HEADLINE = (
    "intake c64 webhooks/s",
    "intake c64 / durable",
    "intake c64 / durable, median of pairs",
    "drain bridge msg/s",
    "ab drain sqlite asyncio / threads",
    "ab drain pg asyncio / threads",
    "ab drain sqlite delivery asyncio / threads",
    "ab drain pg delivery asyncio / threads",
    "e2e p50 ms",
    "pg intake x2 c64 webhooks/s",
    "pg drain x2 msg/s",
)

DEFAULT_DECISIONS = """## Decision log

One entry per decision: what, the figure that decided it, the date. Kept by `bench/run.py`.
"""


def decisions_of(text: str) -> str:
    start, end = text.find(DECISIONS_START), text.find(DECISIONS_END)
    if start < 0 or end < start:
        return DEFAULT_DECISIONS
    return text[start + len(DECISIONS_START) : end].strip("\n") + "\n"


def figures_of(text: str) -> dict[str, Any]:
    found = _FIGURES.search(text)
    if not found:
        return {}
    loaded: dict[str, Any] = orjson.loads(found.group(1))
    return loaded


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")
    else:
        text = f"{value:,}"
    return text + unit


def render(
    machine: list[tuple[str, str]],
    sections: list[str],
    figures: dict[str, Any],
    previous: dict[str, Any],
    decisions: str,
) -> str:
    lines = ["# Benchmarks", "", "The last `make bench` (`bench/run.py` writes everything but the"]
    lines += ["decision log at the bottom, which it keeps).", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine]
    lines.append("")
    lines += sections
    shown = [key for key in HEADLINE if key in figures]
    if previous and shown:
        lines += ["## Beside the previous run", ""]
        lines += ["| figure | previous | this run |", "|---|---:|---:|"]
        lines += [f"| {key} | {fmt(previous.get(key))} | {fmt(figures[key])} |" for key in shown]
        lines.append(f"\nPrevious run: {previous.get('_date', '?')}; this run: {figures['_date']}.")
        lines.append("")
    lines += [DECISIONS_START, decisions.rstrip("\n"), DECISIONS_END, ""]
    lines.append(f"<!-- figures: {orjson.dumps(figures).decode()} -->")
    return "\n".join(lines) + "\n"


def write(
    path: Path, machine: list[tuple[str, str]], sections: list[str], figures: dict[str, Any]
) -> None:
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    text = render(machine, sections, figures, figures_of(old), decisions_of(old))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
