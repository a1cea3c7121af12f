"""The webhook endpoint over real HTTP: auth, limits, JSON checks, commit-before-ack, health.

Each test runs the real application (bridge.app.build_app) with a real SQLite file; delivery
goes to the strict fake Segment.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.receive import backpressure
from bridge.receive.runtime import RUNTIME
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import basic_auth, eventually, settled
from tests.fakes import FakeSegment
from tests.test_hostile import http_status

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

URL = "/webhooks/synap/attempt.completed"


def attempt_completed(attempt_id: str = "att-1", user_id: str = "u-1") -> dict[str, Any]:
    return {
        "id": attempt_id,
        "score": 7,
        "scoreFrac": 0.7,
        "timeStarted": "2026-11-01T09:30:00.000Z",
        "timeCompleted": "2026-11-01T10:00:00.000Z",
        "timeSpentInMs": 1_800_000,
        "test": {"id": "test-1", "title": "Algebra I"},
        "attempt": {"id": attempt_id, "isExam": False, "score": 7, "scoreFrac": 0.7},
        "user": {"id": user_id, "name": "Ada Lovelace", "email": "ada@example.org"},
        "portal": {"id": "portal-1"},
        "meta": {"timestamp": "2026-11-01T10:00:01.000Z"},
    }


@pytest.fixture
async def bridge(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, config_factory: Callable[..., Config]
) -> Client:
    return await aiohttp_client(build_app(config_factory(fake_segment.url)))


async def pending(client: Client) -> int:
    runtime = client.app[RUNTIME]
    stats = await runtime.store.stats(0)
    return stats.pending + stats.in_flight + stats.delivered_total


class TestAuthentication:
    async def test_missing_credentials(self, bridge: Client) -> None:
        response = await bridge.post(URL, json=attempt_completed())
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert (await response.json())["error"] == "unauthorized"

    async def test_wrong_password(self, bridge: Client) -> None:
        response = await bridge.post(
            URL, json=attempt_completed(), headers=basic_auth(password="nope")
        )
        assert response.status == 401
        assert await pending(bridge) == 0

    async def test_right_credentials(self, bridge: Client) -> None:
        response = await bridge.post(URL, json=attempt_completed(), headers=basic_auth())
        assert response.status == 200
        body = await response.json()
        assert body == {"accepted": True, "webhook_id": body["webhook_id"]}
        assert body["webhook_id"].startswith("wh_")
        await settled(bridge.app)
        assert await pending(bridge) >= 1

    async def test_no_password_configured_means_open_on_loopback(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config]
    ) -> None:
        client = await aiohttp_client(build_app(config_factory(auth={"password": None})))
        response = await client.post(URL, json=attempt_completed())
        assert response.status == 200


class TestBodyLimits:
    @pytest.fixture
    async def small(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> Client:
        config = config_factory(fake_segment.url, server={"max_body_bytes": 4096})
        return await aiohttp_client(build_app(config))

    async def test_declared_length_over_limit(self, small: Client) -> None:
        body = json.dumps({**attempt_completed(), "pad": "x" * 5000}).encode()
        response = await small.post(URL, data=body, headers=basic_auth())
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"

    async def test_chunked_body_over_limit(self, small: Client) -> None:
        async def chunks() -> Any:
            for _ in range(10):
                yield b"x" * 1000

        response = await small.post(URL, data=chunks(), headers=basic_auth())
        assert response.status == 413

    async def test_gzip_limit_applies_to_inflated_size(self, small: Client) -> None:
        inflated = json.dumps({**attempt_completed(), "pad": "x" * 50_000}).encode()
        compressed = gzip.compress(inflated)
        assert len(compressed) < 4096 < len(inflated)
        headers = {**basic_auth(), "Content-Encoding": "gzip"}
        response = await small.post(URL, data=compressed, headers=headers)
        assert response.status == 413
        assert await pending(small) == 0

    async def test_gzip_body_within_limit_is_accepted(self, small: Client) -> None:
        compressed = gzip.compress(json.dumps(attempt_completed()).encode())
        headers = {**basic_auth(), "Content-Encoding": "gzip"}
        response = await small.post(URL, data=compressed, headers=headers)
        assert response.status == 200

    # A body complete before the handler runs is taken from the buffer; one still arriving is
    # read under the body deadline. Both paths, with the same answers:

    @pytest.mark.parametrize(("size", "status"), [(1000, 200), (5000, 413)])
    async def test_a_chunked_body_sent_whole(self, small: Client, size: int, status: int) -> None:
        body = json.dumps({**attempt_completed(), "pad": "x" * size}).encode()
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        reply = await exchange(small, _head("Transfer-Encoding: chunked") + chunked)
        assert http_status(reply) == status

    async def test_a_body_still_arriving_when_the_handler_runs(self, small: Client) -> None:
        body = json.dumps(attempt_completed("late")).encode()
        head = _head(f"Content-Length: {len(body)}")
        reply = await exchange(small, head + body[:10], body[10:], waiting_in="read_limited")
        assert http_status(reply) == 200
        await settled(small.app)
        assert await pending(small) == 1


def _head(*fields: str) -> bytes:
    lines = [
        f"POST {URL} HTTP/1.1",
        "Host: bridge",
        f"Authorization: {basic_auth()['Authorization']}",
    ]
    return ("\r\n".join([*lines, *fields]) + "\r\n\r\n").encode()


async def exchange(
    client: Client, first: bytes, then: bytes = b"", waiting_in: str | None = None
) -> bytes:
    """Send ``first``; once a handler awaits inside ``waiting_in`` (when given), ``then``; the
    answer's bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(first)
        await writer.drain()
        if waiting_in is not None:
            await eventually(lambda: _awaiting(waiting_in))
            writer.write(then)
            await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(65536)
    finally:
        writer.close()


