"""Store.claim and what hands a claim back: arrival order, leases that expire, retry_later."""

from __future__ import annotations

from bridge.messages import OutgoingMessage
from bridge.store import Store
from tests.contract.records import NOW, hook, msg


class TestClaim:
    async def test_order_and_limit(self, store: Store) -> None:
        for i in range(5):
            await store.enqueue(hook(i), [msg(f"m{i}")])
        first = await store.claim(NOW, 3, 30)
        assert [m.message_id for m in first] == ["m0", "m1", "m2"]
        assert [m.id for m in first] == sorted(m.id for m in first)
        rest = await store.claim(NOW, 3, 30)
        assert [m.message_id for m in rest] == ["m3", "m4"]
        assert await store.claim(NOW, 3, 30) == []
        assert await store.claim(NOW, 0, 30) == []

    async def test_only_the_named_destinations(self, store: Store) -> None:
        """A replica leaves the destinations it does not know (a rolling deploy)."""
        other = OutgoingMessage.build("second", {"messageId": "s1", "userId": "u", "type": "t"})
        await store.enqueue(hook(1), [msg("d1"), other])
        assert await store.claim(NOW, 10, 30, only=[]) == []
        assert await store.claim(NOW, 10, 30, exclude=["default"], only=["default"]) == []
        mine = await store.claim(NOW, 10, 30, only=["default"])
        assert [m.message_id for m in mine] == ["d1"]
        assert await store.count_open(["second"]) == 1  # left alone, still waiting
        theirs = await store.claim(NOW, 10, 30, only=["second", "third"])
        assert [m.message_id for m in theirs] == ["s1"]

    async def test_not_yet_received_is_not_due(self, store: Store) -> None:
        await store.enqueue(hook(5), [msg("later")])  # received at 1005
        assert await store.claim(1004.0, 10, 30) == []
        assert await store.next_due_at() == 1005.0

    async def test_an_expired_lease_comes_back(self, store: Store) -> None:
        await store.enqueue(hook(1), [msg("a"), msg("b")])
        claimed = await store.claim(NOW, 10, 30)
        assert len(claimed) == 2  # claimed, never acknowledged
        assert await store.claim(NOW + 29, 10, 30) == []
        assert await store.next_due_at() == NOW + 30
        again = await store.claim(NOW + 30, 10, 30)
        assert [m.id for m in again] == [m.id for m in claimed]
        assert [m.attempts for m in again] == [0, 0]

    async def test_retry_later(self, store: Store) -> None:
        await store.enqueue(hook(1), [msg("a")])
        [claimed] = await store.claim(NOW, 10, 30)
        await store.retry_later([claimed.id], NOW + 60, "503 from Segment")
        assert await store.next_due_at() == NOW + 60
        assert await store.claim(NOW + 59, 10, 30) == []
        [again] = await store.claim(NOW + 60, 10, 30)
        assert again.attempts == 1
        await store.retry_later([again.id], NOW + 200, "timeout")
        [third] = await store.claim(NOW + 200, 10, 30)
        assert third.attempts == 2

    async def test_next_due_at_empty(self, store: Store) -> None:
        assert await store.next_due_at() is None
