"""The hold-and-supersede contract (Store.enqueue): one complete event per exam attempt and stage.

An exam attempt's ``attempt.*`` message is enqueued held (``hold_secs``) at rank 0; the
``exam.*`` message of the same attempt and stage has the same messageId and rank 1. Whatever the
order, the store keeps one message, and it is the rank-1 version whenever that arrived while the
rank-0 one was still pending. Only the Store protocol is used, so every backend runs these.
"""

from __future__ import annotations

from bridge.messages import OutgoingMessage
from bridge.store import DeadLetterFilter, DeadReason, Store, Webhook

T0 = 1000.0
HOLD = 10.0
LEASE = 30.0


def message(version: str, *, hold: float = 0.0, rank: int = 0, user: str = "u1") -> OutgoingMessage:
    body = {
        "messageId": "track-attempt-1",
        "userId": user,
        "type": "track",
        "event": "Completed Test",
        "properties": {"version": version},
    }
    built = OutgoingMessage.build("default", body)
    return OutgoingMessage(
        built.message_id, built.destination, built.user_id, built.payload, hold, rank
    )


def attempt(hold: float = HOLD) -> OutgoingMessage:
    return message("attempt", hold=hold, rank=0)


def exam() -> OutgoingMessage:
    return message("exam", rank=1, user="u1-exam")


def hook(code: str, at: float) -> Webhook:
    return Webhook(code, "portal-1", at, code.encode())


async def versions(store: Store, now: float) -> list[str]:
    """Claim and acknowledge everything due at ``now``; the versions sent."""
    claimed = await store.claim(now=now, limit=100, lease_secs=LEASE)
    await store.ack([c.id for c in claimed], now=now)
    return [version_of(c.payload) for c in claimed]


def version_of(payload: bytes) -> str:
    version: str = OutgoingMessage("", "", "", payload).body()["properties"]["version"]
    return version


class TestHold:
    async def test_a_held_message_is_not_due_before_its_hold(self, store: Store) -> None:
        receipt = await store.enqueue(hook("attempt.completed", T0), [attempt()])
        assert (receipt.stored, receipt.duplicates, receipt.superseded) == (1, 0, 0)
        assert await store.next_due_at() == T0 + HOLD
        assert await store.claim(now=T0 + HOLD - 0.5, limit=10, lease_secs=LEASE) == []
        stats = await store.stats(since=0)
        assert stats.pending == 1
        assert await versions(store, T0 + HOLD) == ["attempt"]

    async def test_no_hold_is_due_at_receipt(self, store: Store) -> None:
        await store.enqueue(hook("attempt.completed", T0), [attempt(hold=0.0)])
        assert await store.next_due_at() == T0
        assert await versions(store, T0) == ["attempt"]


class TestSupersede:
    async def test_exam_within_the_hold_replaces_the_attempt(self, store: Store) -> None:
        await store.enqueue(hook("attempt.completed", T0), [attempt()])
        receipt = await store.enqueue(hook("exam.completed", T0 + 2), [exam()])
        assert (receipt.stored, receipt.duplicates, receipt.superseded) == (0, 0, 1)
        # Due at the earlier of the held due time and the exam's own (no hold): now.
        assert await store.next_due_at() == T0 + 2
        claimed = await store.claim(now=T0 + 2, limit=10, lease_secs=LEASE)
        assert len(claimed) == 1
        assert version_of(claimed[0].payload) == "exam"
        assert claimed[0].user_id == "u1-exam"  # the user travels with the payload
        await store.ack([claimed[0].id], now=T0 + 2)
        stats = await store.stats(since=0)
        assert (stats.pending, stats.in_flight, stats.delivered_total) == (0, 0, 1)

    async def test_exam_first_then_attempt_is_a_duplicate(self, store: Store) -> None:
        await store.enqueue(hook("exam.completed", T0), [exam()])
        receipt = await store.enqueue(hook("attempt.completed", T0 + 1), [attempt()])
        assert (receipt.stored, receipt.duplicates, receipt.superseded) == (0, 1, 0)
        assert await store.next_due_at() == T0  # the held attempt never delays the exam
        assert await versions(store, T0 + 1) == ["exam"]

    async def test_exam_after_the_attempt_went_out_is_a_duplicate(self, store: Store) -> None:
        await store.enqueue(hook("attempt.completed", T0), [attempt()])
        assert await versions(store, T0 + HOLD) == ["attempt"]
        receipt = await store.enqueue(hook("exam.completed", T0 + HOLD + 1), [exam()])
        assert (receipt.stored, receipt.duplicates, receipt.superseded) == (0, 1, 0)
        assert await versions(store, T0 + 100) == []

    async def test_a_claimed_attempt_is_not_replaced(self, store: Store) -> None:
        await store.enqueue(hook("attempt.completed", T0), [attempt()])
        [claimed] = await store.claim(now=T0 + HOLD, limit=10, lease_secs=LEASE)
        receipt = await store.enqueue(hook("exam.completed", T0 + HOLD), [exam()])
        assert (receipt.superseded, receipt.duplicates) == (0, 1)
        await store.retry_later([claimed.id], due_at=T0 + HOLD + 1, error="503")
        assert await versions(store, T0 + HOLD + 1) == ["attempt"]  # the version in flight

    async def test_a_dead_attempt_is_not_replaced(self, store: Store) -> None:
        await store.enqueue(hook("attempt.completed", T0), [attempt(hold=0.0)])
        [claimed] = await store.claim(now=T0, limit=10, lease_secs=LEASE)
        await store.bury([claimed.id], DeadReason("rejected", "400"), "400", now=T0)
        receipt = await store.enqueue(hook("exam.completed", T0 + 1), [exam()])
        assert (receipt.superseded, receipt.duplicates) == (0, 1)
        assert len(await store.dead_letters(DeadLetterFilter())) == 1
        assert await store.claim(now=T0 + 100, limit=10, lease_secs=LEASE) == []

    async def test_equal_rank_is_a_duplicate(self, store: Store) -> None:
        await store.enqueue(hook("attempt.completed", T0), [attempt()])
        receipt = await store.enqueue(hook("attempt.completed", T0 + 1), [message("again")])
        assert (receipt.superseded, receipt.duplicates) == (0, 1)
        assert await versions(store, T0 + HOLD) == ["attempt"]

    async def test_the_earlier_due_time_wins(self, store: Store) -> None:
        """A higher rank that is itself held never pushes the stored due time later."""
        await store.enqueue(hook("attempt.completed", T0), [attempt(hold=5.0)])
        held_exam = message("exam", hold=60.0, rank=1)
        receipt = await store.enqueue(hook("exam.completed", T0 + 1), [held_exam])
        assert receipt.superseded == 1
        assert await store.next_due_at() == T0 + 5.0
        assert await versions(store, T0 + 5.0) == ["exam"]

    async def test_a_superseded_message_survives_a_reopen(self, store: Store) -> None:
        """Both commits are durable: closing and reopening keeps the replaced version."""
        await store.enqueue(hook("attempt.completed", T0), [attempt()])
        await store.enqueue(hook("exam.completed", T0 + 1), [exam()])
        await store.close()
        await store.open()
        assert await versions(store, T0 + 1) == ["exam"]
