"""Every refusal leaves a trace, and none of them lets a client grow the bridge's state.

Issue 12 items 9, 11 and 15 on the real app over real HTTP: 400 lines carry the error code,
404/405/401 lines are throttled, each line names the client (a forwarded address only from a
trusted proxy), an unknown-code dead letter is a warning, the ``Server`` header names no
version, a client that hangs up mid-body is one info line (no 5xx, no traceback), and URL codes
never become unbounded metric labels.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.receive.runtime import RUNTIME
from bridge.receive.throttle import Throttle
from tests.conftest import attempt_completed, basic_auth, eventually, serving, settled
from tests.test_hostile import http_status, raw_request

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

URL = "/webhooks/synap/attempt.completed"


def unreadable() -> dict[str, Any]:
    """A body the bridge cannot read (it says gzip and is not): the one 400 left for what a
    client sends, now that content is judged after the answer."""
    return {"data": b"not gzip at all", "headers": {**basic_auth(), "Content-Encoding": "gzip"}}


def lines(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The structured log lines named ``event`` (structlog hands logging a dict)."""
    found = []
    for record in caplog.records:
        if isinstance(record.msg, dict) and record.msg.get("event") == event:
            found.append({**record.msg, "levelname": record.levelname})
    return found


@pytest.fixture
async def bridge(aiohttp_client: MakeClient, config_factory: Callable[..., Config]) -> Client:
    client = await aiohttp_client(build_app(config_factory()))
    client.app[RUNTIME].throttle = Throttle(interval=3600)  # "one a second", made deterministic
    return client


