"""Store.replay: dead letters mapped again; delivered messages are never sent again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson

from bridge.messages import OutgoingMessage
from bridge.store import DeadLetterFilter, DeadReason, Store, Webhook
from tests.contract.records import MANY, NOW, bury_all, hook, msg, remap_to


class TestReplay:
    async def test_revives_dead_and_leaves_delivered_alone(self, store: Store) -> None:
        await store.enqueue(hook(1), [msg("a"), msg("b")])
        a, b = await store.claim(NOW, 10, 30)
        await store.ack([a.id], NOW)
        await store.bury([b.id], DeadReason("rejected", "x"), "400", NOW)

        outcome = await store.replay(
            DeadLetterFilter(), remap_to([msg("a", 2), msg("b", 2), msg("new", 2)]), NOW + 5
        )
        assert (outcome.replayed, outcome.still_dead, outcome.messages) == (1, 0, 2)
        assert await store.dead_letters(DeadLetterFilter()) == []
        claimed = await store.claim(NOW + 5, 10, 30)
        # "a" was delivered: never replaced or sent again; "b" keeps its attempt, with v2.
        assert [(m.message_id, m.attempts) for m in claimed] == [("b", 1), ("new", 0)]
        assert [orjson.loads(m.payload)["v"] for m in claimed] == [2, 2]
        assert claimed[0].id == b.id

    async def test_unmappable_maps_now(self, store: Store) -> None:
        await store.enqueue(hook(1), [], dead=DeadReason("no_route", "x"))
        seen: list[Webhook] = []

        def remap(webhook: Webhook) -> Sequence[OutgoingMessage]:
            seen.append(webhook)
            return [msg("a")]

        outcome = await store.replay(DeadLetterFilter(), remap, NOW)
        assert (outcome.replayed, outcome.messages) == (1, 1)
        assert seen == [hook(1)]
        [claimed] = await store.claim(NOW, 10, 30)
        assert claimed.message_id == "a"

    async def test_still_dead_updates_the_reason(self, store: Store) -> None:
        await store.enqueue(hook(1), [], dead=DeadReason("no_route", "x"))
        outcome = await store.replay(
            DeadLetterFilter(), lambda _: DeadReason("no_user", "still no user"), NOW
        )
        assert (outcome.replayed, outcome.still_dead, outcome.messages) == (0, 1, 0)
        [letter] = await store.dead_letters(DeadLetterFilter())
        assert (letter.reason, letter.detail) == ("no_user", "still no user")

    async def test_thousands_of_letters(self, store: Store) -> None:
        await asyncio.gather(*(store.enqueue(hook(i), [msg(f"m{i}")]) for i in range(MANY)))
        await bury_all(store)
        outcome = await store.replay(
            DeadLetterFilter(reason="rejected"),
            lambda w: [msg(f"m{int(w.received_at) - 1000}")],
            NOW,
        )
        assert (outcome.replayed, outcome.messages) == (MANY, MANY)
        assert (await store.stats(0)).pending == MANY
        assert await store.dead_letters(DeadLetterFilter()) == []
