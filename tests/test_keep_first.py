"""Keep first, judge after, through the real app: any authenticated body within the limits is
answered 200 and kept; what it says is judged after the commit, by the mapping stage.

A lone surrogate escape (``"\\ud83d"``: JavaScript's cut inside an emoji) or bytes that are not
UTF-8 used to be a 400 on every retry, kept nowhere. Now the event goes, with U+FFFD where the
text cannot be encoded; a body that is not JSON at all is a dead letter with its raw bytes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.receive.runtime import RUNTIME
from bridge.store import DeadLetterFilter
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import attempt_completed, basic_auth, settled
from tests.fakes import FakeSegment

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
URL = "/webhooks/synap/attempt.completed"


def raw_attempt(n: int, title: bytes) -> bytes:
    """An ``attempt.completed`` body whose test title (sent as ``testTitle``) is the JSON text
    ``title`` as is."""
    body = attempt_completed(n)
    body["test"] = {**body["test"], "title": "@@"}
    return orjson.dumps(body).replace(b'"@@"', title)


class TestTextJsonAllowsButUtf8Cannot:
    async def test_a_lone_surrogate_is_kept_and_sent_as_a_replacement_character(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        client = await aiohttp_client(build_app(config_factory(fake_segment.url)))
        bodies = [
            raw_attempt(1, b'"Great question \\ud83d"'),  # a high surrogate alone
            raw_attempt(2, b'"\\udc00 low first"'),  # a low surrogate alone
            raw_attempt(3, b'"kept \\ud83d\\ude00 pair"'),  # a real pair stays an emoji
            raw_attempt(4, b'"bad utf-8 \xff\xfe here"'),  # bytes that are not UTF-8
        ]
        for body in bodies:
            response = await client.post(URL, data=body, headers=basic_auth())
            assert response.status == 200
            assert (await response.json())["webhook_id"].startswith("wh_")
        await fake_segment.wait_for(4)
        users = {m["userId"]: m for m in fake_segment.messages}
        assert set(users) == {"user-1", "user-2", "user-3", "user-4"}
        runtime = client.app[RUNTIME]
        assert await runtime.store.dead_letters(DeadLetterFilter()) == []
        texts = [
            orjson.dumps(users[f"user-{n}"]).decode() for n in (1, 2, 3, 4)
        ]  # what Segment received, as JSON text
        assert "\ufffd" in texts[0]
        assert "\ufffd" in texts[1]
        assert "\U0001f600" in texts[2]
        assert "\ufffd" in texts[3]


class TestNotJson:
    async def test_not_json_is_kept_as_a_dead_letter_with_its_bytes(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config]
    ) -> None:
        client = await aiohttp_client(build_app(config_factory()))
        for body in (b"{not json", b"", b"[1, 2]", b"\x00\x01"):
            response = await client.post(URL, data=body, headers=basic_auth())
            assert response.status == 200
        await settled(client.app)
        runtime = client.app[RUNTIME]
        letters = await runtime.store.dead_letters(DeadLetterFilter())
        assert sorted(letter.reason for letter in letters) == [
            "invalid_json",
            "invalid_json",
            "invalid_json",
            "not_an_object",
        ]
        details = [await runtime.store.dead_letter(letter.id) for letter in letters]
        assert {d.raw_body for d in details if d is not None} == {
            b"{not json",
            b"",
            b"[1, 2]",
            b"\x00\x01",
        }

    async def test_intake_alone_keeps_without_reading(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config]
    ) -> None:
        """With no mapping stage at all, webhooks are still answered and kept, unmapped."""
        client = await aiohttp_client(build_app(config_factory(), mapping="none"))
        for n in range(3):
            response = await client.post(URL, data=b"\xff" * n, headers=basic_auth())
            assert response.status == 200
        runtime = client.app[RUNTIME]
        stats = await runtime.store.stats(0)
        assert (stats.unmapped, stats.pending) == (3, 0)


def stored_users(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT json_extract(raw_body, '$.user.id') FROM webhooks").fetchall()
    finally:
        conn.close()
    return {str(row[0]) for row in rows}


class TestDiskFullWhileMapping:
    async def test_the_mapper_waits_for_room_and_nothing_acknowledged_is_lost(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
        tmp_path: Path,
    ) -> None:
        """The database fills while both intake and the mapper write: intake answers 503 only
        for what it cannot commit; the mapper's writes fail and wait; with room again every
        acknowledged webhook is mapped and delivered."""
        path = tmp_path / "full.db"
        config = config_factory(fake_segment.url)
        fake_segment.hold()  # nothing leaves: messages pile up next to the webhooks
        client = await aiohttp_client(build_app(config, store=SQLiteStore(path, max_page_count=80)))
        acked: set[str] = set()
        statuses: list[int] = []
        for n in range(200):
            body: dict[str, Any] = attempt_completed(n, pad=1500)
            response = await client.post(URL, json=body, headers=basic_auth())
            statuses.append(response.status)
            if response.status == 200:
                acked.add(f"user-{n}")
            if statuses[-3:] == [503, 503, 503]:
                break
        assert set(statuses) == {200, 503}
        assert len(acked) > 5
        await client.close()
        assert acked <= stored_users(path)  # everything answered 200 is on disk

        fake_segment.release()
        client = await aiohttp_client(
            build_app(config, store=SQLiteStore(path, max_page_count=100_000))
        )
        await settled(client.app, within=20)
        async with asyncio.timeout(20):
            while not acked <= {m["userId"] for m in fake_segment.messages}:
                await fake_segment.wait_for(fake_segment.unique + 1)
        await client.close()
