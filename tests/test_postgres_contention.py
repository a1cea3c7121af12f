"""PostgreSQL under the same webhook several times at once, on a real throwaway cluster.

Synap redelivers: the same webhook can arrive several times together, at one replica or at
several. Before, the group insert locked each batch's rows in arrival order, so two batches
holding the same messageIds in another order deadlocked: 200 users x 4 concurrent copies on one
replica gave 157 of 2,400 answers 503 after up to 9 s. Now every statement takes its row locks
in messageId order, and a transaction's counter shard after them, so batches queue behind each
other instead of deadlocking. Two stores (two replicas' pools) on one database, every copy
submitted at once in a shuffled order; the server's own deadlock count must stay at 0.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from bridge.messages import OutgoingMessage
from bridge.store import Webhook
from bridge.store.postgres.store import PostgresStore
from tests.pgcluster import Cluster

pytestmark = pytest.mark.timeout(180)

USERS = 200
COPIES = 4
NOW = 10_000.0


def webhook(n: int) -> tuple[Webhook, list[OutgoingMessage]]:
    """User ``n``'s webhook: an identify and a track, as a completed attempt maps to."""
    user = f"user-{n}"
    identify = {"messageId": f"identify-{n}", "userId": user, "type": "identify"}
    track = {"messageId": f"track-{n}", "userId": user, "type": "track", "event": "Completed"}
    body = b'{"id": "att-%d"}' % n
    return Webhook("attempt.completed", "portal-1", NOW + n, body), [
        OutgoingMessage.build("default", identify),
        OutgoingMessage.build("default", track),
    ]


def deadlocks(postgres: Cluster, url: str) -> int:
    database = url.rsplit("/", 1)[-1]
    text = postgres.psql(
        database, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(text.strip())


async def test_concurrent_redeliveries_never_deadlock(postgres: Cluster) -> None:
    url = postgres.new_database()
    replicas = [PostgresStore(url, pool_size=8) for _ in range(2)]
    for store in replicas:
        await store.open()
    rng = random.Random(21)
    copies = [(n, rng.randrange(len(replicas))) for n in range(USERS) for _ in range(COPIES)]
    rng.shuffle(copies)
    try:
        before = deadlocks(postgres, url)
        outcomes = await asyncio.gather(
            *(replicas[r].enqueue(*webhook(n)) for n, r in copies), return_exceptions=True
        )
    finally:
        for store in replicas:
            await store.close()
    failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    assert not failures, f"{len(failures)} of {len(copies)} failed: {failures[:3]}"
    stored = sum(o.stored for o in outcomes if not isinstance(o, BaseException))
    assert stored == 2 * USERS  # each messageId once, whichever copy won
    assert deadlocks(postgres, url) - before == 0


async def test_locking_in_message_id_order_keeps_the_arrival_order(postgres: Cluster) -> None:
    """The rows are locked by messageId, yet claims still follow arrival: ids are drawn first."""
    store = PostgresStore(postgres.new_database(), pool_size=4)
    await store.open()
    try:
        names = ["zz-identify", "mm-track", "aa-track"]
        bodies = [{"messageId": name, "userId": "u", "type": "track"} for name in names]
        hook = Webhook("attempt.completed", "portal-1", NOW, b"{}")
        await store.enqueue(hook, [OutgoingMessage.build("default", b) for b in bodies])
        claimed = await store.claim(NOW, 10, 30.0)
    finally:
        await store.close()
    assert [m.message_id for m in claimed] == names
