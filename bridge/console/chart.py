"""The traffic chart's geometry: minutes in, SVG coordinates out (the template draws them).

Pure, so the drawing is checked without a browser. Server-rendered SVG: no script, no library,
and it scales to a phone's width through its ``viewBox``. Colours come from the stylesheet
(classes), since the Content-Security-Policy allows no inline style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.console.traffic import Minute

WIDTH = 600
HEIGHT = 180
LEFT = 44  # room for the y-axis labels
RIGHT = 8
TOP = 10
BOTTOM = 24  # room for the x-axis labels
SERIES = (("received", "webhooks in"), ("delivered", "events out"), ("errors", "errors"))


@dataclass(frozen=True, slots=True)
class Line:
    key: str
    label: str
    points: str  # "x,y x,y ..." for <polyline points>
    total: int


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    y: float
    text: str
    anchor: str = "middle"  # SVG text-anchor: the last time label ends at the plot's edge


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    lines: tuple[Line, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    plot: tuple[float, float, float, float]  # x0, y0, x1, y1 of the plotting area
    summary: str  # the chart in one sentence, for screen readers


def nice_ceiling(value: int) -> int:
    """The y-axis top: 1, 2 or 5 times a power of ten, at least ``value`` (and at least 5)."""
    top = 5
    step = 1
    while top < value:
        for factor in (1, 2, 5):
            if step * factor * 10 >= value:
                return step * factor * 10
        step *= 10
        top = step * 10
    return top


def draw(minutes: Sequence[Minute]) -> Chart:
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    peak = max((getattr(m, key) for m in minutes for key, _ in SERIES), default=0)
    top = nice_ceiling(peak)
    span = max(1, len(minutes) - 1)

    def x(index: int) -> float:
        return round(x0 + (x1 - x0) * index / span, 1)

    def y(value: int) -> float:
        return round(y1 - (y1 - y0) * value / top, 1)

    lines = tuple(
        Line(
            key,
            label,
            " ".join(f"{x(i)},{y(getattr(m, key))}" for i, m in enumerate(minutes)),
            sum(getattr(m, key) for m in minutes),
        )
        for key, label in SERIES
    )
    last = len(minutes) - 1
    x_ticks = tuple(
        Tick(
            x(i),
            HEIGHT - 6,
            datetime.fromtimestamp(m.start, UTC).strftime("%H:%M"),
            "end" if i == last else "start" if i == 0 else "middle",
        )
        for i, m in enumerate(minutes)
        if (i % 15 == 0 and last - i >= 8) or i == last
    )
    y_ticks = tuple(Tick(x0 - 6, y(v), str(v), "end") for v in (0, top // 2, top))
    totals = ", ".join(f"{line.total} {line.label}" for line in lines)
    summary = f"Last {len(minutes)} minutes, per minute: {totals}."
    return Chart(WIDTH, HEIGHT, lines, x_ticks, y_ticks, (x0, y0, x1, y1), summary)
