"""Hostile input: never a 5xx (but 503 for storage), never a crash, the bridge stays healthy.

The real app over real HTTP. Generated inputs come from hypothesis, collected up front (the
server runs on this test's event loop, so each example is posted afterwards; examples are
derandomized, bounded, and every failing one is named in the assertion). Malformed HTTP that a
client library will not send goes over a raw socket. After every group: ``/healthz`` answers,
and a valid webhook is still accepted.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from base64 import b64encode
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.app import build_app
from bridge.config import Config
from bridge.receive.runtime import RUNTIME
from bridge.store import DeadLetterFilter
from tests.conftest import PASSWORD, USER, basic_auth, fixture_body, settled
from tests.fakes import FakeSegment

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

URL = "/webhooks/synap/attempt.completed"
LIMIT = 1024 * 1024  # server.max_body_bytes (the default)
#: What a webhook may be answered with: committed, dead-lettered, refused, unauthorized, ...
NOT_5XX = {200, 202, 400, 401, 404, 405, 413}

CODES = [
    "attempt.started",
    "exam.started",
    "attempt.submitted",
    "attempt.completed",
    "exam.submitted",
    "exam.completed",
    "attemptOverride.created",
    "attemptCertificate.generated",
    "user.registered",
    "user.updated",
    "user.addedToGroup",
    "user.registeredForExam",
    "assignment.completed",
    "flag.planted",
    "store.purchase",
    "invite.sent",
    "learningRecord.created",
]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def collect(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` derandomized examples of ``strategy`` (reproducible from run to run)."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def gather(example: Any) -> None:
        found.append(example)

    gather()
    return found


@pytest.fixture
async def bridge(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, config_factory: Callable[..., Config]
) -> Client:
    return await aiohttp_client(build_app(config_factory(fake_segment.url)))


async def still_healthy(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ok = fixture_body("attempt.completed")
    answer = await client.post(URL, json=ok, headers=basic_auth())
    assert answer.status == 200, await answer.text()
    assert client.app[RUNTIME].delivering  # the delivery task did not die either


async def dead_letters(client: Client) -> dict[str, str]:
    """Once every kept webhook is mapped: each dead letter's reason by its ``webhook_id``.

    None may be ``mapping_failed``: hostile content is a verdict on the webhook, never a
    failure of the mapping stage itself."""
    await settled(client.app)
    letters = await client.app[RUNTIME].store.dead_letters(DeadLetterFilter())
    failed = [letter for letter in letters if letter.reason == "mapping_failed"]
    assert failed == []
    return {letter.webhook_id: letter.reason for letter in letters}


async def status_of(client: Client, path: str, **kwargs: Any) -> int:
    kwargs.setdefault("headers", basic_auth())
    async with client.post(path, **kwargs) as answer:
        await answer.read()
        return answer.status


class TestBodies:
    async def test_random_bytes(self, bridge: Client) -> None:
        """Whatever the bytes, kept (200): what they say is the mapping stage's verdict."""
        bodies = collect(st.binary(max_size=3000), 150)
        bad = {}
        for body in bodies:
            status = await status_of(bridge, URL, data=body)
            if status != 200:
                bad[body[:60]] = status
        assert bad == {}
        await dead_letters(bridge)
        await still_healthy(bridge)

    async def test_json_that_is_not_an_object(self, bridge: Client) -> None:
        """Kept (200), then each one a dead letter ``not_an_object``."""
        values = [v for v in collect(JSON, 150) if not isinstance(v, dict)]
        assert values
        bad = {}
        kept = {}
        for value in values:
            async with bridge.post(URL, data=json.dumps(value), headers=basic_auth()) as answer:
                reply = await answer.json()
                if answer.status != 200 or reply.get("accepted") is not True:
                    bad[json.dumps(value)[:60]] = (answer.status, reply)
                else:
                    kept[reply["webhook_id"]] = json.dumps(value)[:60]
        assert bad == {}
        letters = await dead_letters(bridge)
        wrong = {kept[w]: letters.get(w) for w in kept if letters.get(w) != "not_an_object"}
        assert wrong == {}
        await still_healthy(bridge)

    @pytest.mark.parametrize("code", CODES)
    async def test_any_json_object_at_any_code(self, bridge: Client, code: str) -> None:
        """Random objects, and each documented body with random values grafted in: kept (200),
        then mapped or a dead letter, never a 5xx nor a failure of the mapping stage."""
        fields = st.sampled_from(
            ["user", "id", "portal", "meta", "attempt", "test", "exam", "objectId", "planter",
             "score", "timeStarted", "timeCompleted", "timeRegistered", "customAttributes",
             "invite", "learningRecord", "assignment", "userGroup", "purchasedAt", "createdAt"]
        )  # fmt: skip
        objects = st.dictionaries(fields | st.text(max_size=8), JSON, max_size=8)
        grafts = st.tuples(fields, JSON)
        base = fixture_body(code) if code in CODES else {}
        bad = {}
        for body in collect(objects, 25) + [
            {**base, key: value} for key, value in collect(grafts, 25)
        ]:
            async with bridge.post(
                f"/webhooks/synap/{code}", data=json.dumps(body), headers=basic_auth()
            ) as answer:
                if answer.status != 200:
                    bad[json.dumps(body)[:200]] = (answer.status, await answer.text())
        assert bad == {}
        await dead_letters(bridge)
        await still_healthy(bridge)

    # The test's own client sends a body over 1 MiB as bytes on purpose (to meet the limit);
    # aiohttp warns that this client blocks its loop while it does, which is fine here.
    @pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
    async def test_huge_strings(self, bridge: Client) -> None:
        body = fixture_body("attempt.completed")
        body["test"]["title"] = "é" * 400_000  # 800 KB of UTF-8, under the 1 MiB limit
        body["user"]["customAttributes"] = {"notes": "x" * 100_000}
        utf8 = json.dumps(body, ensure_ascii=False).encode()
        assert len(utf8) < LIMIT
        assert await status_of(bridge, URL, data=utf8) in {200, 202}
        body["user"]["name"] = "y" * LIMIT
        assert await status_of(bridge, URL, json=body) == 413
        await still_healthy(bridge)

    async def test_100000_nested_arrays_are_a_clean_dead_letter(self, bridge: Client) -> None:
        """Kept (200); the mapper, whose parsers refuse such nesting (orjson) or run out of
        stack (json: RecursionError), makes each one a dead letter ``invalid_json``."""
        deep = b"[" * 100_000 + b"]" * 100_000
        wrapped = b'{"a":' + deep + b"}"
        kept = []
        for body in (deep, wrapped):
            async with bridge.post(URL, data=body, headers=basic_auth()) as answer:
                assert answer.status == 200
                kept.append((await answer.json())["webhook_id"])
        letters = await dead_letters(bridge)
        assert [letters.get(webhook_id) for webhook_id in kept] == ["invalid_json"] * 2
        await still_healthy(bridge)

    @pytest.mark.parametrize("depth", [200, 600, 1000])
    async def test_deep_objects_inside_a_real_webhook(self, bridge: Client, depth: int) -> None:
        """Nesting JSON accepts (orjson: up to 1024) where mapping copies values (traits)."""
        nested = '{"k":' * depth + '"leaf"' + "}" * depth  # json.dumps would recurse too deep
        body = json.dumps(fixture_body("user.registered"))
        body = body[:-1] + f', "customAttributes": {{"deep": {nested}}}, "x": [{nested}]}}'
        status = await status_of(bridge, "/webhooks/synap/user.registered", data=body)
        assert status in {200, 202}
        await still_healthy(bridge)


