"""Store.stats and prune_delivered: the numbers /metrics, back-pressure and the CLI read."""

from __future__ import annotations

from bridge.store import DeadReason, Store
from tests.contract.records import NOW, hook, msg


class TestStats:
    async def test_numbers(self, store: Store) -> None:
        for i in range(4):
            await store.enqueue(hook(i), [msg(f"m{i}")])
        await store.enqueue(hook(9), [], dead=DeadReason("no_user", "x"))
        m0, m1 = await store.claim(NOW, 2, 30)
        await store.ack([m0.id], 500.0)
        await store.bury([m1.id], DeadReason("rejected", "x"), "400", NOW)
        [m2] = await store.claim(NOW, 1, 30)
        stats = await store.stats(since=400.0)
        assert (stats.pending, stats.in_flight) == (1, 1)
        assert stats.oldest_pending_at == 1002.0  # m2, in flight, is the oldest undelivered
        assert (stats.delivered_total, stats.delivered_since) == (1, 1)
        assert (await store.stats(since=600.0)).delivered_since == 0
        assert stats.dead_letters == {"no_user": 1, "rejected": 1}
        assert stats.storage_bytes > 0
        assert stats.last_delivered_at == 500.0
        await store.ack([m2.id], 400.0)  # an earlier clock never moves it back
        assert (await store.stats(0)).last_delivered_at == 500.0

    async def test_empty(self, store: Store) -> None:
        stats = await store.stats(0)
        assert (stats.pending, stats.in_flight, stats.delivered_total) == (0, 0, 0)
        assert (stats.oldest_pending_at, stats.last_delivered_at) == (None, None)


class TestPrune:
    async def test_prune_delivered(self, store: Store) -> None:
        await store.enqueue(hook(1), [msg("a"), msg("b")])
        await store.enqueue(hook(2), [msg("c")])
        a, _b, c = await store.claim(NOW, 10, 30)
        await store.ack([a.id], 100.0)
        await store.ack([c.id], 300.0)
        assert await store.prune_delivered(before=200.0) == 1
        assert await store.prune_delivered(before=200.0) == 0
        assert await store.prune_delivered(before=400.0) == 1
        stats = await store.stats(0)
        assert (stats.delivered_total, stats.in_flight) == (2, 1)  # lifetime total
