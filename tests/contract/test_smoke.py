"""The smallest contract: what is enqueued can be claimed and acknowledged once."""

from __future__ import annotations

from bridge.messages import OutgoingMessage
from bridge.store import Store, Webhook


def _message(message_id: str) -> OutgoingMessage:
    body = {"messageId": message_id, "userId": "u1", "type": "track", "event": "E"}
    return OutgoingMessage.build("default", body)


class TestRoundTrip:
    async def test_enqueue_claim_ack(self, store: Store) -> None:
        webhook = Webhook("attempt.completed", "portal-1", 1000.0, b"{}")
        receipt = await store.enqueue(webhook, [_message("m-1"), _message("m-1")])
        assert (receipt.stored, receipt.duplicates) == (1, 1)
        claimed = await store.claim(now=1001.0, limit=10, lease_secs=30)
        assert [c.message_id for c in claimed] == ["m-1"]
        await store.ack([c.id for c in claimed], now=1002.0)
        assert await store.claim(now=2000.0, limit=10, lease_secs=30) == []
        stats = await store.stats(now=1003.0, since=0)
        assert (stats.pending, stats.in_flight, stats.delivered_total) == (0, 0, 1)
