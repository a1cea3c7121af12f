"""What one destination is doing, as the operator sees it: live or dry-run, paused until when,
the last answer and error.

A plain snapshot on the epoch clock (the delivery keeps pauses on the monotonic clock), read by
``/metrics`` (the paused and refused gauges), ``/readyz`` (its warnings) and the service-state
record that ``stats`` shows (:mod:`bridge.servicestate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bridge.delivery.sinks import AUTH_STATUSES


@dataclass(frozen=True)
class DestinationStatus:
    name: str
    mode: str  # "live" or "dry-run"
    paused_until: float | None = None  # epoch seconds; None when not paused
    failures: int = 0  # transient failures in a row
    last_status: int | None = None  # the last upload's HTTP status (None: none or no answer)
    last_error: str | None = None  # None once a batch is delivered
    last_attempt_at: float | None = None

    @property
    def refused(self) -> bool:
        """True while the destination's last answer refused the write key."""
        return self.last_status in AUTH_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "refused": self.refused}
