"""The last hour of traffic, per minute, from the counters this process already keeps.

Why in-process: the chart's three lines are Prometheus counters the bridge increments anyway
(:mod:`bridge.metrics`), so the picture costs the store nothing, whatever the traffic; a query
per refresh over an hour of rows would. The price: the chart starts empty when ``serve``
starts, and it counts what this process saw (with several replicas, each shows its own).

* in: webhooks stored (accepted, duplicates and dead-lettered; not refusals);
* out: messages Segment accepted;
* errors: failed uploads (transient or permanent) and new dead letters.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from bridge.metrics import Metrics

MINUTES = 60
SAMPLE_SECS = 5.0
#: The outcomes of ``synap_bridge_webhooks_received`` that stored the webhook.
STORED_OUTCOMES = frozenset({"accepted", "duplicate", "dead_lettered"})
FAILED_RESULTS = frozenset({"transient", "permanent"})


@dataclass(frozen=True, slots=True)
class Minute:
    start: float  # epoch seconds
    received: int
    delivered: int
    errors: int


def _total(counter: Counter, keep: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and keep(sample.labels)
    )


class Traffic:
    """Per-minute deltas of three counter totals, for the last :data:`MINUTES` minutes."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._clock = clock
        self._last = self._totals()
        self._minutes: deque[list[int]] = deque(maxlen=MINUTES + 1)  # [minute, in, out, errors]

    def _totals(self) -> tuple[float, float, float]:
        m = self._metrics
        received = _total(m.webhooks, lambda labels: labels.get("outcome") in STORED_OUTCOMES)
        failed = _total(m.attempts, lambda labels: labels.get("result") in FAILED_RESULTS)
        return received, _total(m.delivered), failed + _total(m.dead_lettered)

    @property
    def received_total(self) -> int:
        """Webhooks stored since this process started."""
        return round(self._totals()[0])

    def sample(self) -> None:
        """Add what the counters moved since the last sample to the current minute."""
        totals = self._totals()
        deltas = [
            max(0, round(now - before)) for now, before in zip(totals, self._last, strict=True)
        ]
        self._last = totals
        minute = int(self._clock() // 60)
        if self._minutes and self._minutes[-1][0] == minute:
            bucket = self._minutes[-1]
            for index, delta in enumerate(deltas, 1):
                bucket[index] += delta
        else:
            self._minutes.append([minute, *deltas])

    def last_hour(self) -> list[Minute]:
        """One entry per minute, oldest first, the current minute last (zeros where quiet)."""
        self.sample()
        now = int(self._clock() // 60)
        known = {row[0]: row for row in self._minutes}
        hour = []
        for minute in range(now - MINUTES + 1, now + 1):
            _, received, delivered, errors = known.get(minute, (minute, 0, 0, 0))
            hour.append(Minute(minute * 60.0, received, delivered, errors))
        return hour

    async def run(self, interval: float = SAMPLE_SECS) -> None:
        """Sample until cancelled (so a quiet page still has the minutes it did not show)."""
        while True:
            await asyncio.sleep(interval)
            self.sample()
