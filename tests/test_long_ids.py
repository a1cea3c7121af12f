"""A body id longer than PostgreSQL can index, over real HTTP on both backends.

A btree entry holds at most 2,704 bytes. A webhook whose ``id`` was longer made PostgreSQL refuse
the whole insert (``webhook_refs``): a 503 on every retry, each marking storage as failing for
every other webhook. SQLite has no such limit; both backends must answer the same. (The URL's
code cannot be that long: the route takes at most 100 characters.)
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.receive.runtime import RUNTIME
from bridge.store import EventQuery
from tests.conftest import basic_auth, fixture_body, settled
from tests.fakes import FakeSegment
from tests.pgcluster import Cluster

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def incompressible(count: int, alphabet: str) -> str:
    """Random text: PostgreSQL would otherwise compress a repetitive one to fit its index."""
    rng = random.Random(count)
    return "".join(rng.choice(alphabet) for _ in range(count))


@pytest.fixture(params=["sqlite", "postgres"])
async def bridge(
    request: pytest.FixtureRequest,
    aiohttp_client: MakeClient,
    fake_segment: FakeSegment,
    config_factory: Callable[..., Config],
) -> Client:
    sections = {}
    if request.param == "postgres":
        cluster: Cluster = request.getfixturevalue("postgres")
        sections = {"storage": {"url": cluster.new_database()}}
    return await aiohttp_client(build_app(config_factory(fake_segment.url, **sections)))


async def test_a_body_id_too_long_to_index_is_stored(bridge: Client) -> None:
    body = fixture_body("attempt.completed")
    body["id"] = incompressible(3000, "abcdefghijklmnopqrstuvwxyz")
    answer = await bridge.post("/webhooks/synap/attempt.completed", json=body, headers=basic_auth())
    assert answer.status == 200, await answer.text()
    await settled(bridge.app)  # the refs are written with the mapping stage's record
    runtime = bridge.app[RUNTIME]
    assert runtime.storage_problem is None
    found = await runtime.store.find_events(EventQuery(ref=body["test"]["id"]), runtime.clock())
    assert [record.webhook_id for record in found] == [(await answer.json())["webhook_id"]]
