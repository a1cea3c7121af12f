"""The event search contract: ``find_events`` and ``event``, read-only views over what intake and
delivery stored, through the protocol only (so every backend runs them)."""

from __future__ import annotations

import orjson

from bridge.messages import OutgoingMessage
from bridge.store import DeadLetterFilter, DeadReason, EventQuery, EventRecord, Store, Webhook

T0 = 1_000_000.0


def message(message_id: str, user: str, event: str = "Completed Test") -> OutgoingMessage:
    body = {"messageId": message_id, "userId": user, "type": "track", "event": event}
    return OutgoingMessage.build("default", body)


def body(attempt: str, test: str = "t-1", exam: str | None = None) -> bytes:
    data: dict[str, object] = {"id": attempt, "attempt": {"id": attempt}, "test": {"id": test}}
    if exam is not None:
        data["exam"] = {"id": exam}
    return orjson.dumps(data)


async def put(
    store: Store, at: float, raw: bytes, *messages: OutgoingMessage, code: str = "attempt.completed"
) -> str:
    receipt = await store.enqueue(Webhook(code, "portal-1", at, raw), messages)
    return receipt.webhook_id


def ids(records: list[EventRecord]) -> list[str]:
    return [record.webhook_id for record in records]


class TestFind:
    async def test_by_each_field_newest_first(self, store: Store) -> None:
        first = await put(store, T0, body("att-1"), message("m-1", "u-1"))
        second = await put(store, T0 + 10, body("att-2", exam="ex-9"), message("m-2", "u-1"))
        third = await put(
            store, T0 + 20, body("att-3", test="t-2"), message("m-3", "u-2"), code="exam.completed"
        )
        now = T0 + 30
        assert ids(await store.find_events(EventQuery(), now)) == [third, second, first]
        assert ids(await store.find_events(EventQuery(user_id="u-1"), now)) == [second, first]
        assert ids(await store.find_events(EventQuery(message_id="m-3"), now)) == [third]
        assert ids(await store.find_events(EventQuery(ref="att-2"), now)) == [second]
        assert ids(await store.find_events(EventQuery(ref="ex-9"), now)) == [second]
        assert ids(await store.find_events(EventQuery(ref="t-1"), now)) == [second, first]
        assert ids(await store.find_events(EventQuery(code="exam.completed"), now)) == [third]
        window = EventQuery(since=T0 + 10, until=T0 + 20)
        assert ids(await store.find_events(window, now)) == [second]
        assert ids(await store.find_events(EventQuery(limit=2), now)) == [third, second]
        both = EventQuery(user_id="u-1", ref="att-1")
        assert ids(await store.find_events(both, now)) == [first]
        assert await store.find_events(EventQuery(user_id="nobody"), now) == []

    async def test_a_user_finds_webhooks_without_messages_of_their_own(self, store: Store) -> None:
        """Issue 23: a redelivered or superseded webhook (its messageIds held by another) and a
        webhook dead-lettered whole carry no message of the user, yet their bodies name the
        user: ``--user`` finds them; a longer id that starts with the user's does not match."""
        named = orjson.dumps({"id": "att-1", "user": {"id": "u-1"}})
        first = await put(store, T0, named, message("m-1", "u-1"))
        again = await put(store, T0 + 10, named, message("m-1", "u-1"))  # same messageId
        why = DeadReason("missing_user_id", "no user")
        dead = await store.enqueue(Webhook("attempt.started", None, T0 + 20, named), [], why)
        other = orjson.dumps({"id": "att-2", "user": {"id": "u-12"}})
        await put(store, T0 + 30, other, message("m-2", "u-12"))
        await store.enqueue(Webhook("attempt.started", None, T0 + 40, other), [], why)
        found = await store.find_events(EventQuery(user_id="u-1"), T0 + 50)
        assert ids(found) == [dead.webhook_id, again, first]
        dead_only = EventQuery(user_id="u-1", state="dead")
        assert ids(await store.find_events(dead_only, T0 + 50)) == [dead.webhook_id]
        claimed = {m.message_id: m.id for m in await store.claim(T0 + 50, 10, 60)}
        assert set(claimed) == {"m-1", "m-2"}
        await store.bury([claimed["m-1"]], DeadReason("rejected_by_segment", "400"), "400", T0 + 51)
        await store.retry_later([claimed["m-2"]], T0 + 99, "503")
        letters = await store.dead_letters(DeadLetterFilter(user_id="u-1"))
        assert sorted(letter.webhook_id for letter in letters) == sorted([first, dead.webhook_id])

    async def test_numeric_ids_in_the_body_are_found_as_text(self, store: Store) -> None:
        raw = orjson.dumps({"attempt": {"id": 4711}, "test": {"objectId": "t-obj"}})
        webhook = await put(store, T0, raw, message("m-1", "u-1"))
        assert ids(await store.find_events(EventQuery(ref="4711"), T0)) == [webhook]
        assert ids(await store.find_events(EventQuery(ref="t-obj"), T0)) == [webhook]

    async def test_a_webhook_with_its_messages(self, store: Store) -> None:
        first, second = message("m-1", "u-1", "Completed Test"), message("m-2", "u-1", "Other")
        webhook = await put(store, T0, body("att-1"), first, second)
        (record,) = await store.find_events(EventQuery(ref="att-1"), T0 + 1)
        assert (record.webhook_id, record.code, record.portal_id) == (
            webhook,
            "attempt.completed",
            "portal-1",
        )
        assert record.received_at == T0
        assert record.dead is None
        assert [m.message_id for m in record.messages] == ["m-1", "m-2"]
        assert [m.payload for m in record.messages] == [first.payload, second.payload]
        assert {(m.state, m.attempts, m.user_id, m.destination) for m in record.messages} == {
            ("pending", 0, "u-1", "default")
        }


