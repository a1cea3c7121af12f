"""Store.enqueue: one atomic commit per webhook, dead letters for what cannot be mapped, and a
messageId stored once however often it arrives."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from bridge.errors import StorageUnavailableError
from bridge.store import DeadLetterFilter, DeadReason, Store
from tests.contract.records import NOW, hook, msg


class TestRoundTrip:
    async def test_enqueue_claim_ack(self, store: Store) -> None:
        receipt = await store.enqueue(hook(1), [msg("a"), msg("b")])
        assert receipt.webhook_id.startswith("wh_")
        assert (receipt.stored, receipt.duplicates) == (2, 0)

        claimed = await store.claim(NOW, 10, 30)
        assert [m.message_id for m in claimed] == ["a", "b"]
        assert claimed[0].attempts == 0
        assert claimed[0].enqueued_at == 1001.0
        assert orjson.loads(claimed[0].payload)["messageId"] == "a"
        assert (await store.stats(0)).in_flight == 2

        await store.ack([m.id for m in claimed], NOW + 1)
        stats = await store.stats(NOW)
        assert (stats.pending, stats.in_flight, stats.delivered_total) == (0, 0, 2)
        assert stats.delivered_since == 2
        assert stats.last_delivered_at == NOW + 1
        assert await store.claim(NOW + 100, 10, 30) == []

    async def test_unmappable_webhook_is_a_dead_letter(self, store: Store) -> None:
        receipt = await store.enqueue(hook(1), [], dead=DeadReason("no_user", "no user id"))
        assert (receipt.stored, receipt.duplicates) == (0, 0)
        [letter] = await store.dead_letters(DeadLetterFilter())
        assert (letter.webhook_id, letter.message_id, letter.reason) == (
            receipt.webhook_id,
            None,
            "no_user",
        )
        detail = await store.dead_letter(letter.id)
        assert detail is not None
        assert (detail.raw_body, detail.payload) == (b'{"n": 1}', None)
        assert await store.claim(NOW, 10, 30) == []
        assert await store.dead_letter(letter.id + 1) is None

    async def test_messages_and_dead_reason_together_is_a_bug(self, store: Store) -> None:
        with pytest.raises(ValueError, match="either"):
            await store.enqueue(hook(1), [msg("a")], dead=DeadReason("x", "y"))
        assert await store.claim(NOW, 10, 30) == []  # nothing of it was stored
        assert await store.dead_letters(DeadLetterFilter()) == []


class TestDedupe:
    async def test_same_message_id_is_stored_once(self, store: Store) -> None:
        first = await store.enqueue(hook(1), [msg("a"), msg("b")])
        second = await store.enqueue(hook(2), [msg("a", version=2), msg("c")])
        assert (first.stored, first.duplicates) == (2, 0)
        assert (second.stored, second.duplicates) == (1, 1)
        assert first.webhook_id != second.webhook_id
        claimed = await store.claim(NOW, 10, 30)
        assert [m.message_id for m in claimed] == ["a", "b", "c"]
        assert orjson.loads(claimed[0].payload)["v"] == 1  # the first version stays

    async def test_duplicates_inside_one_group(self, store: Store) -> None:
        receipts = await asyncio.gather(*(store.enqueue(hook(i), [msg("same")]) for i in range(20)))
        assert sum(r.stored for r in receipts) == 1
        assert sum(r.duplicates for r in receipts) == 19


class TestClosed:
    async def test_a_closed_store_is_unavailable(self, store: Store) -> None:
        await store.close()
        with pytest.raises(StorageUnavailableError, match="not open"):
            await store.enqueue(hook(1), [msg("a")])
        with pytest.raises(StorageUnavailableError, match="not open"):
            await store.stats(0)