def _awaiting(function: str) -> bool:
    """Whether some task of this loop is suspended inside ``function`` (the server runs here)."""
    for task in asyncio.all_tasks():
        awaited: Any = task.get_coro()
        while awaited is not None:
            code = getattr(awaited, "cr_code", None) or getattr(awaited, "ag_code", None)
            if code is not None and code.co_name == function:
                return True
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return False


class TestPayloadChecks:
    @pytest.mark.parametrize(
        ("body", "error"),
        [
            (b"{not json", "invalid_json"),
            (b"", "invalid_json"),
            (b"[1, 2]", "not_an_object"),
            (b'"text"', "not_an_object"),
            (b"null", "not_an_object"),
            (b"\xff\xfe\x00", "invalid_json"),
        ],
    )
    async def test_not_a_json_object(self, bridge: Client, body: bytes, error: str) -> None:
        """Keep first, judge after: kept (200), then a dead letter with the reason and the raw
        body, never a message."""
        response = await bridge.post(URL, data=body, headers=basic_auth())
        assert response.status == 200
        answer = await response.json()
        assert answer["accepted"] is True
        await settled(bridge.app)
        store = bridge.app[RUNTIME].store
        (letter,) = await store.dead_letters(_all())
        assert (letter.webhook_id, letter.reason) == (answer["webhook_id"], error)
        assert letter.detail
        detail = await store.dead_letter(letter.id)
        assert detail is not None
        assert detail.raw_body == body
        assert await pending(bridge) == 0

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/x-www-form-urlencoded", ""]
    )
    async def test_any_content_type(self, bridge: Client, content_type: str) -> None:
        headers = {**basic_auth(), "Content-Type": content_type}
        response = await bridge.post(URL, data=json.dumps(attempt_completed()), headers=headers)
        assert response.status == 200

    async def test_event_name_mismatch_is_kept_as_a_dead_letter(self, bridge: Client) -> None:
        """Not a 400 that Synap may give up on: kept (200), then a dead letter, replayable
        (tests/test_ids.py)."""
        body = {**attempt_completed(), "meta": {"timestamp": "x", "eventName": "attempt.started"}}
        response = await bridge.post(URL, json=body, headers=basic_auth())
        assert response.status == 200
        answer = await response.json()
        await settled(bridge.app)
        letters = await bridge.app[RUNTIME].store.dead_letters(_all())
        assert [(letter.webhook_id, letter.reason) for letter in letters] == [
            (answer["webhook_id"], "event_name_mismatch")
        ]
        assert await pending(bridge) == 0

    async def test_event_name_that_agrees(self, bridge: Client) -> None:
        body = attempt_completed()
        body["meta"]["eventName"] = "attempt.completed"
        response = await bridge.post(URL, json=body, headers=basic_auth())
        assert response.status == 200

    async def test_unknown_code_is_a_dead_letter(self, bridge: Client) -> None:
        response = await bridge.post(
            "/webhooks/synap/course.finished", json={"a": 1}, headers=basic_auth()
        )
        assert response.status == 200
        body = await response.json()
        assert body["accepted"] is True
        await settled(bridge.app)
        store = bridge.app[RUNTIME].store
        letters = await store.dead_letters(_all())
        assert [(letter.code, letter.reason) for letter in letters] == [
            ("course.finished", "unknown_code")
        ]

    async def test_no_user_id_is_a_dead_letter_with_raw_body(self, bridge: Client) -> None:
        body = attempt_completed()
        del body["user"]
        response = await bridge.post(URL, json=body, headers=basic_auth())
        assert response.status == 200
        await settled(bridge.app)
        store = bridge.app[RUNTIME].store
        (letter,) = await store.dead_letters(_all())
        assert letter.reason == "missing_user_id"
        detail = await store.dead_letter(letter.id)
        assert detail is not None
        assert json.loads(detail.raw_body) == body

    async def test_redelivery_is_stored_once(self, bridge: Client) -> None:
        first = await bridge.post(URL, json=attempt_completed(), headers=basic_auth())
        second = await bridge.post(URL, json=attempt_completed(), headers=basic_auth())
        assert first.status == second.status == 200
        await settled(bridge.app)
        assert await pending(bridge) == 1  # one "Completed Test", stored once


