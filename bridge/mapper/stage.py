"""The mapping stage's loop: take kept webhooks, judge them, record the verdicts.

Why a loop of its own: mapping is the bridge's most expensive work per webhook (decode,
validate, map, size), and the only part that can fail on what a body says. Outside the request
path, a content bug can no longer refuse a webhook, and intake runs at the pace of a durable
write; in a process of its own (:mod:`bridge.mapper.child`) it runs on another core.

Crash safety: a take counts the try before the mapping runs, and ``record`` marks the webhook
mapped in the transaction that writes its messages. A crash between the two leaves it unmapped,
and mapping it again stores nothing twice (messageIds are deterministic; ``record`` skips a
webhook already recorded).

Poison isolation: a webhook whose mapping raises is kept unmapped with the error; one that kills
the process is seen by its count after the restart. Either way the store hands a webhook tried
before out alone, and past ``max_tries`` it becomes a dead letter ``mapping_failed`` with the
last error, never mapped again on its own (``dead-letters replay`` maps it again on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge import logs
from bridge.config import Config
from bridge.errors import StorageUnavailableError
from bridge.mapper.exam_tests import ExamTestCache
from bridge.mapping import intake
from bridge.mapping.exam_tests import ExamTest, KnownExamTests
from bridge.store import DeadReason, EnqueueReceipt, Judged, MappingStore, UnmappedWebhook
from bridge.store.rows import webhook_ref

log = logs.get(__name__)

#: Webhooks per take: large enough that a take costs little per webhook. They are mapped and
#: recorded ``MappingStore.record_batch`` at a time (SQLite: a short hold of the write lock,
#: with the next ones' mapping between two holds).
BATCH = 128
#: Webhooks per take while the stage catches up (:func:`catching_up`), recorded
#: :data:`CATCH_UP_RECORD` per transaction: fewer commits and lock round trips per webhook than
#: the burst pace's (~2,200 -> ~3,550 mapped/s under full load in 60 s sustained runs,
#: docs/benchmarks.md), longer holds of SQLite's write lock; and each part after the first is
#: mapped while the one before it is recorded (2,477 -> 2,966 msg/s delivered in the same runs).
CATCH_UP_BATCH = 1024
CATCH_UP_RECORD = 512
#: While a record is in flight, the mapping lets the event loop run every this many webhooks,
#: so that a record's round trips to PostgreSQL go on beside it (SQLite's writer is a thread).
OVERLAP_TURN = 32
#: Tries before a webhook that keeps failing becomes a dead letter ``mapping_failed``.
MAX_TRIES = 3
#: A take is leased this long on PostgreSQL (another replica takes it after a crash).
LEASE_SECS = 30.0
#: How often the stage looks without a wake-up (a lost wake, an expired lease, a webhook kept
#: by the CLI or another replica without a notification).
POLL_SECS = 1.0
#: After a storage failure, wait this long before the next look, doubling up to the maximum
#: (a database that is gone must not become a log line every half second).
STORAGE_BACKOFF_SECS = 0.5
MAX_STORAGE_BACKOFF_SECS = 8.0
#: The longest the stage leaves to intake after one round (:func:`yield_secs`).
MAX_YIELD_SECS = 0.05
#: Intake counts as busy this long after the last wake-up that said so (wake-ups come every
#: 2 ms while webhooks arrive, so a burst that ends stops the yielding within this).
INTAKE_BUSY_FRESH_SECS = 0.25


def catching_up(
    now: float,
    taken: list[UnmappedWebhook],
    after_secs: float,
    *,
    already: bool = False,
    full: bool = False,
    intake_busy: bool = False,
) -> bool:
    """Whether the oldest webhook of a take waited longer than ``after_secs`` (the mapping lag);
    a stage ``already`` catching up goes on while its take is ``full``, while ``intake_busy``
    (the load that brought the lag lasts) or while the lag is over half of it. A load that
    lasts is mapped at the fast pace to the end of its backlog, and then at its own pace, with
    intake paced to the mapping: handing it back to the burst pace mapped at half rate while
    intake refilled the backlog, until the lag reached the threshold again (60 s at full
    load: a backlog of 45,000-87,000 left at the end, docs/benchmarks.md). A lag near the
    threshold does not switch pace (and log) every round.

    Why two paces: during a burst intake's commits must not wait long behind the mapper's on
    SQLite's one write lock, so takes are recorded ``record_batch`` at a time; once the lag
    shows the load is not a burst that passes, the mapping is what holds events back, and the
    stage takes :data:`CATCH_UP_BATCH` at a time, recorded :data:`CATCH_UP_RECORD` per
    transaction while the next part is mapped."""
    if not taken:
        return False
    if already and (full or intake_busy):
        return True
    oldest = min(one.webhook.received_at for one in taken)
    return now - oldest > (after_secs / 2 if already else after_secs)


def yield_secs(
    recorded_secs: float,
    *,
    full: bool,
    catching_up: bool,
    intake_busy: bool,
    factor: float = 1.0,
) -> float:
    """How long to leave SQLite's write lock or the database server to intake after a round.

    Why: niceness yields the mapping process's own CPU to ``serve``, but not what its writes
    cost elsewhere: on SQLite intake's commits wait behind the mapper's on the one write lock,
    and on PostgreSQL the server's backends run the mapper's statements at full priority. So
    during a burst, while intake is busy (``serve``'s wake-ups say so) and a take came back
    full (more is waiting than one take holds), the stage pauses ``factor`` times as long as
    the round's records took (``MappingStore.burst_pause``: 1 on SQLite, where the records are
    the lock's hold and wait; 8 on PostgreSQL, whose server runs the statements at full
    priority), the lock and the server to intake. The mapping's own CPU is not paused for:
    niceness already gives it to intake, and a pause as long as the whole round left ~0.45 of
    the 2 cores idle (1,100 -> 1,700 mapped per second during a burst, intake pairs within
    the noise). A burst that passes is then mapped after it; a load that lasts reaches
    ``catch_up_after_secs``, where the stage stops yielding and catches up (with intake at its
    pace). A round that was not full (the mapping keeps up) or an idle intake never waits."""
    if not full or catching_up or not intake_busy:
        return 0.0
    return min(MAX_YIELD_SECS * factor, max(0.0, recorded_secs * factor))


@dataclass(slots=True)
class Report:
    """What one round recorded: for metrics, the delivery's wake-up and the log."""

    mapped: int = 0
    messages: int = 0
    duplicates: int = 0
    superseded: int = 0
    failures: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    #: The stage is at its catch-up pace (``serve`` then paces intake to it: receive.pacing).
    catching_up: bool = False
    #: Seconds the stage left to a busy intake since its last report (:func:`yield_secs`).
    yielded_secs: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        dead = data.get("dead")
        return cls(
            int(data.get("mapped", 0)),
            int(data.get("messages", 0)),
            int(data.get("duplicates", 0)),
            int(data.get("superseded", 0)),
            int(data.get("failures", 0)),
            Counter({str(k): int(v) for k, v in dead.items()} if isinstance(dead, dict) else {}),
            bool(data.get("catching_up", False)),
            float(data.get("yielded_secs", 0.0)),
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "mapped": self.mapped,
            "messages": self.messages,
            "duplicates": self.duplicates,
            "superseded": self.superseded,
            "failures": self.failures,
            "dead": dict(self.dead),
            "catching_up": self.catching_up,
            "yielded_secs": self.yielded_secs,
        }