class TestStates:
    async def test_every_state_on_the_way(self, store: Store) -> None:
        done = await put(store, T0, body("a-1"), message("m-done", "u-1"))
        dead = await put(store, T0 + 1, body("a-2"), message("m-dead", "u-1"))
        retry = await put(store, T0 + 2, body("a-3"), message("m-retry", "u-1"))
        flying = await put(store, T0 + 3, body("a-4"), message("m-flying", "u-1"))
        claimed = {c.message_id: c.id for c in await store.claim(T0 + 5, 10, 60)}
        await store.ack([claimed["m-done"]], T0 + 6)
        why = DeadReason("rejected_by_segment", "HTTP 400: bad")
        await store.bury([claimed["m-dead"]], why, "HTTP 400: bad", T0 + 6)
        await store.retry_later([claimed["m-retry"]], T0 + 100, "HTTP 503")
        waiting = await put(store, T0 + 7, body("a-5"), message("m-waiting", "u-1"))
        now = T0 + 8

        def only(records: list[EventRecord]) -> dict[str, object]:
            (record,) = records
            (msg,) = record.messages
            return {
                "webhook": record.webhook_id,
                "state": msg.state,
                "attempts": msg.attempts,
                "error": msg.last_error,
                "delivered_at": msg.delivered_at,
                "reason": msg.dead_reason,
            }

        async def by_state(state: str) -> list[str]:
            return ids(await store.find_events(EventQuery(state=state), now))

        assert only(await store.find_events(EventQuery(message_id="m-done"), now)) == {
            "webhook": done, "state": "delivered", "attempts": 0, "error": None,
            "delivered_at": T0 + 6, "reason": None,
        }  # fmt: skip
        assert only(await store.find_events(EventQuery(message_id="m-dead"), now)) == {
            "webhook": dead, "state": "dead", "attempts": 1, "error": "HTTP 400: bad",
            "delivered_at": None, "reason": "rejected_by_segment",
        }  # fmt: skip
        assert only(await store.find_events(EventQuery(message_id="m-retry"), now)) == {
            "webhook": retry, "state": "pending", "attempts": 1, "error": "HTTP 503",
            "delivered_at": None, "reason": None,
        }  # fmt: skip
        flight = await store.find_events(EventQuery(message_id="m-flying"), now)
        assert only(flight)["state"] == "inflight"
        assert flight[0].messages[0].due_at == T0 + 5 + 60  # the lease
        assert await by_state("delivered") == [done]
        assert await by_state("dead") == [dead]
        assert await by_state("pending") == [waiting, retry]
        assert await by_state("inflight") == [flying]
        assert await by_state("held") == []

    async def test_held_until_its_hold_ends(self, store: Store) -> None:
        held = OutgoingMessage.build(
            "default", {"messageId": "m-held", "userId": "u-1", "type": "track", "event": "E"}
        )
        held = OutgoingMessage(held.message_id, "default", "u-1", held.payload, hold_secs=30)
        webhook = await put(store, T0, body("att-1"), held)
        (during,) = await store.find_events(EventQuery(state="held"), T0 + 10)
        assert (during.webhook_id, during.messages[0].state) == (webhook, "held")
        assert during.messages[0].due_at == T0 + 30
        assert await store.find_events(EventQuery(state="pending"), T0 + 10) == []
        (after,) = await store.find_events(EventQuery(state="pending"), T0 + 31)
        assert after.messages[0].state == "pending"
        assert await store.find_events(EventQuery(state="held"), T0 + 31) == []

    async def test_a_webhook_that_did_not_map(self, store: Store) -> None:
        why = DeadReason("missing_user_id", "no user.id in the body")
        receipt = await store.enqueue(
            Webhook("attempt.completed", None, T0, body("att-x")), [], why
        )
        await put(store, T0 + 1, body("att-y"), message("m-1", "u-1"))
        (record,) = await store.find_events(EventQuery(state="dead"), T0 + 2)
        assert (record.webhook_id, record.dead, record.messages) == (receipt.webhook_id, why, ())
        assert ids(await store.find_events(EventQuery(ref="att-x"), T0 + 2)) == [receipt.webhook_id]


class TestShow:
    async def test_raw_body_and_exact_payloads(self, store: Store) -> None:
        raw = b'{"id": "att-1",  "attempt": {"id": "att-1"}, "odd": "\\u00e9"}'
        sent = message("m-1", "u-1")
        webhook = await put(store, T0, raw, sent)
        found = await store.event(webhook, T0 + 1)
        assert found is not None
        assert found.raw_body == raw  # byte for byte, spacing and escapes included
        assert found.event.webhook_id == webhook
        assert [m.payload for m in found.event.messages] == [sent.payload]

    async def test_unknown_ids(self, store: Store) -> None:
        webhook = await put(store, T0, body("att-1"), message("m-1", "u-1"))
        assert await store.event(webhook + "0", T0) is None
        assert await store.event("not-an-id", T0) is None
        assert await store.event("", T0) is None
