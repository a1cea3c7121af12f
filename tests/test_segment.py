"""The sink against the strict fake: every answer lands in the right class of the error tree."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from bridge import config as config_module
from bridge.delivery import sinks as sinks_module
from bridge.delivery.sinks import (
    DryRunSink,
    SegmentSink,
    build_sinks,
    env_proxy,
    is_transient_status,
)
from bridge.errors import PermanentDeliveryError, TransientDeliveryError
from tests.fakes import FakeSegment

KEY = "sink-test-write-key-0123456789"


def payload(n: int, **changes: object) -> bytes:
    body: dict[str, Any] = {
        "type": "track",
        "event": "Exam Completed",
        "userId": f"u{n}",
        "messageId": f"m{n}",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "properties": {"n": n, "name": "Zoë"},
        "context": {"library": {"name": "synap-segment-bridge", "version": "0.1.0"}},
    }
    body.update(changes)
    return orjson.dumps(body)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegment]:
    async with FakeSegment(KEY) as server:
        yield server


_OPEN: list[SegmentSink] = []


@pytest.fixture(autouse=True)
async def _close_sinks() -> AsyncIterator[None]:
    """Every sink a test made is closed after it (its session holds sockets)."""
    yield
    while _OPEN:
        await _OPEN.pop().close()


def made(target: SegmentSink) -> SegmentSink:
    _OPEN.append(target)
    return target


def sink(
    fake: FakeSegment, *, key: str = KEY, gzip: bool = True, timeout: float = 5.0
) -> SegmentSink:
    return made(SegmentSink(key, fake.url, timeout, gzip))


async def send(target: SegmentSink, items: list[bytes]) -> None:
    await target.send(items)


class TestSuccess:
    @pytest.mark.parametrize("gzip", [True, False])
    async def test_2xx_returns_and_messages_arrive_intact(
        self, fake: FakeSegment, gzip: bool
    ) -> None:
        await send(sink(fake, gzip=gzip), [payload(1), payload(2)])
        assert [m["messageId"] for m in fake.messages] == ["m1", "m2"]
        assert fake.messages[0]["properties"] == {"n": 1, "name": "Zoë"}

    async def test_repr_hides_the_key(self, fake: FakeSegment) -> None:
        assert KEY not in repr(sink(fake))

    async def test_non_ascii_text_arrives_as_stored(self, fake: FakeSegment) -> None:
        text = "élève 日本語 🎓 \u2028"
        await send(sink(fake), [payload(1, properties={"text": text})])
        assert fake.messages[0]["properties"] == {"text": text}

    async def test_batches_reuse_kept_alive_connections_up_to_the_concurrency(
        self, fake: FakeSegment
    ) -> None:
        """One session per destination, its pool sized to ``delivery.concurrency``: four
        uploads at once open four connections, and the next rounds reuse them."""
        target = made(SegmentSink(KEY, fake.url, 5.0, True, connections=4))
        for round_ in range(3):
            fake.require_concurrency(4)
            await asyncio.gather(*(send(target, [payload(4 * round_ + n)]) for n in range(4)))
        assert fake.accepted == 12
        assert fake.rejected == []
        assert fake.connections == 4

    def test_no_session_is_made_at_import_or_construction(self) -> None:
        """A session belongs to the running event loop; one made at import (as it was) is
        bound to none, and one per sink made before the loop runs would be too."""
        assert not [v for v in vars(sinks_module).values() if type(v).__name__ == "ClientSession"]
        assert SegmentSink(KEY, "http://127.0.0.1:9", 5.0, True)._session is None

    async def test_close_releases_the_connections(self, fake: FakeSegment) -> None:
        target = SegmentSink(KEY, fake.url, 5.0, True)
        await send(target, [payload(1)])
        await target.close()
        await fake.wait_until(lambda: fake.open_connections == 0)
        await send(target, [payload(2)])  # a closed sink opens a new session when used again
        await target.close()
        assert fake.unique == 2


class TestClassification:
    @pytest.mark.parametrize("status", [408, 410, 429, 460, 500, 502, 503, 504, 599])
    async def test_transient_statuses(self, fake: FakeSegment, status: int) -> None:
        fake.fail(status)
        with pytest.raises(TransientDeliveryError) as caught:
            await send(sink(fake), [payload(1)])
        assert caught.value.status == status
        assert caught.value.retry_after is None
        assert fake.messages == []

    @pytest.mark.parametrize("status", [400, 422])
    async def test_permanent_statuses(self, fake: FakeSegment, status: int) -> None:
        """Only "a message is wrong" is permanent: the batch is split down to the culprit."""
        fake.fail(status)
        with pytest.raises(PermanentDeliveryError) as caught:
            await send(sink(fake), [payload(1)])
        assert caught.value.status == status

    @pytest.mark.parametrize("status", [404, 405, 406, 409, 413, 414, 415, 431, 501, 505])
    async def test_endpoint_or_request_refusals_pause(self, fake: FakeSegment, status: int) -> None:
        """A refusal of the whole request says the endpoint is wrong, not a message: the
        destination pauses (transient), nothing is split or buried."""
        fake.fail(status)
        with pytest.raises(TransientDeliveryError) as caught:
            await send(sink(fake), [payload(1)])
        assert caught.value.status == status
        assert "delivery is paused" in caught.value.detail

    async def test_429_carries_retry_after(self, fake: FakeSegment) -> None:
        fake.fail(429, retry_after="7")
        with pytest.raises(TransientDeliveryError) as caught:
            await send(sink(fake), [payload(1)])
        assert caught.value.status == 429
        assert caught.value.retry_after == 7.0

    async def test_invalid_message_is_permanent_400(self, fake: FakeSegment) -> None:
        with pytest.raises(PermanentDeliveryError) as caught:
            await send(sink(fake), [payload(1), payload(2, timestamp="not a time")])
        assert caught.value.status == 400
        assert "timestamp" in caught.value.detail

    async def test_wrong_key_pauses_and_is_never_echoed(self, fake: FakeSegment) -> None:
        """A refused write key is the destination's problem, not the batch's: transient."""
        wrong = "wrong-key-that-must-not-leak"
        with pytest.raises(TransientDeliveryError) as caught:
            await send(sink(fake, key=wrong), [payload(1)])
        assert caught.value.status == 401
        assert "write key" in caught.value.detail
        assert wrong not in str(caught.value)
        assert wrong not in caught.value.detail

    async def test_forbidden_pauses_too(self, fake: FakeSegment) -> None:
        fake.fail(403)
        with pytest.raises(TransientDeliveryError) as caught:
            await send(sink(fake), [payload(1)])
        assert caught.value.status == 403

    @pytest.mark.parametrize("status", [301, 302, 307, 308])
    async def test_redirect_pauses_names_the_target_and_is_not_followed(
        self, fake: FakeSegment, status: int
    ) -> None:
        """A redirect is the endpoint's configuration: like a refused key, pause, never bury;
        following it would send the write key elsewhere."""
        fake.fail(status, location="https://elsewhere.example/v1/batch")
        with pytest.raises(TransientDeliveryError) as caught:
            await send(sink(fake), [payload(1)])
        assert caught.value.status == status
        assert "https://elsewhere.example/v1/batch" in caught.value.detail
        assert fake.requests == 1
        assert fake.messages == []

    async def test_error_body_code_and_message_reach_the_detail(self, fake: FakeSegment) -> None:
        fake.fail(400)
        with pytest.raises(PermanentDeliveryError) as caught:
            await send(sink(fake), [payload(1)])
        assert "programmed failure" in caught.value.detail

    async def test_connection_reset_is_transient(self, fake: FakeSegment) -> None:
        fake.fail(reset=True)
        with pytest.raises(TransientDeliveryError) as caught:
            await send(sink(fake), [payload(1)])
        assert caught.value.status is None
        assert "ConnectionError" in caught.value.detail

    async def test_timeout_is_transient(self, fake: FakeSegment) -> None:
        fake.hold()
        try:
            with pytest.raises(TransientDeliveryError) as caught:
                await send(sink(fake, timeout=0.2), [payload(1)])
        finally:
            fake.release()
        assert "Timeout" in caught.value.detail

    async def test_a_trickled_answer_is_cut_at_the_total_deadline(self, fake: FakeSegment) -> None:
        """One byte every 0.3 s never trips a 1 s read timeout; the total deadline does."""
        fake.fail(trickle=0.3)
        target = made(SegmentSink(KEY, fake.url, 1.0, True, total_timeout_secs=1.5))
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError) as caught:
            await send(target, [payload(1)])
        assert 1.5 <= time.monotonic() - started < 4.0  # the whole answer would take 5 s
        assert "total_timeout_secs" in caught.value.detail
        await fake.wait_until(lambda: fake.trickles_abandoned == 1)  # the socket was closed

    async def test_each_upload_is_cut_at_its_own_deadline_while_others_flow(
        self, fake: FakeSegment
    ) -> None:
        """Two trickled answers (5 s each in full): the one with the shorter deadline is cut
        first though it started second; meanwhile uploads to a healthy sink flow, and its
        kept-alive connection is untouched by the cuts."""
        fake.fail(trickle=0.3, times=2)
        long = made(SegmentSink(KEY, fake.url, 1.0, True, total_timeout_secs=3.0))
        short = made(SegmentSink(KEY, fake.url, 1.0, True, total_timeout_secs=1.0))
        healthy = made(SegmentSink(KEY, fake.url, 5.0, True))
        long_upload = asyncio.create_task(send(long, [payload(1)]))
        await fake.wait_until(lambda: fake.trickling == 1)
        short_upload = asyncio.create_task(send(short, [payload(2)]))
        await fake.wait_until(lambda: fake.trickling == 2)
        await send(healthy, [payload(3)])
        assert fake.trickling == 2  # delivered while both were stuck
        with pytest.raises(TransientDeliveryError, match="total_timeout_secs"):
            await short_upload
        assert not long_upload.done()
        with pytest.raises(TransientDeliveryError, match="total_timeout_secs"):
            await long_upload
        await fake.wait_until(lambda: fake.trickles_abandoned == 2)
        connections = fake.connections
        await send(healthy, [payload(4)])
        assert fake.connections == connections  # the same kept-alive connection
        assert set(fake.ids) == {"m1", "m2", "m3", "m4"}

    async def test_connection_refused_is_transient(self) -> None:
        with socket.socket() as probe:  # a port nobody listens on once closed
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        target = made(SegmentSink(KEY, f"http://127.0.0.1:{port}", 2.0, True))
        with pytest.raises(TransientDeliveryError):
            await send(target, [payload(1)])

    def test_status_table(self) -> None:
        assert [s for s in range(400, 600) if is_transient_status(s)] == [
            408,
            410,
            429,
            460,
            500,
            502,
            503,
            504,
            *range(506, 600),
        ]


class TestDryRun:
    async def test_a_batch_sent_to_dry_run_is_refused_never_acknowledged(self) -> None:
        dry = DryRunSink("eu")
        with pytest.raises(TransientDeliveryError, match="no write key"):
            await dry.send([payload(1)])
        assert dry.dry_run is True


class TestBuildSinks:
    def test_dry_run_without_keys(self) -> None:
        sinks = build_sinks(config_module.parse({}))
        assert list(sinks) == ["default"]
        assert sinks["default"].dry_run

    def test_dry_run_destinations_are_the_ones_without_a_key(self) -> None:
        loaded = config_module.parse(
            {
                "segment": {"write_key": KEY},
                "routing": {"destinations": {"eu": {"portal_ids": ["p-eu"]}}},
            }
        )
        assert loaded.dry_run_destinations == ["eu"]
        assert [name for name, s in build_sinks(loaded).items() if s.dry_run] == ["eu"]

    def test_one_sink_per_destination(self) -> None:
        cfg = config_module.parse(
            {
                "segment": {"write_key": KEY, "endpoint": "http://127.0.0.1:9", "gzip": False},
                "routing": {
                    "destinations": {
                        "eu": {
                            "write_key": "eu-key",
                            "endpoint": "https://events.eu1.segmentapis.com",
                            "portal_ids": ["p-eu"],
                        },
                        "staging": {"portal_ids": ["p-test"]},
                    }
                },
            }
        )
        sinks = build_sinks(cfg)
        assert {name: s.dry_run for name, s in sinks.items()} == {
            "default": False,
            "eu": False,
            "staging": True,
        }
        eu = sinks["eu"]
        assert isinstance(eu, SegmentSink)
        assert eu.endpoint == "https://events.eu1.segmentapis.com"
        assert eu.name == "eu"
        assert eu.gzip is False  # gzip and timeout come from the segment section
        assert all(name == s.name for name, s in sinks.items())


class TestProxy:
    """HTTPS_PROXY/NO_PROXY read once per session, as requests and curl read them."""

    def test_the_environment_names_the_proxy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert env_proxy("https://api.segment.io/v1/batch") == "http://proxy.internal:3128"

    def test_no_proxy_exempts_a_host(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
        monkeypatch.setenv("NO_PROXY", "segment.io")
        assert env_proxy("https://api.segment.io/v1/batch") is None

    def test_without_a_proxy_it_is_direct(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        assert env_proxy("https://api.segment.io/v1/batch") is None

    async def test_batches_go_through_the_proxy_named(
        self, fake: FakeSegment, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The fake stands in for the proxy: an absolute-form request reaches it, and the
        sink's own host (nowhere.invalid) is never resolved."""
        monkeypatch.setenv("HTTP_PROXY", fake.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        target = made(SegmentSink(KEY, "http://nowhere.invalid", 5.0, True))
        await send(target, [payload(1)])
        assert fake.ids == {"m1": 1}