class TestEncodings:
    async def test_gzip_bomb_is_refused_without_inflating_it(self, bridge: Client) -> None:
        squeezer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        zeros = b"\0" * (1024 * 1024)
        bomb = b"".join(squeezer.compress(zeros) for _ in range(200)) + squeezer.flush()
        assert len(bomb) < 300_000  # 200 MiB inflated
        headers = {**basic_auth(), "Content-Encoding": "gzip"}
        async with bridge.post(URL, data=bomb, headers=headers) as answer:
            assert answer.status == 413
        await still_healthy(bridge)

    @pytest.mark.parametrize(
        ("encoding", "body"),
        [
            ("gzip", b"this is not gzip at all"),
            ("gzip", gzip.compress(b'{"a": 1}', mtime=0)[:-6]),  # truncated stream
            ("deflate", b"\x00\x01\x02 not deflate"),
            ("br", b"not brotli"),
            ("x-unknown", b'{"a": 1}'),
        ],
    )
    async def test_broken_or_odd_encodings(
        self, bridge: Client, encoding: str, body: bytes
    ) -> None:
        """Refused (400) when the body cannot be read; kept (200) when it can (an unknown
        encoding is taken as is, a truncated gzip stream as far as it inflates), and then a
        dead letter: neither is an ``attempt.completed`` with a user."""
        headers = {**basic_auth(), "Content-Encoding": encoding}
        async with bridge.post(URL, data=body, headers=headers) as answer:
            assert answer.status in {200, 400, 413, 415}, await answer.text()
            kept = (await answer.json())["webhook_id"] if answer.status == 200 else None
        if kept is not None:
            letters = await dead_letters(bridge)
            assert letters.get(kept) in {"invalid_json", "missing_user_id"}
        await still_healthy(bridge)


def _basic(raw: bytes) -> str:
    return "Basic " + b64encode(raw).decode()


