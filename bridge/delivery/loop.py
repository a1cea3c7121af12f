"""The delivery loop: claim due messages, batch them, upload, and record every outcome.

Outcomes (per batch; one canonical ``batch`` log line each; recorded by
:mod:`bridge.delivery.outcomes`):

* **2xx** - ack: the messages are delivered.
* **transient** (network, 408/410/429/460, 5xx, an upload past ``segment.total_timeout_secs``,
  and every refusal of the endpoint or the whole request: 3xx, 401/403, 404/405, 413, 501/505)
  - the messages go back to the store,
  due again after the retry policy's backoff (never before ``Retry-After``), and the whole
  destination pauses until then, so an outage costs one probe per backoff, not a flood.
* **permanent** (400, 422: a message is wrong) - One bad message spoils a whole batch, so the
  batch is split in halves, each sent again, recursively, until the culprits stand alone; only
  single messages that are refused become dead letters (``rejected_by_segment``).
* a message older than ``retry.max_age_secs`` when a try fails becomes a dead letter
  (``max_age_exceeded``), never nothing.

At-least-once: the store leases what we claim; if the process dies, the lease expires and the
messages are claimed again. Resends collapse in Segment (deterministic messageIds).

When to send (adaptive batching): with no upload in flight, what is due goes at once (an event
reaches Segment within milliseconds at a quiet hour); while uploads are in flight, a free slot
gathers a fuller batch until it is full, its oldest message is ``batch.timeout_secs`` old, or an
upload finishes. So requests grow with load only up to one per upload's round trip, and a
backlog always goes in full batches. A stuck upload (bounded by its total deadline) holds one
slot; the loop keeps claiming into the others.

Dry-run destinations (no write key) are never claimed: :mod:`bridge.delivery.dryrun` logs what
waits for them and leaves it queued.

Time comes from the injected ``clock`` (tests simulate hours of outage without sleeping) through
:class:`~bridge.delivery.clocks.StoreClock`, which never steps back; pauses use the monotonic
clock (by default the injected clock itself when one is injected); only :meth:`Delivery.run`'s
waits for new arrivals use real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

from bridge import logs
from bridge.config import DeliveryConfig
from bridge.delivery.arrivals import Arrivals
from bridge.delivery.clocks import StoreClock
from bridge.delivery.dryrun import DryRun
from bridge.delivery.elsewhere import Elsewhere
from bridge.delivery.outcomes import DrainReport, Outcomes
from bridge.delivery.retry import RetryPolicy
from bridge.delivery.sinks import Sink
from bridge.delivery.status import DestinationStatus
from bridge.delivery.uploads import Uploads
from bridge.delivery.wire import SEPARATOR_BYTES
from bridge.errors import StorageUnavailableError
from bridge.metrics import Metrics
from bridge.store import ClaimedMessage, Store

__all__ = ["Delivery", "DrainReport"]

log = logs.get(__name__)

#: How long a claim is ours. After a crash, its messages are claimed again once it expires.
DEFAULT_LEASE_SECS = 120.0
PRUNE_EVERY_SECS = 600.0
#: Re-check the store at least this often without a wake-up: work that another process queued
#: (a ``dead-letters replay`` from the CLI) starts within this time. The check is one indexed
#: ``min(due_at)``, so a short interval costs nothing measurable.
IDLE_MAX_SECS = 2.0
#: A claim sized by bytes aims at this share of ``batch.max_bytes`` per batch (see _batch_fit).
BYTES_FILL = 0.98
HAND_BACK_SECS = 5.0  # after the grace period, time allowed to return unfinished batches
ERROR_PAUSE_SECS = 1.0  # after the store failed us
#: An ack is retried until this long before the batch's lease ends (clock drift, the ack's
#: own round trip): past the lease the messages are another claim's to deliver.
ACK_MARGIN_SECS = 5.0


class Delivery:
    def __init__(
        self,
        store: Store,
        sinks: Mapping[str, Sink],
        config: DeliveryConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        metrics: Metrics | None = None,
        lease_secs: float | None = None,
        retention_secs: float | None = None,
        policy: RetryPolicy | None = None,
        known_only: bool = False,
    ) -> None:
        self._store = store
        #: A shared queue (PostgreSQL): claim only configured destinations (elsewhere.py).
        self._known_only = known_only
        self._config = config
        # An injected clock without a monotonic one serves as both (tests move one clock).
        self._monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self._clock = StoreClock(clock, self._monotonic)
        # A claim must outlive the wait for a full batch plus the uploads (a split included),
        # or our own next claim would take the same messages again.
        self._lease_secs = lease_secs or max(DEFAULT_LEASE_SECS, 2 * config.batch.timeout_secs + 60)
        self._retention_secs = retention_secs
        self._policy = policy or RetryPolicy.from_config(config.retry)
        self._outcomes = Outcomes(
            store, self._policy, self._clock, metrics, {}, monotonic=self._monotonic
        )
        self._dry_run = DryRun(store, metrics, self._monotonic)
        self._elsewhere = Elsewhere(store, metrics, self._monotonic)
        self._uploads = Uploads(
            store,
            self._outcomes,
            concurrency=config.concurrency,
            max_events=config.batch.max_events,
            max_bytes=config.batch.max_bytes,
            clock=self._clock,
            monotonic=self._monotonic,
            ack_window_secs=self._lease_secs - config.batch.timeout_secs - ACK_MARGIN_SECS,
        )
        self._use(sinks)
        # While a partial batch gathers, only arrivals that can fill it wake the loop (see wake).
        self._arrivals = Arrivals()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._pruned_at: float | None = None
        self._backlog = False  # the last claim was full: more is due (see _free)
        self._message_bytes = 0.0  # the last claim's average message size (see _batch_fit)

    def _use(self, sinks: Mapping[str, Sink]) -> None:
        self._uploads.use(sinks)
        self._outcomes.reconfigure({name: sink.dry_run for name, sink in sinks.items()})
        self._destinations = self._outcomes.destinations
        self._dry_run.configure([name for name, sink in sinks.items() if sink.dry_run])
        self._live = [name for name, sink in sinks.items() if not sink.dry_run]
        self._elsewhere.configure(list(sinks))

    # ---- the public surface ------------------------------------------------------------

    def wake(self, arrived: int = 1) -> None:
        """``arrived`` new messages were committed: look now instead of at the next due time.

        While a partial batch waits for companions, a wake-up only counts once enough messages
        have arrived to fill it: claiming on every commit cost a write transaction (an fsync)
        per intake round for a handful of messages, a quarter of the writer thread's time under
        intake load (docs/benchmarks.md). At its age the batch takes what arrived and leaves.
        """
        self._arrivals.note(arrived)

    def replace_sinks(self, sinks: Mapping[str, Sink]) -> None:
        """Use new destinations (SIGHUP reload); batches in flight finish with the old sinks.
        A destination that got its write key is claimed from at once (its dry-run backlog
        included); one that lost it is left alone from the next claim on."""
        self._use(sinks)
        self._arrivals.poke()

    def paused_until(self, destination: str) -> float:
        """When the destination's pause ends, on the store's (epoch) clock."""
        remaining = self._destinations[destination].paused_until - self._monotonic()
        return self._clock() + remaining

    def last_errors(self) -> dict[str, str | None]:
        """Each destination: the detail of its last failed upload (None: none since start or
        the last reload). For the console's overview."""
        return {name: d.last_error for name, d in self._destinations.items()}

    def paused(self) -> dict[str, bool]:
        """Each destination: is it waiting out a backoff now? (``/metrics``)

        ``paused_until`` is on the monotonic clock, so it is compared with the monotonic clock:
        compared with epoch time it was always in the past and the gauge always 0."""
        mono = self._monotonic()
        return {name: d.paused_until > mono for name, d in self._destinations.items()}

    def statuses(self) -> list[DestinationStatus]:
        """Each destination's state (pause, last answer), for metrics, readiness and ``stats``."""
        mono, now = self._monotonic(), self._clock()
        live = set(self._live)
        return [
            DestinationStatus(
                name=name,
                mode="live" if name in live else "dry-run",
                paused_until=now + (d.paused_until - mono) if d.paused_until > mono else None,
                failures=d.failures,
                last_status=d.last_status,
                last_error=d.last_error,
                last_attempt_at=d.last_attempt_at,
            )
            for name, d in self._destinations.items()
        ]

    async def run_once(self) -> DrainReport:
        """One round: claim what is due now, deliver it, and wait for every outcome (then close
        the sinks' connections, as :meth:`drain` does)."""
        report = DrainReport()
        try:
            claimed = await self._claim(self._claim_limit())
            tasks = await self._uploads.start(claimed, report)
            await self._uploads.settle(tasks)
            await self._dry_run.show()
        finally:
            await self._uploads.close()
        return report

    async def drain(self) -> DrainReport:
        """Deliver until nothing is due (tests, the CLI, benchmarks): the pipeline of
        :meth:`run` without its waits. Ends when a claim finds nothing and no batch is in flight
        (a paused destination claims nothing), so it is bounded by the backlog.

        Like :meth:`run_once`, a one-shot: the sinks' connections close when it returns (they
        open again at the next upload); :meth:`run` keeps them alive until :meth:`stop`."""
        try:
            return await self._pump(wait=False)
        finally:
            await self._uploads.close()

    async def run(self) -> None:
        """The background loop, until :meth:`stop`. Never dies of an error: it logs and waits."""
        self._runner = asyncio.current_task()
        while not self._stopping:
            try:
                await self._pump(wait=True)
            except StorageUnavailableError as exc:
                log.warning("delivery_storage_unavailable", detail=str(exc))
                await self._wait(ERROR_PAUSE_SECS)
            except Exception:
                log.exception("delivery_loop_error")
                await self._wait(ERROR_PAUSE_SECS)

    async def _pump(self, *, wait: bool) -> DrainReport:
        """Keep up to ``concurrency`` batches in flight, claiming more as each one finishes, so
        the store's claim and ack overlap with uploads instead of alternating with them.

        With nothing in flight, what is due goes at once; with uploads in flight, a free slot
        gathers a fuller batch (:meth:`_gather`). A free slot is never left idle behind a slow
        upload: the wait for a finished upload also ends at a new arrival.

        A claim that found nothing is not repeated just because an upload finished: only an
        arrival, a batch handed back, a wait that ran its course, or :data:`IDLE_MAX_SECS`
        since (something may have fallen due) makes the next one worth its write transaction.
        Under load, half of all claims were such empty ones, each taking SQLite's write lock
        (docs/benchmarks.md)."""
        report = DrainReport()
        tasks: set[asyncio.Task[None]] = set()
        # Until then (monotonic), the last claim found nothing and nothing since can have
        # made more due; 0: claim. A held or retried message falls due by the clock alone.
        dry_until = 0.0
        try:
            while not self._stopping:
                retried = report.retried
                tasks = self._reap(tasks)
                free = self._free(tasks)
                claimed: list[ClaimedMessage] = []
                dry = self._monotonic() < dry_until and not self._arrivals.count
                if free > 0 and not (wait and dry):
                    limit = free * self._batch_fit()
                    claimed = await (
                        self._gather(limit, tasks) if wait and tasks else self._claim(limit)
                    )
                    dry_until = 0.0 if claimed else self._monotonic() + IDLE_MAX_SECS
                if claimed:
                    tasks |= await self._uploads.start(claimed, report)
                elif tasks and wait and free > 0:
                    fired = await self._arrivals.wait(IDLE_MAX_SECS, tasks)
                    # Still dry only if what ended the wait was an upload that handed nothing
                    # back (an arrival or the timeout may have made messages due).
                    if fired or report.retried != retried or not any(t.done() for t in tasks):
                        dry_until = 0.0
                elif tasks:
                    await self._uploads.wait(tasks)
                    if report.retried != retried:
                        dry_until = 0.0
                elif wait:
                    await self._dry_run.show()
                    if self._known_only:
                        await self._elsewhere.check(self._clock())
                    await self._idle()
                    await self._maybe_prune()
                    dry_until = 0.0
                else:
                    await self._dry_run.show()
                    await self._next_due_at()  # clamps due times a clock step left far ahead
                    break
        finally:
            await self._uploads.settle(tasks)
        return report

    def _free(self, tasks: set[asyncio.Task[None]]) -> int:
        """Batches' worth to claim now: one per free upload slot, and while a backlog is
        being drained (the last claim was full), one per slot again as soon as no batch
        waits for a slot. That claim then runs while every slot uploads, so the next batches
        are ready when a slot frees, and it shares the writer's transaction with the acks
        queued meanwhile (bridge.store.sqlite.store.ack). Bounded: at most one claim waits
        ahead; at a quiet hour claims are never full, so adaptive batching is unchanged."""
        free = self._config.concurrency - len(tasks)
        if free <= 0 and self._backlog and self._uploads.waiting == 0:
            return self._config.concurrency
        return free

    def _reap(self, tasks: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
        done = {task for task in tasks if task.done()}
        self._uploads.log_failures(done)
        return tasks - done

    async def stop(self, grace_secs: float) -> None:
        """Stop claiming; let batches in flight finish within ``grace_secs``, else hand them back.

        A batch handed back is due again at once; the store counts that as an attempt. If even
        that fails (store gone), nothing is lost: the lease expires and the batch is claimed
        again after a restart.
        """
        self._stopping = True
        self._arrivals.close()
        runner = self._runner
        inflight = self._uploads.inflight
        waiting: set[asyncio.Task[None]] = set(inflight)
        if runner is not None and not runner.done() and runner is not asyncio.current_task():
            waiting.add(runner)
        if waiting:
            await asyncio.wait(waiting, timeout=grace_secs)
        leftovers = [task for task in inflight if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=HAND_BACK_SECS)
        if runner is not None and not runner.done():
            await asyncio.wait({runner}, timeout=HAND_BACK_SECS)
        await self._uploads.close()

    # ---- claiming ----------------------------------------------------------------------

    def _claim_limit(self) -> int:
        return self._config.concurrency * self._config.batch.max_events

    def _all_paused(self) -> bool:
        """Nothing to claim for: every destination with a write key is paused (or none has
        one: dry-run destinations are never claimed). No destination at all claims, so that
        messages for a destination no longer configured are buried."""
        if not self._destinations:
            return False
        mono = self._monotonic()
        return all(self._destinations[name].paused_until > mono for name in self._live)

    async def _claim(self, limit: int) -> list[ClaimedMessage]:
        if self._stopping or self._all_paused():
            self._backlog = False
            return []
        now = self._clock()
        exclude = self._dry_run.destinations
        self._backlog = False
        if self._known_only:
            claimed = await self._store.claim(now, limit, self._lease_secs, only=self._live)
        elif exclude:
            claimed = await self._store.claim(now, limit, self._lease_secs, exclude=exclude)
        else:
            claimed = await self._store.claim(now, limit, self._lease_secs)
        self._backlog = len(claimed) >= limit
        if claimed:
            self._message_bytes = sum(len(m.payload) for m in claimed) / len(claimed)
        return claimed

    async def _gather(self, limit: int, uploads: set[asyncio.Task[None]]) -> list[ClaimedMessage]:
        """Uploads are in flight: claim due messages, and if fewer than a batch, wait for more
        until the batch is full, its oldest is ``batch.timeout_secs`` old, or an upload
        finishes (then the slot it frees would idle: send). Retries are old: they go at once."""
        batch = self._config.batch
        arrivals = self._arrivals
        # Arrivals are counted from before each claim: one the claim already took may make the
        # next claim early (harmless); one it missed is never forgotten.
        arrivals.restart(batch.max_events)
        try:
            claimed = await self._claim(limit)
            if not claimed:
                return claimed
            age = self._clock() - min(m.enqueued_at for m in claimed)
            deadline = self._monotonic() + batch.timeout_secs - age
            while (room := self._room(claimed)) > 0 and not self._stopping:
                arrivals.want(room)  # arrivals during the claim may already fill it: re-checked
                remaining = deadline - self._monotonic()
                woke = remaining > 0 and await arrivals.wait(remaining, uploads)
                if arrivals.take():  # enough to fill the batch, or the batch is due: take them
                    claimed += await self._claim(limit - len(claimed))
                if not woke:
                    break
            return claimed
        finally:
            arrivals.settle()  # arrivals since the last claim: no idle wait before the next

    def _batch_fit(self) -> int:
        """Messages that fill one batch: ``batch.max_events``, or fewer when messages of the
        last claim's average size fill ``batch.max_bytes`` first (2% short of it, so that a
        few larger messages do not leave a batch of one behind).

        Claiming whole batches' worth makes a backlog leave in full batches without a tail
        batch per claim: claims of 500 messages of ~2 KB went out as 238 + 238 + 24, six
        requests per 1,000 messages where 4.2 carry them (docs/benchmarks.md)."""
        batch = self._config.batch
        if not self._message_bytes:
            return batch.max_events
        fit = int(batch.max_bytes * BYTES_FILL / (self._message_bytes + SEPARATOR_BYTES))
        return max(1, min(batch.max_events, fit))

    def _room(self, claimed: Sequence[ClaimedMessage]) -> int:
        """How many more messages of the same average size fill the batch, by count or by
        bytes (messages of 2-3 KB fill 475 KB long before 500 of them arrive)."""
        batch = self._config.batch
        size = sum(len(m.payload) for m in claimed) + len(claimed)
        by_bytes = int((batch.max_bytes - size) * len(claimed) / size) if size else 0
        return min(batch.max_events - len(claimed), by_bytes)

    async def _idle(self) -> None:
        """Nothing to send now: sleep until the next due time, a pause ends, or a wake-up."""
        if not self._live:  # dry-run only: nothing will ever be claimed; arrivals wake us
            timeout = IDLE_MAX_SECS
        elif self._all_paused():
            mono = self._monotonic()
            resume = min(self._destinations[name].paused_until for name in self._live)
            timeout = resume - mono
        else:
            due = await self._next_due_at()
            now = self._clock()
            if due is None:
                timeout = IDLE_MAX_SECS
            elif due > now:
                timeout = due - now
            else:  # due, yet nothing was claimable (leased elsewhere, dry-run): do not spin
                timeout = self._config.batch.timeout_secs
        await self._wait(min(timeout, IDLE_MAX_SECS))

    async def _next_due_at(self) -> float | None:
        """The store's next due time, clamped to the longest backoff from now.

        A persisted due time further ahead than ``retry.max_backoff_secs`` can only come from a
        wall clock stepped back (the store clock carries a step while running, not across a
        restart): it counts as due in ``max_backoff_secs`` (the store clock advances so that it
        is), so a clock step never stalls delivery beyond one backoff (bridge.delivery.clocks).
        """
        due = await self._store.next_due_at()
        now = self._clock()
        horizon = self._policy.max_backoff_secs
        if due is not None and due > now + horizon:
            self._clock.not_before(due - horizon)
            log.warning(
                "due_time_clamped",
                ahead_secs=round(due - now, 1),
                detail="a due time lay beyond the longest backoff (a clock step?); "
                f"it counts as due in {horizon:g}s",
            )
            return self._clock() + horizon
        return due

    async def _wait(self, seconds: float) -> bool:
        """Wait for a wake-up (True) or ``seconds`` of real time (False)."""
        return await self._arrivals.wait(seconds)

    async def _maybe_prune(self) -> None:
        """Prune when idle, at most every PRUNE_EVERY_SECS: never competes with a backlog."""
        now = self._clock()
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_SECS:
            self._pruned_at = now
            await self.prune()

    async def prune(self) -> int:
        """Forget delivered messages older than the retention (none without one)."""
        if self._retention_secs is None:
            return 0
        pruned = await self._store.prune_delivered(self._clock() - self._retention_secs)
        if pruned:
            log.info("pruned_delivered", rows=pruned)
        return pruned