async def _let_go(work: asyncio.Future[Any]) -> None:
    """Cancel a store call of a round that failed or was cancelled, and wait for it to end, its
    outcome unheard (the round's own error is the one that counts)."""
    work.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await work


class MappingStage:
    """``run`` until cancelled; ``wake`` when webhooks were kept; ``drain`` maps what is left.

    ``config`` is read per round through a callable, so a reload applies to the next webhook.
    ``on_report`` hears of each round that recorded something (metrics, delivery wake-up).
    ``wake(intake_busy=True)``: webhooks were kept while intake was busy (:func:`yield_secs`)."""

    def __init__(
        self,
        store: MappingStore,
        config: Callable[[], Config],
        *,
        clock: Callable[[], float] = time.time,
        on_report: Callable[[Report], None] | None = None,
        batch: int = BATCH,
        max_tries: int = MAX_TRIES,
        poll_secs: float = POLL_SECS,
        catch_up_after_secs: float = 10.0,
        yield_to_intake: bool = True,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._on_report = on_report
        self._batch = batch
        self._max_tries = max_tries
        self._poll_secs = poll_secs
        self._catch_up_after = catch_up_after_secs
        self._yield_to_intake = yield_to_intake
        self._intake_busy_at = -INTAKE_BUSY_FRESH_SECS
        #: Seconds the last round waited for its records (:func:`yield_secs`).
        self._recorded_secs = 0.0
        self._round_full = False
        self._yielded = 0.0
        self.catching_up = False
        self._exam_tests = ExamTestCache()
        #: Catching up: the next take, taken while this one is mapped (:meth:`_take_ahead`).
        self._ahead: asyncio.Future[list[UnmappedWebhook]] | None = None
        #: Catching up: the end of the last round (its last record, then its exam tests, failed
        #: tries and report), finished while the next round maps (:meth:`_end_round`).
        self._carried: asyncio.Future[None] | None = None
        self._woken = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self.rounds = 0

    @classmethod
    def configured(
        cls,
        store: MappingStore,
        config: Callable[[], Config],
        *,
        clock: Callable[[], float] = time.time,
        on_report: Callable[[Report], None] | None = None,
    ) -> MappingStage:
        """The stage with the ``mapper`` section's settings (``serve``'s in-process stage and
        the mapping process build it alike); read once, as a reload does not change them."""
        mapper = config().mapper
        return cls(
            store,
            config,
            clock=clock,
            on_report=on_report,
            batch=mapper.batch,
            max_tries=mapper.max_tries,
            catch_up_after_secs=mapper.catch_up_after_secs,
            yield_to_intake=mapper.yield_to_intake,
        )

    def wake(self, intake_busy: bool = False) -> None:
        if intake_busy:
            self._intake_busy_at = time.monotonic()
        self._idle.clear()
        self._woken.set()

    @property
    def intake_busy(self) -> bool:
        """A wake-up said intake was busy, recently (:data:`INTAKE_BUSY_FRESH_SECS`)."""
        return time.monotonic() - self._intake_busy_at < INTAKE_BUSY_FRESH_SECS

    async def run(self) -> None:
        backoff = STORAGE_BACKOFF_SECS
        try:
            while not self._stopping:
                self._woken.clear()
                try:
                    busy = await self.round(carry=True)
                    if self._stopping:
                        await self._settle_carried()
                except StorageUnavailableError as exc:
                    log.warning("mapping_storage_unavailable", error=str(exc), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_STORAGE_BACKOFF_SECS, backoff * 2)
                    continue
                backoff = STORAGE_BACKOFF_SECS
                if busy:
                    await self._leave_to_intake()
                    continue
                self._idle.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), self._poll_secs)
        finally:
            await self._drop_carried()  # cancelled between two rounds: no record left unheard
            self._stopped.set()

    async def stop(self, deadline: float) -> None:
        """Let the round in progress finish (by the monotonic ``deadline``), start no other.
        Cancelling a round instead would leave PostgreSQL leases to expire before anyone,
        ``drain`` included, could map those webhooks."""
        self._stopping = True
        self._woken.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._stopped.wait()

    async def settled(self) -> None:
        """Until a round finds nothing to map (tests; ``wake`` clears it)."""
        await self._idle.wait()

    async def drain(self, deadline: float) -> int:
        """Map what is kept until nothing is left or the monotonic ``deadline``; rounds run."""
        done = 0
        try:
            while time.monotonic() < deadline:
                if not await self.round(carry=True):
                    return done
                done += 1
            await self._settle_carried()
        except StorageUnavailableError as exc:
            log.warning("mapping_storage_unavailable", error=str(exc))
        return done

    async def _leave_to_intake(self) -> None:
        if not self._yield_to_intake:
            return
        pause = yield_secs(
            self._recorded_secs,
            full=self._round_full,
            catching_up=self.catching_up,
            intake_busy=self.intake_busy,
            factor=self._store.burst_pause,
        )
        if pause > 0:
            self._yielded += pause
            await asyncio.sleep(pause)

    async def round(self, *, carry: bool = False) -> bool:
        """One take, judge and record; False when nothing was waiting (and the round before
        has ended). ``carry``: while catching up with the next take in hand, the round may
        return with its last record in flight; the next round (or :meth:`_settle_carried`)
        ends it before it records anything (:meth:`_end_round`)."""
        self._round_full = False
        self._recorded_secs = 0.0
        try:
            return await self._round(carry)
        except BaseException:
            await self._drop_ahead()  # the next round takes from the oldest, in arrival order
            await self._drop_carried()
            raise

    async def _round(self, carry: bool) -> bool:
        now = self._clock()
        config = self._config()
        size = max(self._batch, CATCH_UP_BATCH) if self.catching_up else self._batch
        ahead, self._ahead = self._ahead, None
        taken = await (ahead or self._store.take(size, LEASE_SECS, config.mapping_tag))
        if not taken:
            await self._settle_carried()
            if self.catching_up and not self.intake_busy:  # mapped all, and the load passed
                self._pace(False, now)
                if self._on_report is not None:
                    self._on_report(Report())  # caught up: serve's intake pace ends with it
            return False
        self._round_full = len(taken) >= size
        behind = catching_up(
            now,
            taken,
            self._catch_up_after,
            already=self.catching_up,
            full=self._round_full,
            intake_busy=self.intake_busy,
        )
        self._pace(behind, now, taken)
        self.rounds += 1
        report = Report(catching_up=self.catching_up, yielded_secs=self._yielded)
        self._yielded = 0.0
        failed: list[tuple[UnmappedWebhook, str]] = []
        known = await self._exam_tests.current(self._store)
        learned: list[ExamTest] = []
        last = await self._map_and_record(taken, config, failed, known, learned, report)
        ending = self._end_round(last, learned, failed, report, now)
        if carry and last is not None and self._ahead is not None and not self._stopping:
            # No await between this and the run loop's look at ``_stopping``: a stop asked for
            # from here on is seen by the next round, which ends this one before it records.
            self._carried = asyncio.ensure_future(ending)
        else:
            await ending
        return True

    async def _end_round(
        self,
        last: tuple[list[Judged], asyncio.Future[list[EnqueueReceipt]]] | None,
        learned: list[ExamTest],
        failed: list[tuple[UnmappedWebhook, str]],
        report: Report,
        now: float,
    ) -> None:
        """A round's end: its last record heard (when in flight), its exam tests kept, its
        failed tries counted, its report sent, in that order."""
        if last is not None:
            recorded, recording = last
            try:
                self._count_all(recorded, await recording, report)
            finally:
                await _let_go(recording)  # heard: a no-op; cancelled: the record ends first
        await self._exam_tests.store(self._store, learned, now)
        for one, error in failed:
            report.failures += 1
            await self._store.failed(one, error)
        if self._on_report is not None:
            self._on_report(report)

    async def _settle_carried(self) -> None:
        """End the round before, when it was carried (its record's error is raised here)."""
        carried, self._carried = self._carried, None
        if carried is not None:
            await carried

    async def _drop_carried(self) -> None:
        carried, self._carried = self._carried, None
        if carried is not None:
            await _let_go(carried)

    async def _map_and_record(
        self,
        taken: list[UnmappedWebhook],
        config: Config,
        failed: list[tuple[UnmappedWebhook, str]],
        known: KnownExamTests,
        learned: list[ExamTest],
        report: Report,
    ) -> tuple[list[Judged], asyncio.Future[list[EnqueueReceipt]]] | None:
        """Map a take and record it in parts, in order (one record in flight at most).

        At the burst pace each part waits for its record (short holds of SQLite's write lock,
        the CPU left to intake). Catching up, the next part is mapped while the last one is
        recorded: the mapper's writer waits for the write lock and the disk, not the CPU; the
        first part while the round before ends (its last record), and the last part's record
        is returned in flight, for the round's end to hear."""
        overlap = self.catching_up
        step = self._record_step()
        recording: asyncio.Future[list[EnqueueReceipt]] | None = None
        recorded: list[Judged] = []
        try:
            for start in range(0, len(taken), step):
                verdicts: list[Judged] = []
                in_flight = recording is not None or self._carried is not None
                for index, one in enumerate(taken[start : start + step], 1):
                    verdict = self._judge(one, config, failed, known)
                    if verdict is not None:
                        verdicts.append(verdict[0])
                        learned += self._exam_tests.add(verdict[1])  # the next one knows them
                    if in_flight and index % OVERLAP_TURN == 0:
                        await asyncio.sleep(0)  # a record's round trips go on (PostgreSQL)
                await self._settle_carried()
                if recording is not None:
                    self._count_all(recorded, await recording, report)
                recorded, recording = verdicts, asyncio.ensure_future(self._store.record(verdicts))
                if overlap:
                    if start == 0:
                        self._take_ahead(len(taken), config)
                    await asyncio.sleep(0)  # the record reaches the store before the next part
                else:
                    waited = time.monotonic()
                    self._count_all(recorded, await recording, report)
                    self._recorded_secs += time.monotonic() - waited
                    recording = None
            if recording is None:
                return None
            last, recording = (recorded, recording), None  # in flight: the round's end hears it
            return last
        finally:
            if recording is not None:  # failed or cancelled: no record left running unheard
                await _let_go(recording)

    def _record_step(self) -> int:
        """Verdicts per record: the burst pace's short transactions (``record_batch``);
        catching up, parts of :data:`CATCH_UP_RECORD`; once the backlog is mapped while the load
        lasts (the stage still catching up, a take not full), the store's ``steady_record``.
        Why the third: then intake keeps webhooks as fast as they are mapped, and on SQLite each
        of its commits waited behind the record in flight (a part of 512 holds the write lock
        ~40 ms): the steady state ran with a third of the machine idle."""
        if not self.catching_up:
            return max(1, self._store.record_batch)
        steady = self._store.steady_record
        if steady is not None and not self._round_full:
            return max(1, steady)
        return CATCH_UP_RECORD

    def _take_ahead(self, taken: int, config: Config) -> None:
        """Catching up, with a full take in hand: take the next one now, so that its read and
        its count of tries run while this one is mapped, not between two rounds (the store
        skips what is in hand: SQLite's lease is in memory, PostgreSQL's in the row)."""
        if taken >= CATCH_UP_BATCH and self._ahead is None and not self._stopping:
            tag = config.mapping_tag
            self._ahead = asyncio.ensure_future(self._store.take(CATCH_UP_BATCH, LEASE_SECS, tag))

    async def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await _let_go(ahead)

    def _pace(self, behind: bool, now: float, taken: list[UnmappedWebhook] | None = None) -> None:
        """Switch between the burst pace and the catch-up pace, with a log line each way."""
        if behind == self.catching_up:
            return
        self.catching_up = behind
        if behind and taken:
            lag = now - min(one.webhook.received_at for one in taken)
            log.info("mapping_catching_up", lag_secs=round(lag, 1), batch=CATCH_UP_BATCH)
        else:
            log.info("mapping_caught_up")

    def _judge(
        self,
        taken: UnmappedWebhook,
        config: Config,
        failed: list[tuple[UnmappedWebhook, str]],
        known: KnownExamTests,
    ) -> tuple[Judged, tuple[ExamTest, ...]] | None:
        if taken.tries > self._max_tries:
            detail = (
                f"mapping failed {taken.tries - 1} times; last error: "
                f"{taken.last_error or 'the mapper process died'}"
            )
            dead = DeadReason("mapping_failed", detail)
            return Judged(taken, taken.webhook.portal_id, (), dead), ()
        hook = taken.webhook
        try:
            result = intake.judge(
                hook.code, hook.raw_body, hook.received_at, config, hook.portal_id, known
            )
        except Exception as exc:  # a mapping bug: the try is counted, the webhook kept, go on
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.error(
                "mapping_failed",
                webhook_id=webhook_ref(taken.row_id),
                code=hook.code,
                tries=taken.tries,
                error=error,
            )
            failed.append((taken, error))
            return None
        for reason in result.trimmed:
            log.warning("message_trimmed", code=hook.code, reason=reason)
        judged = Judged(
            taken,
            result.webhook.portal_id,
            tuple(result.messages),
            result.dead,
            result.webhook.refs,
        )
        return judged, result.exam_tests

    def _count_all(
        self, verdicts: list[Judged], receipts: list[EnqueueReceipt], report: Report
    ) -> None:
        for judged, receipt in zip(verdicts, receipts, strict=True):
            self._count(judged, receipt, report)

    def _count(self, verdict: Judged, receipt: EnqueueReceipt, report: Report) -> None:
        report.mapped += 1
        report.messages += receipt.stored
        report.duplicates += receipt.duplicates
        report.superseded += receipt.superseded
        hook = verdict.taken.webhook
        if verdict.dead is not None:
            report.dead[verdict.dead.reason] += 1
            # A code nobody mapped is data waiting for a config change: an operator should see it.
            log.warning(
                "webhook_dead_lettered",
                webhook_id=receipt.webhook_id,
                code=hook.code,
                portal=verdict.portal_id,
                reason=verdict.dead.reason,
                detail=verdict.dead.detail,
            )
            return
        if logs.enabled(logging.INFO):
            log.info(
                "webhook_mapped",
                webhook_id=receipt.webhook_id,
                code=hook.code,
                portal=verdict.portal_id,
                messages=receipt.stored,
                duplicates=receipt.duplicates,
                superseded=receipt.superseded,
                lag_ms=round((self._clock() - hook.received_at) * 1000, 1),
            )