class TestAuthorization:
    @pytest.mark.parametrize(
        "header",
        [
            "",
            "Basic",
            "Basic ",
            "Basic !!!not-base64!!!",
            "Basic " + "A" * 5000,
            "Bearer " + b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
            _basic(b"no-colon-here"),
            _basic(f"{USER}:{PASSWORD}x".encode()),
            _basic(f"{USER}x:{PASSWORD}".encode()),
            _basic(f"{USER}:".encode()),
            _basic(f":{PASSWORD}".encode()),
            _basic(b"\xff\xfe:\x00\x01"),
            _basic(f"{USER}:{PASSWORD}".encode().upper()),
            "basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode() + "=",
            "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()[:-2],
        ],
    )
    async def test_wrong_or_malformed_credentials(self, bridge: Client, header: str) -> None:
        async with bridge.post(
            URL, json=fixture_body("attempt.completed"), headers={"Authorization": header}
        ) as answer:
            assert answer.status == 401
            assert answer.headers["WWW-Authenticate"].startswith("Basic ")
        await still_healthy(bridge)

    async def test_non_ascii_header_bytes(self, bridge: Client) -> None:
        reply = await raw_request(
            bridge.port,
            b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Basic \xc3\xa9\xff\r\nContent-Length: 2\r\n\r\n{}",
        )
        assert http_status(reply) in {400, 401}, reply[:100]
        await still_healthy(bridge)


class TestPathsAndMethods:
    @pytest.mark.parametrize(
        "path",
        [
            "/",
            "/webhooks",
            "/webhooks/synap",
            "/webhooks/synap/",
            "/webhooks/synap/attempt.completed/extra",
            "/webhooks/synap/%2e%2e%2fetc%2fpasswd",
            "/webhooks/synap/..",
            "/webhooks/synap/a%00b",
            "/webhooks/synap/" + "a" * 101,
            "/webhooks/synap/-starts-with-dash",
            "/webhooks/synap/sp ace",
            "/WEBHOOKS/SYNAP/attempt.completed",
            "/webhooks/synap/attempt.completed;x=1",
        ],
    )
    async def test_odd_paths(self, bridge: Client, path: str) -> None:
        status = await status_of(bridge, path, json={"a": 1})
        assert status in NOT_5XX
        await still_healthy(bridge)

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    async def test_other_methods(self, bridge: Client, method: str) -> None:
        async with bridge.request(method, URL, headers=basic_auth()) as answer:
            assert answer.status == 405
        await still_healthy(bridge)

    async def test_unknown_methods_and_broken_http(self, bridge: Client) -> None:
        for request in (
            b"BREW " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST " + URL.encode() + b" HTTP/9.9\r\nHost: x\r\n\r\n",
            b"POST\r\n\r\n",
            b"\x00\x01\x02\x03\r\n\r\n",
            b"POST " + URL.encode() + b" HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"POST "
            + URL.encode()
            + b" HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
            b"POST " + URL.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ):
            reply = await raw_request(bridge.port, request)
            assert reply == b"" or http_status(reply) < 500, (request, reply[:200])
        await still_healthy(bridge)

    async def test_random_codes_in_the_url(self, bridge: Client) -> None:
        codes = collect(st.text(min_size=1, max_size=120), 120)
        bad = {}
        for code in codes:
            quoted = "".join(c if c.isalnum() or c in "._-" else f"%{ord(c):02X}" for c in code)
            quoted = quoted.encode("utf-8", "surrogatepass").decode("ascii", "replace")
            status = await status_of(bridge, f"/webhooks/synap/{quoted}", json={"a": 1})
            if status not in NOT_5XX:
                bad[code] = status
        assert bad == {}
        await still_healthy(bridge)

    async def test_odd_query_strings(self, bridge: Client) -> None:
        body = fixture_body("user.registered")
        for query in ("portal=" + "p" * 5000, "portal=%00%ff", "portal=&portal=x", "a" * 3000):
            status = await status_of(bridge, f"/webhooks/synap/user.registered?{query}", json=body)
            assert status in {200, 202, 400}
        await still_healthy(bridge)


class TestHeaderFloods:
    async def test_many_headers(self, bridge: Client) -> None:
        flood = "".join(f"X-Flood-{i}: {i}\r\n" for i in range(500))
        reply = await raw_request(
            bridge.port,
            f"POST {URL} HTTP/1.1\r\nHost: x\r\n{flood}Content-Length: 2\r\n\r\n{{}}".encode(),
        )
        assert 400 <= http_status(reply) < 500, reply[:100]
        await still_healthy(bridge)

    async def test_huge_header(self, bridge: Client) -> None:
        reply = await raw_request(
            bridge.port,
            f"POST {URL} HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 100_000}\r\n\r\n".encode(),
        )
        assert reply == b"" or 400 <= http_status(reply) < 500, reply[:100]
        await still_healthy(bridge)

    async def test_many_slow_connections_do_not_block_others(self, bridge: Client) -> None:
        opened = []
        for _ in range(50):  # half-sent requests held open
            _, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
            writer.write(f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n".encode())
            opened.append(writer)
        try:
            await still_healthy(bridge)
        finally:
            for writer in opened:
                writer.close()


async def raw_request(port: int | None, data: bytes) -> bytes:
    """Send raw bytes, return what came back until the server closes or 5 s pass."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.read(65536)
        return head
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        writer.close()


def http_status(reply: bytes) -> int:
    """The status of a raw HTTP/1.x answer (aiohttp answers parse errors as HTTP/1.0)."""
    assert reply.startswith(b"HTTP/1."), reply[:100]
    return int(reply.split(b" ", 2)[1])