class TestTraces:
    async def test_a_400_line_carries_the_error_code_and_the_client(
        self, bridge: Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with bridge.post(URL, **unreadable()) as answer:
            assert answer.status == 400
            assert (await answer.json())["error"] == "invalid_body"
        (line,) = lines(caplog, "webhook")
        assert (line["outcome"], line["error"]) == ("invalid", "invalid_body")
        assert line["client"] == "127.0.0.1"

    @pytest.mark.parametrize(
        ("method", "path", "error"),
        [("GET", "/nope", "not_found"), ("GET", URL, "method_not_allowed")],
    )
    async def test_404_and_405_are_logged_throttled(
        self,
        bridge: Client,
        caplog: pytest.LogCaptureFixture,
        method: str,
        path: str,
        error: str,
    ) -> None:
        for n in range(50):
            async with bridge.request(method, f"{path}?n={n}") as answer:
                assert answer.status in (404, 405)
        (line,) = lines(caplog, "refused")
        assert (line["error"], line["client"], line["suppressed"]) == (error, "127.0.0.1", 0)
        bridge.app[RUNTIME].throttle.interval = 0  # the next line says how many were left out
        async with bridge.request(method, path) as answer:
            assert answer.status in (404, 405)
        assert lines(caplog, "refused")[-1]["suppressed"] == 49

    async def test_401_lines_are_throttled(
        self, bridge: Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        for n in range(50):
            async with bridge.post(f"/webhooks/synap/bogus-{n}", json={}) as answer:
                assert answer.status == 401
        (line,) = lines(caplog, "webhook")
        assert line["outcome"] == "unauthorized"
        assert line["error"] == "unauthorized"

    async def test_unknown_code_dead_letter_is_a_warning(
        self, bridge: Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Kept (an info line, like any webhook), then the mapping stage's warning."""
        async with bridge.post(
            "/webhooks/synap/course.finished", json={"a": 1}, headers=basic_auth()
        ) as answer:
            assert answer.status == 200
            webhook_id = (await answer.json())["webhook_id"]
        await settled(bridge.app)
        (line,) = lines(caplog, "webhook")
        assert (line["levelname"], line["outcome"], line["webhook_id"]) == (
            "INFO",
            "accepted",
            webhook_id,
        )
        (dead,) = lines(caplog, "webhook_dead_lettered")
        assert (dead["levelname"], dead["reason"], dead["webhook_id"]) == (
            "WARNING",
            "unknown_code",
            webhook_id,
        )
        assert dead["code"] == "course.finished"

    async def test_server_header_names_no_version(self, bridge: Client) -> None:
        for path in ("/healthz", "/readyz", "/metrics", "/nope", URL):
            async with bridge.get(path) as answer:
                assert answer.headers["Server"] == "synap-bridge"
        for body, status in ((orjson.dumps(attempt_completed(7)), 200), (b"[]", 200)):
            async with bridge.post(URL, data=body, headers=basic_auth()) as answer:
                assert (answer.status, answer.headers["Server"]) == (status, "synap-bridge")
        async with bridge.post(URL, **unreadable()) as answer:
            assert (answer.status, answer.headers["Server"]) == (400, "synap-bridge")
        async with bridge.post(URL, json={}) as answer:
            assert (answer.status, answer.headers["Server"]) == (401, "synap-bridge")
        reply = await raw_request(bridge.port, b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert http_status(reply) == 400
        assert b"aiohttp" not in reply.lower()
        assert b"python" not in reply.lower()


class TestForwardedAddresses:
    async def test_forwarded_for_is_ignored_without_trusted_proxies(
        self, bridge: Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        headers = {**basic_auth(), "X-Forwarded-For": "203.0.113.7"}
        async with bridge.post(URL, json=attempt_completed(1), headers=headers) as answer:
            assert answer.status == 200
        assert lines(caplog, "webhook")[0]["client"] == "127.0.0.1"

    async def test_forwarded_for_from_a_trusted_proxy(
        self,
        aiohttp_client: MakeClient,
        config_factory: Callable[..., Config],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        config = config_factory(server={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]})
        client = await aiohttp_client(build_app(config))
        chains = {
            "198.51.100.1, 203.0.113.7, 10.1.2.3": "203.0.113.7",  # rightmost untrusted hop
            "10.9.9.9": "10.9.9.9",  # only trusted hops: the first one
            "not-an-address, 10.1.2.3": "127.0.0.1",  # garbage: the peer
        }
        for n, chain in enumerate(chains):
            headers = {**basic_auth(), "X-Forwarded-For": chain}
            async with client.post(URL, json=attempt_completed(n), headers=headers) as answer:
                assert answer.status == 200
        assert [line["client"] for line in lines(caplog, "webhook")] == list(chains.values())


class TestClientHangsUpMidBody:
    async def test_one_info_line_no_5xx_no_traceback(
        self, config_factory: Callable[..., Config], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Issue 12 item 11, over a raw socket against the server as ``serve`` runs it: half
        the declared body, then the socket closes."""
        config = config_factory()
        app = build_app(config)
        async with serving(app, config) as port:
            head = (
                f"POST {URL} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {basic_auth()['Authorization']}\r\nContent-Length: 1000\r\n\r\n"
            )
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head.encode() + b'{"id": "att-1", "pad": "' + b"x" * 100)
            await writer.drain()
            # A round trip on another connection: by its end the server has read the head above
            # and its handler waits for the rest (a close before that is never handled at all).
            assert http_status(await raw_request(port, HEALTHZ)) == 200
            writer.close()
            await eventually(lambda: bool(lines(caplog, "webhook")))
            ok = await raw_request(port, webhook_request(attempt_completed(2)))
            assert http_status(ok) == 200
        first, second = lines(caplog, "webhook")
        assert (first["levelname"], first["outcome"]) == ("INFO", "disconnected")
        assert first["error"] == "client_disconnected"
        assert second["outcome"] == "accepted"
        edge = [r for r in caplog.records if r.name.startswith(("bridge.receive", "aiohttp"))]
        assert not [r for r in edge if r.levelno >= logging.ERROR or r.exc_info]
        assert sample(app, outcome="disconnected") == 1
        assert sample(app, outcome="internal_error") == 0


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def webhook_request(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic_auth()['Authorization']}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def sample(app: web.Application, **labels: str) -> float:
    registry = app[RUNTIME].metrics.registry
    labels.setdefault("code", "attempt.completed")
    return registry.get_sample_value("synap_bridge_webhooks_received_total", labels) or 0.0
