"""A rolling deploy on PostgreSQL: two replicas whose configurations differ (real ``serve``
processes, a real throwaway cluster, two strict fake Segment sources).

Before, a replica that did not know a destination claimed its messages and buried them as
``unknown_destination``: two replicas where only the new one knew a destination dead-lettered
182 of 600 acknowledged messages. Now a replica on a shared queue claims only the destinations
it is configured with, leaves the rest queued, and says how many wait (gauge + warning).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.store import Webhook
from bridge.store.postgres.queries import FOREIGN_AFTER_SECS
from bridge.store.postgres.store import PostgresStore
from tests.conftest import PASSWORD, USER, WRITE_KEY, attempt_completed, basic_auth, polled
from tests.fakes import FakeSegment
from tests.pgcluster import Cluster
from tests.process import BridgeProcess, write_config

pytestmark = pytest.mark.timeout(180)

SECOND_KEY = "second-write-key"
WEBHOOKS = 300  # half for each destination


def config(
    tmp_path: Path, name: str, url: str, fake: FakeSegment, second: dict[str, Any] | None
) -> Path:
    data: dict[str, Any] = {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "segment": {"write_key": WRITE_KEY, "endpoint": fake.url},
        "storage": {"url": url, "lease_secs": 5, "pool_size": 4},
        "delivery": {"batch": {"timeout_secs": 0.05, "max_events": 50}},
        "logging": {"format": "json"},
    }
    if second is not None:
        data["routing"] = {"destinations": {"second": {"portal_ids": ["portal-2"], **second}}}
    return write_config(tmp_path / f"{name}.yaml", data)


def body(n: int) -> dict[str, Any]:
    made = attempt_completed(n)
    if n % 2:
        made["portal"] = {"id": "portal-2"}
    return made


async def post_all(replica: BridgeProcess) -> None:
    async with aiohttp.ClientSession(headers=basic_auth()) as session:

        async def one(n: int) -> int:
            url = f"{replica.url}/webhooks/synap/attempt.completed"
            async with session.post(url, json=body(n)) as answer:
                return answer.status

        statuses = await asyncio.gather(*(one(n) for n in range(WEBHOOKS)))
    assert statuses == [200] * WEBHOOKS


async def gauge(replica: BridgeProcess) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{replica.url}/metrics") as page:
        text = await page.text()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("synap_bridge_unknown_destination_messages ")
    )
    return float(line.split()[1])


async def test_an_old_replica_leaves_a_destination_it_does_not_know(
    tmp_path: Path, postgres: Cluster, fake_segment: FakeSegment
) -> None:
    url = postgres.new_database()
    async with FakeSegment(write_key=SECOND_KEY) as second_fake:
        old = BridgeProcess(config(tmp_path, "old", url, fake_segment, None))
        # The new replica knows "second" but has no key for it yet: nobody may send it.
        new = BridgeProcess(config(tmp_path, "new", url, fake_segment, {}))
        try:
            await old.start()
            await new.start()
            await post_all(new)
            await fake_segment.wait_until(lambda: fake_segment.unique >= WEBHOOKS // 2, 60)

            async def counted() -> bool:
                return await gauge(old) == WEBHOOKS // 2

            await polled(counted, 60)  # the old replica sees them waiting, and leaves them
            (warning,) = old.events("destinations_unknown_here")[:1]
            assert warning["messages"] == WEBHOOKS // 2
            assert warning["known"] == ["default"]
            assert not old.events("dead_letter")
            assert second_fake.unique == 0

            # The new replica gets its key (the deploy completes): everything goes out.
            assert await new.terminate() == 0
            new = BridgeProcess(
                config(
                    tmp_path,
                    "new",
                    url,
                    fake_segment,
                    {"write_key": SECOND_KEY, "endpoint": second_fake.url},
                )
            )
            await new.start()
            await second_fake.wait_until(lambda: second_fake.unique == WEBHOOKS // 2, 60)
            assert await old.terminate() == 0
            assert await new.terminate() == 0
        finally:
            await old.close()
            await new.close()
    dead = postgres.psql(url.rsplit("/", 1)[-1], "SELECT count(*) FROM dead_letters")
    assert dead.strip() == "0"
    assert fake_segment.unique == WEBHOOKS // 2


async def test_a_replica_maps_only_what_its_own_configuration_kept(postgres: Cluster) -> None:
    """The mapping stage's side of a rolling deploy: a webhook kept by a replica of another
    mapping configuration (other routes) is left to that replica's mapper; only when it has
    waited past ``FOREIGN_AFTER_SECS`` (that replica gone) does any mapper take it."""
    url = postgres.new_database()
    store = PostgresStore(url, pool_size=2)
    await store.open()
    try:
        await store.keep(Webhook("attempt.completed", None, 1.0, b"{}"), "new-routes")
        assert await store.take(10, 30, "old-routes") == []
        [mine] = await store.take(10, 30, "new-routes")
        await store.failed(mine, "released for the next look")
        postgres.psql(
            url.rsplit("/", 1)[-1],
            f"UPDATE unmapped SET kept_at = kept_at - {FOREIGN_AFTER_SECS + 1}",  # noqa: S608 - a constant
        )
        [orphan] = await store.take(10, 30, "old-routes")  # its replica is gone
        assert orphan.row_id == mine.row_id
    finally:
        await store.close()
