"""The fake Segment is strict where Segment is documented to be: if it were lax, the delivery
tests would prove little. Spoken to with a plain HTTP client, not with the bridge's sink."""

from __future__ import annotations

import asyncio
import gzip
import sys
from base64 import b64encode
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes import FakeSegment

KEY = "fake-key"
SENT_AT = "2024-05-01T10:00:01.000Z"


def msg(n: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "track",
        "event": "Exam Completed",
        "userId": f"u{n}",
        "messageId": f"m{n}",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "properties": {"n": n},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def auth(key: str = KEY, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{key}:{password}".encode()).decode()}


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegment]:
    async with FakeSegment(KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    fake: FakeSegment,
    batch: list[Any],
    *,
    headers: dict[str, str] | None = None,
    zipped: bool = False,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    data = orjson.dumps(body if body is not None else {"batch": batch, "sentAt": SENT_AT})
    sent = {"Content-Type": "application/json", **(auth() if headers is None else headers)}
    if zipped:
        data = gzip.compress(data)
        sent["Content-Encoding"] = "gzip"
    async with http.post(f"{fake.url}/v1/batch", data=data, headers=sent) as resp:
        return resp.status, await resp.json()


class TestAccepts:
    async def test_valid_batch_is_stored(
        self, fake: FakeSegment, http: aiohttp.ClientSession
    ) -> None:
        status, _ = await post(http, fake, [msg(1), msg(2, type="identify", event=None)])
        assert status == 200
        assert [m["messageId"] for m in fake.messages] == ["m1", "m2"]
        assert fake.stats() == {
            "requests": 1,
            "batches": 1,
            "accepted": 2,
            "unique": 2,
            "rejected": 0,
        }

    async def test_gzip_and_dedupe_view(
        self, fake: FakeSegment, http: aiohttp.ClientSession
    ) -> None:
        for _ in range(2):
            status, _ = await post(http, fake, [msg(1), msg(2)], zipped=True)
            assert status == 200
        assert fake.accepted == 4
        assert fake.unique == 2
        assert fake.ids == {"m1": 2, "m2": 2}


class TestRejects:
    @pytest.mark.parametrize(
        "headers",
        [{}, auth("other-key"), auth(KEY, "a-password"), {"Authorization": "Bearer x"}],
    )
    async def test_auth(
        self, fake: FakeSegment, http: aiohttp.ClientSession, headers: dict[str, str]
    ) -> None:
        status, _ = await post(http, fake, [msg(1)], headers=headers)
        assert status == 401
        assert fake.messages == []

    @pytest.mark.parametrize(
        ("bad", "why"),
        [
            (msg(2, type="purchase"), "type"),
            (msg(2, userId=None), "userId"),
            (msg(2, userId=None, anonymousId="anon-1", event="x"), None),
            (msg(2, messageId="x" * 101), "messageId"),
            (msg(2, messageId=None), "messageId"),
            (msg(2, timestamp="yesterday"), "timestamp"),
            (msg(2, timestamp=None), "timestamp"),
            (msg(2, event=None), "event"),
            (msg(2, type="group", event=None), "groupId"),
            (msg(2, properties=["not", "an", "object"]), "properties"),
            (msg(2, type="identify", traits="x"), "traits"),
            (msg(2, properties={"pad": "x" * 33_000}), "32KB"),
            ("not an object", "object"),
        ],
    )
    async def test_one_invalid_message_rejects_the_batch(
        self, fake: FakeSegment, http: aiohttp.ClientSession, bad: Any, why: str | None
    ) -> None:
        status, answer = await post(http, fake, [msg(1), bad, msg(3)])
        if why is None:  # the control case: anonymousId alone is enough
            assert status == 200
            return
        assert status == 400
        assert answer["code"] == "invalid_request"
        assert why in answer["message"]
        assert fake.messages == []
        assert fake.ids == {}

    async def test_too_many_messages(self, fake: FakeSegment, http: aiohttp.ClientSession) -> None:
        status, answer = await post(http, fake, [msg(i) for i in range(2501)])
        assert status == 400
        assert "2500" in answer["message"]
        status, _ = await post(http, fake, [msg(i) for i in range(2500)])
        assert status == 200

    async def test_body_over_500kb_even_when_gzipped(
        self, fake: FakeSegment, http: aiohttp.ClientSession
    ) -> None:
        batch = [msg(i, properties={"pad": "y" * 20_000}) for i in range(26)]
        status, answer = await post(http, fake, batch, zipped=True)
        assert status == 400
        assert "500KB" in answer["message"]

    @pytest.mark.parametrize(
        "body", [{"batch": {}}, {"sentAt": SENT_AT}, {"batch": [], "sentAt": "soon"}, {"b": 1}]
    )
    async def test_envelope(
        self, fake: FakeSegment, http: aiohttp.ClientSession, body: dict[str, Any]
    ) -> None:
        status, _ = await post(http, fake, [], body=body)
        assert status == 400

    async def test_poison(self, fake: FakeSegment, http: aiohttp.ClientSession) -> None:
        fake.poison.add("m2")
        status, answer = await post(http, fake, [msg(1), msg(2)])
        assert status == 400
        assert "m2" in answer["message"]
        status, _ = await post(http, fake, [msg(1), msg(3)])
        assert status == 200
        assert fake.unique == 2


class TestFailureModes:
    async def test_programmed_failures_then_recovery(
        self, fake: FakeSegment, http: aiohttp.ClientSession
    ) -> None:
        fake.fail(503, times=2)
        fake.fail(429, retry_after="7")
        statuses = []
        for _ in range(4):
            async with http.post(
                f"{fake.url}/v1/batch",
                data=orjson.dumps({"batch": [msg(1)], "sentAt": SENT_AT}),
                headers=auth(),
            ) as resp:
                statuses.append((resp.status, resp.headers.get("Retry-After")))
        assert statuses == [(503, None), (503, None), (429, "7"), (200, None)]
        assert fake.requests == 4
        assert fake.unique == 1

    async def test_reset_closes_without_an_answer(
        self, fake: FakeSegment, http: aiohttp.ClientSession
    ) -> None:
        fake.fail(reset=True)
        with pytest.raises(aiohttp.ClientError):
            await post(http, fake, [msg(1)])
        status, _ = await post(http, fake, [msg(1)])
        assert status == 200
        assert fake.requests == 2

    async def test_control_endpoints(self, fake: FakeSegment, http: aiohttp.ClientSession) -> None:
        mode = {"fail": [{"status": 500, "times": 1}], "poison": ["m9"]}
        async with http.post(f"{fake.url}/_mode", json=mode) as resp:
            assert resp.status == 200
        assert (await post(http, fake, [msg(1)]))[0] == 500
        assert (await post(http, fake, [msg(9)]))[0] == 400
        assert (await post(http, fake, [msg(1)]))[0] == 200
        async with http.get(f"{fake.url}/_stats") as resp:
            assert (await resp.json())["unique"] == 1
        async with http.get(f"{fake.url}/_received?ids=1") as resp:
            assert (await resp.json()) == {"ids": ["m1"]}
        async with http.post(f"{fake.url}/_clear") as resp:
            assert resp.status == 200
        assert fake.unique == 0
        assert fake.poison == set()


async def test_runs_as_a_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes",
        "--port",
        "0",
        "--write-key",
        KEY,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        url = f"http://127.0.0.1:{int(line)}"
        async with aiohttp.ClientSession() as http:
            data = orjson.dumps({"batch": [msg(1)], "sentAt": SENT_AT})
            async with http.post(f"{url}/v1/batch", data=data, headers=auth()) as resp:
                assert resp.status == 200
            async with http.get(f"{url}/_received") as resp:
                received = await resp.json()
        assert [m["messageId"] for m in received["messages"]] == ["m1"]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
