"""The storage contract: what the rest of the bridge may ask of durable storage, and nothing more.

The interface comes in ports, one per stage that uses it (as pgqueuer splits its repository):

* :class:`IntakeStore` - the receiver calls ``keep`` and answers 2xx only after it returns (the
  commit of the raw webhook, which is then *unmapped*);
* :class:`MappingStore` - the mapping stage ``take``s unmapped webhooks in arrival order and
  ``record``s each one's messages or dead letter, marking it mapped in the same transaction;
* :class:`DeliveryStore` - the delivery loop's ``claim`` / ``ack`` / ``retry_later`` / ``bury``;
* :class:`OperatorStore` - the CLI and the console: ``stats``, dead letters, events, ``replay``.

:class:`Store` is all of them (each backend implements the whole). ``enqueue`` stores a webhook
already mapped, in one step (tests and tools that need no mapping stage). No SQL, no sqlite3
exception and no file path crosses this interface, so a PostgreSQL implementation (for several
replicas) can stand behind it unchanged. Every method raises
:class:`bridge.errors.StorageUnavailableError` when the storage cannot do its job.

Webhook life cycle::

    keep ──▶ unmapped ──take──▶ (mapping) ──record──▶ mapped: messages │ dead letter
                 ▲                   │ crash, or an error: counted as a try
                 └───────────────────┘ (past ``max_tries``: dead letter ``mapping_failed``)

Message life cycle::

    record ──▶ pending ──claim──▶ in flight ──ack──▶ delivered ──(retention)──▶ pruned
                  ▲                    │  └──bury──▶ dead ──replay──▶ pending
                  └────retry_later─────┘
                  (a claim whose lease expires, e.g. after a crash, is claimable again)

Times are epoch seconds (float) passed in by the caller: the store never reads the clock, so
tests drive it with an injected one.

The package: this module (the protocol and its records; imports only ``bridge.messages``),
``sqlite/`` and ``postgres/`` (the backends), ``factory`` (which one the configuration names).
A backend may import ``bridge.config``, ``bridge.errors``, ``bridge.logs``, ``bridge.messages``
and these records; nothing in the store imports receive, mapping or delivery. Every backend
passes the contract suite in tests/contract.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.messages import OutgoingMessage


@dataclass(frozen=True, slots=True)
class Webhook:
    """One authenticated webhook as received: the raw body is kept for replay."""

    code: str
    portal_id: str | None
    received_at: float
    raw_body: bytes
    #: The ids the event search finds it by (:mod:`bridge.store.refs`), when the receiver has
    #: them from its own parse of the body; None: the store works them out from ``raw_body``.
    refs: tuple[str, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class DeadReason:
    """Why something became a dead letter: a short stable code and a human sentence."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class EnqueueReceipt:
    webhook_id: str
    stored: int  # messages newly stored
    duplicates: int  # messages whose messageId was already stored (not stored again)
    superseded: int = 0  # pending messages replaced in place by a higher-ranked version


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    id: int
    message_id: str
    destination: str
    user_id: str
    payload: bytes
    attempts: int  # deliveries tried before this claim
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    webhook_id: str
    code: str
    portal_id: str | None
    message_id: str | None  # None when the whole webhook could not be mapped
    reason: str
    detail: str
    attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class DeadLetterDetail:
    letter: DeadLetter
    raw_body: bytes
    payload: bytes | None  # the Segment message, when the dead letter is one message
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    code: str | None = None
    reason: str | None = None
    ids: Sequence[int] = ()
    limit: int | None = None
    #: The user's dead letters: a message of theirs, or a whole webhook whose body names them.
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoreStats:
    pending: int
    in_flight: int
    oldest_pending_at: float | None
    delivered_total: int
    delivered_since: int  # delivered at or after the ``since`` argument of stats()
    dead_letters: dict[str, int] = field(default_factory=dict)  # by reason
    storage_bytes: int = 0
    last_delivered_at: float | None = None
    #: Webhooks kept but not mapped yet, and when the oldest of them was received (the mapping
    #: lag is ``now - oldest_unmapped_at``).
    unmapped: int = 0
    oldest_unmapped_at: float | None = None


