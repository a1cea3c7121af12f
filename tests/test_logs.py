"""The JSON log line: cheap on the hot path (orjson), yet never lost and never leaking a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge import logs
from bridge.app import build_app
from bridge.config import Config
from tests.conftest import attempt_completed, basic_auth, settled


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logs rendered as JSON into a buffer; the session's configuration is restored after."""
    out = io.StringIO()
    logs.configure("info", "json", out)
    yield out
    logs.configure("info", "json")


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_webhook_line_is_one_json_object_with_its_fields(stream: io.StringIO) -> None:
    logs.get("bridge.receive.webhook").info("webhook", code="exam.completed", latency_ms=1.5)
    (line,) = lines(stream)
    assert line["event"] == "webhook"
    assert line["code"] == "exam.completed"
    assert line["latency_ms"] == 1.5
    assert line["level"] == "info"
    assert isinstance(line["timestamp"], str)


def test_values_orjson_refuses_are_still_rendered(stream: io.StringIO) -> None:
    """An integer past 64 bits, a lone surrogate and a non-text key reach the line anyway."""
    log = logs.get("bridge.test")
    log.info("huge", count=2**70)
    log.info("surrogate", text="a\udc80b")
    log.info("keys", mapping={1: "one"})
    log.info("object", thing=object())
    huge, surrogate, keyed, thing = lines(stream)
    assert huge["count"] == 2**70
    assert surrogate["text"] == "a\udc80b"
    assert keyed["mapping"] == {"1": "one"}
    assert str(thing["thing"]).startswith("<object object")


def test_secrets_are_redacted_whatever_their_spelling(stream: io.StringIO) -> None:
    log = logs.get("bridge.test")
    log.info("one", password="hunter2", **{"Write-Key": "wk"})
    log.info("two", password="hunter3")
    first, second = lines(stream)
    assert first["password"] == "***"
    assert first["Write-Key"] == "***"
    assert second["password"] == "***"
    assert "hunter" not in stream.getvalue()


def test_caller_lookup_is_off_and_stdlib_lines_still_render(stream: io.StringIO) -> None:
    """No line shows a caller, so records skip looking it up; foreign loggers still format."""
    logging.getLogger("aiohttp.server").error("boom %s", 1)
    (line,) = lines(stream)
    assert line["event"] == "boom 1"
    assert logging._srcfile is None


def test_enabled_follows_the_configured_level(stream: io.StringIO) -> None:
    assert logs.enabled(logging.INFO)
    logs.configure("warning", "json", stream)
    assert not logs.enabled(logging.INFO)
    assert logs.enabled(logging.WARNING)
    assert logs.enabled(logging.ERROR)


async def test_at_warning_level_only_the_unknown_code_line_of_a_webhook_is_written(
    stream: io.StringIO,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
    config_factory: Callable[..., Config],
) -> None:
    """The per-webhook lines (the receiver's ``webhook``, the mapper's ``webhook_mapped``) are
    skipped before their fields are built when info is off; the mapper's warning for a code
    nobody mapped still reaches the log."""
    logs.configure("warning", "json", stream)
    client = await aiohttp_client(build_app(config_factory()))
    for code in ("attempt.completed", "course.finished"):
        body = attempt_completed(code)
        async with client.post(f"/webhooks/synap/{code}", json=body, headers=basic_auth()) as r:
            assert r.status == 200
    await settled(client.app)
    per_webhook = ("webhook", "webhook_mapped", "webhook_dead_lettered")
    (line,) = [line for line in lines(stream) if line["event"] in per_webhook]
    assert (line["event"], line["level"], line["code"], line["reason"]) == (
        "webhook_dead_lettered",
        "warning",
        "course.finished",
        "unknown_code",
    )