class TestErrorsAreJson:
    async def test_unknown_path(self, bridge: Client) -> None:
        response = await bridge.get("/nope")
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"

    async def test_wrong_method(self, bridge: Client) -> None:
        response = await bridge.get(URL)
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
        assert (await response.json())["error"] == "method_not_allowed"


class TestStorageFailure:
    async def test_full_database_answers_503_never_2xx(
        self,
        aiohttp_client: MakeClient,
        config_factory: Callable[..., Config],
        tmp_path: Path,
    ) -> None:
        config = config_factory(server={"max_body_bytes": 2_000_000})
        store = SQLiteStore(tmp_path / "tiny.db", max_page_count=64)
        client = await aiohttp_client(build_app(config, store=store))
        small = await client.post(URL, json=attempt_completed("a-small"), headers=basic_auth())
        assert small.status == 200
        huge = {**attempt_completed("a-huge"), "pad": "x" * 1_000_000}
        response = await client.post(URL, json=huge, headers=basic_auth())
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        assert (await response.json())["error"] == "storage_unavailable"
        # Nothing of the refused webhook was committed; the store still works.
        await settled(client.app)
        assert await pending(client) == 1  # the small webhook's one message
        again = await client.post(URL, json=attempt_completed("a-next"), headers=basic_auth())
        assert again.status == 200


class TestHealth:
    async def test_healthz(self, bridge: Client) -> None:
        response = await bridge.get("/healthz")
        assert response.status == 200
        assert (await response.json())["status"] == "ok"

    async def test_readyz_ready_then_not_when_stopping(self, bridge: Client) -> None:
        response = await bridge.get("/readyz")
        assert response.status == 200, await response.text()
        bridge.app[RUNTIME].stopping = True
        response = await bridge.get("/readyz")
        assert response.status == 503
        assert "shutting down" in (await response.json())["problems"]
        refused = await bridge.post(URL, json=attempt_completed(), headers=basic_auth())
        assert refused.status == 503
        assert "Retry-After" in refused.headers

    async def test_metrics_move_when_webhooks_flow(
        self, bridge: Client, fake_segment: FakeSegment
    ) -> None:
        unreadable = {**basic_auth(), "Content-Encoding": "gzip"}
        await bridge.post(URL, json=attempt_completed(), headers=basic_auth())
        await bridge.post(URL, data=b"[]", headers=basic_auth())
        await bridge.post(URL, data=b"\x1f\x8bnot gzip", headers=unreadable)
        await settled(bridge.app)
        await fake_segment.wait_for(1)
        text = await (await bridge.get("/metrics")).text()
        # Both readable bodies are kept; what they say is the mapping stage's verdict.
        assert (
            'synap_bridge_webhooks_received_total{code="attempt.completed",outcome="accepted"} 2.0'
            in text
        )
        assert (
            'synap_bridge_webhooks_received_total{code="attempt.completed",outcome="invalid"} 1.0'
            in text
        )
        assert 'synap_bridge_webhooks_mapped_total{outcome="mapped"} 1.0' in text
        assert 'synap_bridge_webhooks_mapped_total{outcome="dead_lettered"} 1.0' in text
        assert 'synap_bridge_dead_letters_total{reason="not_an_object"} 1.0' in text
        assert "synap_bridge_messages_enqueued_total 1.0" in text
        await eventually(lambda: delivered_count(bridge) == 1)
        text = await (await bridge.get("/metrics")).text()
        assert 'synap_bridge_messages_delivered_total{destination="default"} 1.0' in text
        assert 'synap_bridge_delivery_attempts_total{result="ok"}' in text


def delivered_count(client: Client) -> float:
    sample = client.app[RUNTIME].metrics.registry.get_sample_value(
        "synap_bridge_messages_delivered_total", {"destination": "default"}
    )
    return sample or 0.0


def _all() -> Any:
    from bridge.store import DeadLetterFilter

    return DeadLetterFilter()


def probes_committed(path: Path) -> int:
    """How many write probes the database has committed (read from the file, not the app)."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'writable_probe'").fetchone()
    finally:
        conn.close()
    return int(row[0]) if row else 0


class TestReadiness:
    """Issue 12 item 10: /readyz reads the periodic storage check's cached result."""

    async def test_a_probe_flood_writes_nothing_and_failure_still_shows(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config], tmp_path: Path
    ) -> None:
        config = config_factory(storage={"busy_timeout_secs": 0.1})
        client = await aiohttp_client(build_app(config, watch_interval=3600))
        runtime = client.app[RUNTIME]
        db = tmp_path / "bridge.db"
        before = probes_committed(db)
        for _ in range(300):
            async with client.get("/readyz") as answer:
                assert answer.status == 200
        assert probes_committed(db) == before  # not one commit for 300 probes

        # A real fault: another process holds the write lock past busy_timeout_secs.
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            await backpressure.refresh(runtime)  # what the watcher runs every interval
            async with client.get("/readyz") as answer:
                assert answer.status == 503
                problems = (await answer.json())["problems"]
            # What anyone may read: no error text (it is in the storage_not_writable line).
            assert problems == ["storage unavailable"]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await backpressure.refresh(runtime)
        async with client.get("/readyz") as answer:
            assert answer.status == 200
