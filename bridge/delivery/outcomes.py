"""What happens after an upload: the store, the destination's pause, metrics, one log line.

Kept apart from :mod:`bridge.delivery.loop` (which decides *when* to send) so the rules that decide
a message's fate read in one place:

* delivered - ack; the destination's failure streak ends. An ack the store cannot take (a
  PostgreSQL restart, a locked file) is tried again, with backoff, until it lands or the
  batch's lease would end: given up, the messages go out again after the lease (duplicates
  Segment collapses by messageId). Every failed try counts in ``ack_retries``, every message
  given up in ``acks_lost``, with a log line each (docs/reliability.md).
* transient - the destination pauses for the retry policy's backoff (never shorter than
  ``Retry-After``); sibling batches failing in the same outage extend it but count once. Every
  message goes back to the store due at the end of the pause, except those past ``max_age``,
  which become ``max_age_exceeded`` dead letters.
* permanent - only a single message is buried here (``rejected_by_segment``); a larger batch is
  split by the caller until the culprit stands alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bridge import logs
from bridge.delivery.batching import Batch
from bridge.delivery.retry import RetryPolicy
from bridge.errors import DeliveryError, StorageUnavailableError, TransientDeliveryError
from bridge.metrics import Metrics
from bridge.store import ClaimedMessage, DeadReason, Store

log = logs.get("bridge.delivery.loop")

Outcome = Literal["delivered", "transient", "permanent"]

#: The first wait before an ack is tried again; doubled after each failure up to the most.
ACK_RETRY_FIRST_SECS = 0.05
ACK_RETRY_MAX_SECS = 2.0


@dataclass
class DrainReport:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0  # handed back to the store for a later try
    dead: int = 0
    batches: int = 0  # uploads attempted (split halves included)


@dataclass
class DestinationState:
    failures: int = 0  # transient failures in a row
    paused_until: float = 0.0  # on the monotonic clock (bridge.delivery.clocks)
    last_status: int | None = None  # the last upload's HTTP status (None: no answer, or none yet)
    last_error: str | None = None  # the last failure's detail; None once a batch is delivered
    last_attempt_at: float | None = None  # epoch seconds


class Outcomes:
    """Writes each upload's outcome to the store and keeps the destinations' pause state."""

    def __init__(
        self,
        store: Store,
        policy: RetryPolicy,
        clock: Callable[[], float],
        metrics: Metrics | None,
        dry_run: Mapping[str, bool],
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock  # epoch seconds for the store (a StoreClock in the loop)
        self._monotonic = monotonic or clock  # pauses
        self._metrics = metrics
        self._dry_run = dict(dry_run)
        self.destinations = {name: DestinationState() for name in dry_run}

    def reconfigure(self, dry_run: Mapping[str, bool]) -> None:
        """New sinks after a reload: new destinations start fresh, and every pause ends, so a
        destination paused for a wrong write key is tried again at once with the new one."""
        self._dry_run = dict(dry_run)
        self.destinations = {name: DestinationState() for name in dry_run}

    async def record(
        self,
        batch: Batch,
        error: DeliveryError | None,
        latency_ms: float,
        report: DrainReport,
        acks_until: float = float("inf"),
    ) -> None:
        """Apply the outcome; a delivered batch's ack is retried until ``acks_until`` (on the
        monotonic clock: the end of its lease, less a margin)."""
        now = self._clock()
        state = self.destinations[batch.destination]
        state.last_attempt_at = now
        state.last_status = 200 if error is None else error.status
        state.last_error = None if error is None else error.detail
        outcome: Outcome
        if error is None:
            outcome = "delivered"
            await self._ack(batch, acks_until)
            state.failures, state.paused_until = 0, 0.0
            report.delivered += len(batch.messages)
            if self._metrics:
                self._metrics.delivered.labels(batch.destination).inc(len(batch.messages))
                self._metrics.last_delivery.set(now)
        elif isinstance(error, TransientDeliveryError):
            outcome = "transient"
            await self._transient(batch, error, state, now, report)
        else:
            outcome = "permanent"
            state.last_error = error.detail
            if len(batch.messages) == 1:
                why = DeadReason("rejected_by_segment", error.detail)
                await self.bury(batch.messages, why, report, error=error.detail)
        self._observe(batch, outcome, error, latency_ms)

    async def _ack(self, batch: Batch, acks_until: float) -> None:
        """Mark the batch delivered, trying again while the store fails and the lease lasts.

        Segment has the messages already: an ack that never lands sends them all again after
        the lease (a PostgreSQL restart once cost 750 duplicates that way). Retrying is safe:
        the store applies an outcome only to its own unexpired claims, and keeps the claim's
        token when a write fails."""
        wait = ACK_RETRY_FIRST_SECS
        failures = 0
        while True:
            try:
                await self._store.ack(batch.ids, self._clock())
            except StorageUnavailableError as exc:
                failures += 1
                if self._metrics:
                    self._metrics.ack_retries.labels(batch.destination).inc()
                if self._monotonic() + wait >= acks_until:
                    self._ack_lost(batch, failures, exc)
                    raise
                if failures == 1:
                    log.warning(
                        "ack_retry",
                        destination=batch.destination,
                        messages=len(batch.messages),
                        detail=f"delivered, not yet marked: {exc}; retrying until the lease ends",
                    )
                await asyncio.sleep(wait)
                wait = min(2 * wait, ACK_RETRY_MAX_SECS)
                continue
            if failures:
                log.info(
                    "ack_landed",
                    destination=batch.destination,
                    messages=len(batch.messages),
                    attempts=failures + 1,
                )
            return

    def _ack_lost(self, batch: Batch, failures: int, exc: StorageUnavailableError) -> None:
        if self._metrics:
            self._metrics.acks_lost.labels(batch.destination).inc(len(batch.messages))
        log.error(
            "ack_lost",
            destination=batch.destination,
            messages=len(batch.messages),
            attempts=failures,
            detail=f"{exc}; the lease ends: these messages go out again (duplicates)",
        )

    async def _transient(
        self,
        batch: Batch,
        error: TransientDeliveryError,
        state: DestinationState,
        now: float,
        report: DrainReport,
    ) -> None:
        mono = self._monotonic()
        self.pause(batch.destination, error)  # done already if the upload called it
        expired = [m for m in batch.messages if self._policy.expired(m.enqueued_at, now)]
        if expired:
            detail = f"not delivered within {self._policy.max_age_secs:.0f}s; last: {error.detail}"
            why = DeadReason("max_age_exceeded", detail)
            await self.bury(expired, why, report, error=error.detail)
        live = [m for m in batch.messages if not self._policy.expired(m.enqueued_at, now)]
        await self.hand_back(live, now + (state.paused_until - mono), error.detail, report)
        if self._metrics and live:
            self._metrics.retried.labels(batch.destination).inc(len(live))

    def pause(self, destination: str, error: TransientDeliveryError) -> None:
        """Pause ``destination`` for a transient failure (the first of an outage counts; a
        sibling failing meanwhile only extends the pause to its ``Retry-After``).

        Synchronous, so the upload calls it before it frees its slot: a batch queued behind it
        (the loop claims ahead during a drain) then sees the pause and hands its batch back
        instead of probing the outage again. Calling it again for the same failure (as
        :meth:`record` does) changes nothing."""
        state = self.destinations[destination]
        state.last_error = error.detail
        mono = self._monotonic()
        if state.paused_until <= mono:
            state.failures += 1
            state.paused_until = mono + self._policy.delay(state.failures, error.retry_after)
            if self._metrics:
                self._metrics.pauses.labels(destination).inc()
        elif error.retry_after is not None:
            state.paused_until = max(state.paused_until, mono + error.retry_after)

    async def hand_back(
        self, messages: Sequence[ClaimedMessage], due_at: float, error: str, report: DrainReport
    ) -> None:
        if messages:
            await self._store.retry_later([m.id for m in messages], due_at, error)
            report.retried += len(messages)

    async def bury(
        self,
        messages: Sequence[ClaimedMessage],
        why: DeadReason,
        report: DrainReport,
        error: str | None = None,
    ) -> None:
        await self._store.bury([m.id for m in messages], why, error or why.detail, self._clock())
        report.dead += len(messages)
        if self._metrics:
            self._metrics.dead_lettered.labels(why.reason).inc(len(messages))
        log.warning(
            "dead_letter",
            reason=why.reason,
            detail=why.detail,
            messages=len(messages),
            message_ids=[m.message_id for m in messages[:10]],
        )

    def _observe(
        self, batch: Batch, outcome: Outcome, error: DeliveryError | None, latency_ms: float
    ) -> None:
        """The canonical ``batch`` line (never the write key: no sink detail carries it)."""
        size = len(batch.messages)
        if self._metrics:
            self._metrics.attempts.labels("ok" if outcome == "delivered" else outcome).inc()
            self._metrics.batch_messages.observe(size)
            self._metrics.batch_bytes.observe(batch.body_bytes)
        if error is None:
            status = None if self._dry_run[batch.destination] else 200
        else:
            status = error.status
        emit = log.info if error is None else log.warning
        emit(
            "batch",
            destination=batch.destination,
            messages=size,
            bytes=batch.body_bytes,
            outcome=outcome,
            attempt=max(m.attempts for m in batch.messages) + 1,
            status=status,
            latency_ms=latency_ms,
            **({"detail": error.detail} if error is not None else {}),
        )
