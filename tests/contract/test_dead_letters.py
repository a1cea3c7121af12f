"""Dead letters: what bury makes of a claimed message, how they are listed, and purge_dead."""

from __future__ import annotations

from bridge.store import DeadLetterFilter, DeadReason, Store
from tests.contract.records import NOW, bury_all, hook, msg


class TestBury:
    async def test_bury_makes_a_dead_letter(self, store: Store) -> None:
        await store.enqueue(hook(1, code="user.created"), [msg("a"), msg("b")])
        claimed = await store.claim(NOW, 10, 30)
        await store.bury([claimed[0].id], DeadReason("rejected", "400: bad"), "HTTP 400", NOW)
        await store.ack([claimed[1].id], NOW)
        [letter] = await store.dead_letters(DeadLetterFilter())
        assert (letter.message_id, letter.reason, letter.detail) == ("a", "rejected", "400: bad")
        assert (letter.code, letter.portal_id, letter.attempts) == ("user.created", "portal-1", 1)
        detail = await store.dead_letter(letter.id)
        assert detail is not None
        assert detail.last_error == "HTTP 400"
        assert detail.payload == claimed[0].payload
        assert (await store.stats(0)).dead_letters == {"rejected": 1}
        assert await store.claim(NOW + 1000, 10, 30) == []

    async def test_dead_letter_filters(self, store: Store) -> None:
        await store.enqueue(hook(1, code="a"), [], dead=DeadReason("r1", "d"))
        await store.enqueue(hook(2, code="b"), [], dead=DeadReason("r2", "d"))
        await store.enqueue(hook(3, code="b"), [], dead=DeadReason("r1", "d"))
        everything = await store.dead_letters(DeadLetterFilter())
        assert [d.code for d in everything] == ["a", "b", "b"]
        assert len(await store.dead_letters(DeadLetterFilter(code="b"))) == 2
        assert len(await store.dead_letters(DeadLetterFilter(code="b", reason="r1"))) == 1
        ids = [everything[0].id, everything[2].id]
        assert [d.id for d in await store.dead_letters(DeadLetterFilter(ids=ids))] == ids
        assert len(await store.dead_letters(DeadLetterFilter(limit=1))) == 1


class TestPurge:
    async def test_purge_dead(self, store: Store) -> None:
        await store.enqueue(hook(1), [], dead=DeadReason("old", "x"))  # created at 1001
        await store.enqueue(hook(2), [msg("a")])
        await bury_all(store)  # created at NOW
        assert await store.purge_dead(older_than=2000.0) == 1
        [left] = await store.dead_letters(DeadLetterFilter())
        assert left.message_id == "a"
        assert await store.purge_dead(older_than=NOW + 1) == 1
        assert await store.dead_letters(DeadLetterFilter()) == []
        assert (await store.stats(0)).dead_letters == {}
