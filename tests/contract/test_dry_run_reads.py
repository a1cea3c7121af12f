"""Dry-run's part of the contract: claims that leave some destinations alone, and reads that
show and count their waiting messages without changing anything."""

from __future__ import annotations

from bridge.messages import OutgoingMessage
from bridge.store import Store, Webhook


def _message(message_id: str, destination: str) -> OutgoingMessage:
    body = {"messageId": message_id, "userId": "u1", "type": "track", "event": "E"}
    return OutgoingMessage.build(destination, body)


async def _fill(store: Store) -> None:
    webhook = Webhook("attempt.completed", "portal-1", 1000.0, b"{}")
    messages = [_message(f"m-{n}", "dry" if n % 2 else "live") for n in range(6)]
    await store.enqueue(webhook, messages)


class TestExclude:
    async def test_claim_leaves_excluded_destinations_untouched(self, store: Store) -> None:
        await _fill(store)
        claimed = await store.claim(1001.0, 100, 30, exclude=("dry",))
        assert [c.message_id for c in claimed] == ["m-0", "m-2", "m-4"]
        assert await store.claim(1001.0, 100, 30, exclude=("dry",)) == []
        left = await store.claim(1001.0, 100, 30)
        assert [(c.message_id, c.attempts) for c in left] == [("m-1", 0), ("m-3", 0), ("m-5", 0)]


class TestPeekAndCount:
    async def test_peek_pages_by_id_and_changes_nothing(self, store: Store) -> None:
        await _fill(store)
        first = await store.peek(("dry",), 0, 2)
        assert [m.message_id for m in first] == ["m-1", "m-3"]
        assert b'"messageId":"m-1"' in first[0].payload
        rest = await store.peek(("dry",), first[-1].id, 10)
        assert [m.message_id for m in rest] == ["m-5"]
        assert await store.peek(("dry",), rest[-1].id, 10) == []
        assert await store.count_open(("dry",)) == 3
        assert await store.count_open(("dry", "live")) == 6
        assert await store.count_open(()) == 0
        stats = await store.stats(0)
        assert (stats.pending, stats.in_flight, stats.delivered_total) == (6, 0, 0)
        again = await store.claim(1001.0, 100, 30)
        assert len(again) == 6
        assert all(c.attempts == 0 for c in again)

    async def test_delivered_messages_are_neither_shown_nor_counted(self, store: Store) -> None:
        await _fill(store)
        claimed = await store.claim(1001.0, 100, 30)
        await store.ack([c.id for c in claimed if c.message_id in ("m-1", "m-3")], 1002.0)
        assert [m.message_id for m in await store.peek(("dry",), 0, 10)] == ["m-5"]
        assert await store.count_open(("dry",)) == 1
