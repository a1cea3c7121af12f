"""Hostile text in identifiers: the store keeps the payload and the raw body byte for byte."""

from __future__ import annotations

from bridge.messages import OutgoingMessage
from bridge.store import DeadLetterFilter, DeadReason, Store, Webhook


class TestHostileText:
    async def test_nul_in_ids_is_stored_and_the_payload_is_exact(self, store: Store) -> None:
        body = {"messageId": "m-nul", "userId": "u\x001", "type": "track", "event": "E\x00"}
        message = OutgoingMessage.build("default", body)
        webhook = Webhook("attempt.completed", "portal\x00", 1000.0, b'{"a":"\\u0000"}')
        receipt = await store.enqueue(webhook, [message])
        assert receipt.stored == 1
        [claimed] = await store.claim(now=1000.0, limit=10, lease_secs=30)
        assert claimed.payload == message.payload
        assert claimed.message_id == "m-nul"

    async def test_nul_in_a_dead_webhook_is_stored(self, store: Store) -> None:
        webhook = Webhook("attempt.completed", "p\x00", 1000.0, b"\x00raw")
        await store.enqueue(webhook, [], DeadReason("missing_user_id", "no user \x00 here"))
        [letter] = await store.dead_letters(DeadLetterFilter())
        detail = await store.dead_letter(letter.id)
        assert detail is not None
        assert detail.raw_body == b"\x00raw"