@dataclass(frozen=True, slots=True)
class UnmappedWebhook:
    """A kept webhook the mapping stage has taken: ``tries`` counts this take too.

    ``lease`` is the fencing token of this take (PostgreSQL: a replica whose take expired
    cannot record over another's); SQLite has one mapper and uses 0."""

    row_id: int
    webhook: Webhook
    tries: int
    lease: int = 0
    last_error: str | None = None  # why the previous try failed, if one did


@dataclass(frozen=True, slots=True)
class Judged:
    """What the mapping stage decided for one taken webhook: messages, or a dead letter.

    ``portal_id`` and ``refs`` come from the mapper's parse of the body (the receiver does not
    parse it); ``refs`` None: the store works them out itself, as for ``enqueue``."""

    taken: UnmappedWebhook
    portal_id: str | None
    messages: tuple[OutgoingMessage, ...]
    dead: DeadReason | None = None
    refs: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What one serving process last recorded about itself (:mod:`bridge.servicestate`):
    ``process`` is ``host:pid``, ``state`` its JSON document, ``age_secs`` how long ago (on the
    database's clock for PostgreSQL)."""

    process: str
    state: dict[str, Any]
    updated_at: float
    age_secs: float


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    replayed: int  # dead letters whose messages are pending again
    still_dead: int  # dead letters that failed to map again (reason updated)
    messages: int  # messages made pending


#: What ``find_events`` can return per message: ``held`` is pending, never tried and not due
#: yet (waiting out its ``hold_secs``); ``pending`` covers due messages and retries waiting for
#: their backoff (``due_at`` says when).
MESSAGE_STATES: tuple[str, ...] = ("pending", "held", "inflight", "delivered", "dead")
#: What ``find_events`` can search by: the message states, and ``unmapped`` (kept, waiting for
#: the mapping stage).
EVENT_STATES: tuple[str, ...] = (*MESSAGE_STATES, "unmapped")


@dataclass(frozen=True, slots=True)
class EventQuery:
    """What ``synap-bridge events`` searches by; every field set must match (AND).

    ``ref`` is an id inside the webhook's body: an attempt, test, exam, assignment or the
    body's own ``id`` (see the backend for which paths it indexes). ``state`` matches webhooks
    with at least one message in that state (one of :data:`MESSAGE_STATES`); ``dead`` also
    matches a webhook that could not be mapped at all. ``since`` / ``until`` bound the receipt
    time (``since <= received_at < until``). Results come newest first, at most ``limit``.
    """

    user_id: str | None = None
    ref: str | None = None
    message_id: str | None = None
    code: str | None = None
    state: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One Segment message as stored, with where it is on its way."""

    id: int
    message_id: str
    destination: str
    user_id: str
    state: str  # one of MESSAGE_STATES
    attempts: int
    last_error: str | None
    enqueued_at: float
    due_at: float | None  # pending / held: when it falls due; in flight: lease expiry
    delivered_at: float | None
    dead_reason: str | None  # the dead letter's reason when state is dead
    payload: bytes  # the exact JSON sent (or to be sent) to Segment


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One stored webhook and the messages it produced (or why it produced none)."""

    webhook_id: str
    code: str
    portal_id: str | None
    received_at: float
    messages: tuple[EventMessage, ...]
    dead: DeadReason | None  # set when the whole webhook is a dead letter (it did not map)
    #: Kept, not mapped yet: how many times the mapping stage has taken it (0: not yet).
    unmapped_tries: int | None = None


@dataclass(frozen=True, slots=True)
class EventDetail:
    event: EventRecord
    raw_body: bytes  # the webhook's body exactly as received


#: Maps a stored webhook again with the current configuration: the messages, or a reason.
Remapper = Callable[[Webhook], "Sequence[OutgoingMessage] | DeadReason"]


class Lifecycle(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...


class IntakeStore(Lifecycle, Protocol):
    """The receiver's port: commit the raw webhook, nothing about its content."""

    async def keep(self, webhook: Webhook, tag: str = "") -> str:
        """Commit ``webhook`` as received (unmapped); its ``webhook_id`` (``wh_…``).

        Concurrent calls share one commit. Nothing in the body is read: any bytes are kept.
        ``tag`` names the mapping configuration of this process (a store shared by replicas
        lets each map what a replica of its own configuration kept; see ``take``)."""
        ...


class MappingStore(Lifecycle, Protocol):
    """The mapping stage's port."""

    #: Verdicts per ``record`` call the store prefers: SQLite has one write lock for the file,
    #: which ``serve``'s commits wait for, so it takes short transactions; PostgreSQL locks
    #: rows, and fewer round trips cost its server less.
    record_batch: int
    #: During a burst the mapping stage pauses this many times as long as a round's records
    #: took (:func:`bridge.mapper.stage.yield_secs`): on SQLite the mapper's cost elsewhere is
    #: the write lock, and a pause as long as its hold leaves intake half of it; on PostgreSQL
    #: the server runs the mapper's statements on the same cores at full priority (niceness
    #: does not reach them), so it pauses longer.
    burst_pause: float
    #: Verdicts per record once a lasting load's backlog is mapped (the stage still at the
    #: catch-up pace, a take not full; :meth:`bridge.mapper.stage.MappingStage.record_step`):
    #: SQLite's intake waits behind each record's hold of the write lock, so it records less
    #: per transaction there than while a backlog waits. None: the catch-up's parts
    #: (PostgreSQL, where intake waits for no lock of the mapper's).
    steady_record: int | None

    async def take(self, limit: int, lease_secs: float, tag: str = "") -> list[UnmappedWebhook]:
        """Up to ``limit`` unmapped webhooks in arrival order, each try counted before it runs.

        On a store shared by replicas, only webhooks kept under ``tag`` (this mapping
        configuration), or kept under another one long enough ago that its replicas must be
        gone: during a rolling deploy an old replica never maps with routes it does not know.

        A webhook taken before and not recorded since (its mapper crashed or failed on it) is
        taken alone: a poison webhook cannot take a batch of others down with it again. On
        PostgreSQL a take is leased for ``lease_secs`` on the database's clock (replicas skip it
        meanwhile); on SQLite (one mapper per file) in the process's memory, so that a take
        made while the last one is mapped skips it. Recording or failing a webhook ends its
        lease."""
        ...

    async def record(self, judged: Sequence[Judged]) -> list[EnqueueReceipt]:
        """Write each taken webhook's messages (as ``enqueue`` does: dedupe by messageId, hold,
        supersede) or its dead letter, and mark it mapped, in one transaction.

        A webhook no longer taken by this lease (recorded meanwhile, or re-taken by another
        replica after its lease expired) is skipped: its receipt has ``webhook_id`` and zeros.
        """
        ...

    async def failed(self, taken: UnmappedWebhook, error: str) -> None:
        """The mapping raised for ``taken``: keep the error, leave it unmapped for its next try
        (its lease is released)."""
        ...

    async def known_exam_tests(self) -> frozenset[tuple[str, str]]:
        """The ``(portal, test id)`` pairs ``exam.*`` webhooks named (bridge.mapping.exam_tests)."""
        ...

    async def learn_exam_tests(self, tests: Collection[tuple[str, str]], now: float) -> int:
        """Remember exam tests (idempotent); how many were new."""
        ...


class DeliveryStore(Lifecycle, Protocol):
    """The delivery loop's port."""

    async def claim(
        self,
        now: float,
        limit: int,
        lease_secs: float,
        exclude: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> list[ClaimedMessage]:
        """Take up to ``limit`` due messages in arrival order, leased until ``now+lease_secs``.

        Messages of the destinations in ``exclude`` are left alone (dry-run destinations: their
        messages must wait, untouched, until a write key is configured). With ``only``, so are
        those of every destination not in it (a replica during a rolling deploy leaves the
        destinations it does not know to the replicas that do).
        """
        ...

    async def peek(
        self, destinations: Collection[str], after: int, limit: int
    ) -> list[ClaimedMessage]:
        """Up to ``limit`` open (pending or in flight) messages of ``destinations`` whose id is
        greater than ``after``, in id order, changing nothing (dry-run shows what it would
        send). ``attempts`` and ``enqueued_at`` are as stored."""
        ...

    async def count_open(self, destinations: Collection[str]) -> int:
        """How many open messages ``destinations`` have (the dry-run backlog)."""
        ...

    async def recover(self, now: float) -> int:
        """Make claims left by a process that is gone claimable now; returns how many.

        Called once by ``serve`` before its delivery starts. With SQLite exactly one ``serve``
        delivers from a database file, so every claim found at start is a dead process's: its
        messages go out again at once (same messageIds) instead of after the lease. A store
        shared by several live replicas implements this as a no-op and relies on lease expiry.
        """
        ...

    async def ack(self, ids: Sequence[int], now: float) -> None: ...

    async def retry_later(self, ids: Sequence[int], due_at: float, error: str) -> None:
        """Hand claimed messages back, due again at ``due_at``; counts one attempt each."""
        ...

    async def bury(self, ids: Sequence[int], dead: DeadReason, error: str, now: float) -> None:
        """Make claimed messages dead letters (counts the attempt that failed)."""
        ...

    async def next_due_at(self) -> float | None:
        """When the earliest pending message falls due (None when nothing is pending)."""
        ...


class OperatorStore(Lifecycle, Protocol):
    """The operator's port: the CLI, the console and the back-pressure watcher."""

    async def stats(self, since: float) -> StoreStats: ...

    async def check_writable(self) -> None:
        """Raise StorageUnavailableError unless a write would succeed now (for /readyz)."""
        ...

    async def dead_letters(self, which: DeadLetterFilter) -> list[DeadLetter]: ...

    async def dead_letter(self, letter_id: int) -> DeadLetterDetail | None: ...

    async def find_events(self, query: EventQuery, now: float) -> list[EventRecord]:
        """Stored webhooks matching ``query``, newest first, each with all its messages.

        Read-only. ``now`` tells ``held`` from ``pending``. Must stay fast (an index walk, not
        a scan of every body) on a million messages for every field of the query but a lone
        ``state`` of ``delivered`` or a time range, which walk the webhooks newest first.
        """
        ...

    async def event(self, webhook_id: str, now: float) -> EventDetail | None:
        """One stored webhook by the id intake answered with (``webhook_id``), or None."""
        ...

    async def replay(self, which: DeadLetterFilter, remap: Remapper, now: float) -> ReplayOutcome:
        """Map the dead letters' raw bodies again and make the results pending.

        A message already delivered is not sent again; one that is dead is revived with the new
        payload; the dead letter is removed once its webhook maps.
        """
        ...

    async def purge_dead(self, older_than: float) -> int: ...

    async def prune_delivered(self, before: float) -> int: ...

    async def put_service_state(self, process: str, state: str, now: float) -> None:
        """Record what serving process ``process`` reports (JSON text), replacing its last
        record; records older than a day are dropped. The table is created on first use."""
        ...

    async def service_states(self, now: float) -> list[ServiceState]:
        """Every recorded process, freshest first (none before the first record)."""
        ...


class Store(IntakeStore, MappingStore, DeliveryStore, OperatorStore, Protocol):
    """Every port: what a backend implements."""

    async def enqueue(
        self,
        webhook: Webhook,
        messages: Sequence[OutgoingMessage],
        dead: DeadReason | None = None,
    ) -> EnqueueReceipt:
        """Commit the webhook and its messages (or the webhook as a dead letter) atomically.

        Concurrent calls share one commit. A message whose ``message_id`` is already stored is
        not stored again (counted in ``duplicates``), with one exception: when the stored one is
        still pending (not claimed, delivered or dead) and the new one has a higher ``rank``, the
        new payload, user, destination and webhook replace it in place, due at the earlier of
        its due time and ``webhook.received_at + hold_secs`` (counted in ``superseded``). A new
        message is due at ``webhook.received_at + message.hold_secs``.
        """
        ...
