"""/metrics: the series operators alert on exist, move when webhooks flow, can be protected
by their own credentials and served on a separate port."""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app, metrics_app
from bridge.config import Config
from bridge.delivery.sinks import build_sinks
from bridge.receive.runtime import RUNTIME
from tests.conftest import basic_auth, eventually, fixture_body, settled
from tests.fakes import FakeSegment

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

SERIES = (
    "synap_bridge_webhooks_received_total",
    "synap_bridge_request_duration_seconds_bucket",
    "synap_bridge_webhooks_mapped_total",
    "synap_bridge_unmapped_webhooks",
    "synap_bridge_mapping_lag_seconds",
    "synap_bridge_messages_enqueued_total",
    "synap_bridge_messages_delivered_total",
    "synap_bridge_dead_letters_total",
    "synap_bridge_delivery_attempts_total",
    "synap_bridge_batch_size_messages_bucket",
    "synap_bridge_batch_size_bytes_bucket",
    "synap_bridge_pending_messages",
    "synap_bridge_oldest_pending_age_seconds",
    "synap_bridge_last_delivery_timestamp_seconds",
    "synap_bridge_messages_retried_total",
    "synap_bridge_destination_pauses_total",
    "synap_bridge_destination_paused",
    "synap_bridge_destination_refused",
    "synap_bridge_ready",
    "synap_bridge_delivery_running",
    "synap_bridge_intake_refusing",
    "synap_bridge_intake_paced_total",
    "synap_bridge_mapping_yielded_seconds_total",
)


def sample(client: Client, name: str, **labels: str) -> float:
    value = client.app[RUNTIME].metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_every_series_is_reported_and_moves(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, config_factory: Callable[..., Config]
) -> None:
    client = await aiohttp_client(build_app(config_factory(fake_segment.url)))
    before = await (await client.get("/metrics")).text()
    assert "synap_bridge_pending_messages 0.0" in before

    fake_segment.fail(503, times=1)  # one transient failure first
    for code in ("attempt.completed", "user.registered"):
        response = await client.post(
            f"/webhooks/synap/{code}", json=fixture_body(code), headers=basic_auth()
        )
        assert response.status == 200
    dead = await client.post("/webhooks/synap/no.such", json={}, headers=basic_auth())
    assert dead.status == 200  # kept; the mapping stage makes it a dead letter
    await settled(client.app)
    await fake_segment.wait_for(3)
    await eventually(
        lambda: sample(client, "synap_bridge_messages_delivered_total", destination="default") == 3
    )
    text = await (await client.get("/metrics")).text()
    for name in SERIES:
        assert name in text, name
    assert sample(client, "synap_bridge_messages_enqueued_total") == 3
    assert sample(client, "synap_bridge_delivery_attempts_total", result="transient") == 1
    assert sample(client, "synap_bridge_delivery_attempts_total", result="ok") >= 1
    assert sample(client, "synap_bridge_dead_letters_total", reason="unknown_code") == 1
    assert sample(client, "synap_bridge_webhooks_mapped_total", outcome="mapped") == 2
    assert sample(client, "synap_bridge_webhooks_mapped_total", outcome="dead_lettered") == 1
    assert (
        sample(client, "synap_bridge_webhooks_received_total", code="unknown", outcome="accepted")
        # an unknown code is labelled "unknown" (issue 12 item 9), never by the URL
        == 1
    )
    assert sample(client, "synap_bridge_unmapped_webhooks") == 0
    assert sample(client, "synap_bridge_request_duration_seconds_count") == 3
    assert sample(client, "synap_bridge_last_delivery_timestamp_seconds") > 0
    assert sample(client, "synap_bridge_pending_messages") == 0
    assert sample(client, "synap_bridge_destination_pauses_total", destination="default") == 1
    assert sample(client, "synap_bridge_messages_retried_total", destination="default") >= 1
    assert sample(client, "synap_bridge_destination_paused", destination="default") == 0
    assert sample(client, "synap_bridge_ready") == 1
    assert sample(client, "synap_bridge_delivery_running") == 1
    assert sample(client, "synap_bridge_intake_refusing") == 0


async def test_paused_and_refused_gauges_follow_a_real_outage(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, config_factory: Callable[..., Config]
) -> None:
    """The pause gauge is 1 during a 500 outage (it compared a monotonic deadline with epoch
    time and stayed 0); a refused write key sets the refused gauge and a /readyz warning while
    /readyz stays ready (intake works; the queue waits the key out)."""
    config = config_factory(
        fake_segment.url, delivery={"retry": {"initial_backoff_secs": 30, "max_backoff_secs": 60}}
    )
    client = await aiohttp_client(build_app(config))
    fake_segment.fail(500, times=1)
    code = "user.registered"
    response = await client.post(
        f"/webhooks/synap/{code}", json=fixture_body(code), headers=basic_auth()
    )
    assert response.status == 200
    await eventually(lambda: fake_segment.requests == 1)
    await eventually(
        lambda: sample(client, "synap_bridge_destination_pauses_total", destination="default") == 1
    )
    await client.get("/metrics")
    assert sample(client, "synap_bridge_destination_paused", destination="default") == 1
    assert sample(client, "synap_bridge_destination_refused", destination="default") == 0
    status = client.app[RUNTIME].delivery.statuses()[0]  # type: ignore[union-attr]
    assert (status.mode, status.last_status, status.failures) == ("live", 500, 1)
    assert status.paused_until is not None
    assert status.paused_until > client.app[RUNTIME].clock()

    fake_segment.fail(401, times=1)
    # A reload ends the pause: the next webhook's batch meets the refused key.
    client.app[RUNTIME].delivery.replace_sinks(build_sinks(config))  # type: ignore[union-attr]
    code = "attempt.completed"
    response = await client.post(
        f"/webhooks/synap/{code}", json=fixture_body(code), headers=basic_auth()
    )
    assert response.status == 200
    await eventually(lambda: fake_segment.requests == 2)
    await eventually(lambda: client.app[RUNTIME].delivery.statuses()[0].refused)  # type: ignore[union-attr]
    await client.get("/metrics")
    assert sample(client, "synap_bridge_destination_refused", destination="default") == 1
    assert sample(client, "synap_bridge_destination_paused", destination="default") == 1
    ready = await client.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert body["warnings"] == ["destination 'default': Segment refuses the write key (HTTP 401)"]


async def test_state_gauges_say_what_readyz_says(
    aiohttp_client: MakeClient, config_factory: Callable[..., Config]
) -> None:
    """A dead delivery task and a refusing intake show at the next scrape (alerts need both)."""
    client = await aiohttp_client(build_app(config_factory()))
    runtime = client.app[RUNTIME]
    await client.get("/metrics")
    assert sample(client, "synap_bridge_ready") == 1
    assert runtime.delivery_task is not None
    runtime.delivery_task.cancel()
    await eventually(lambda: runtime.delivery_task is not None and runtime.delivery_task.done())
    runtime.backpressure = "the backlog is full"
    assert (await client.get("/readyz")).status == 503
    await client.get("/metrics")
    assert sample(client, "synap_bridge_ready") == 0
    assert sample(client, "synap_bridge_delivery_running") == 0
    assert sample(client, "synap_bridge_intake_refusing") == 1


async def test_metrics_credentials(
    aiohttp_client: MakeClient, config_factory: Callable[..., Config]
) -> None:
    config = config_factory(metrics={"username": "prom", "password": "scrape-secret"})
    client = await aiohttp_client(build_app(config))
    assert (await client.get("/metrics")).status == 401
    wrong = {"Authorization": "Basic " + b64encode(b"prom:nope").decode()}
    assert (await client.get("/metrics", headers=wrong)).status == 401
    right = {"Authorization": "Basic " + b64encode(b"prom:scrape-secret").decode()}
    response = await client.get("/metrics", headers=right)
    assert response.status == 200
    assert "synap_bridge_pending_messages" in await response.text()


async def test_separate_metrics_port(
    aiohttp_client: MakeClient, config_factory: Callable[..., Config]
) -> None:
    app = build_app(config_factory(metrics={"port": 9108}))
    main = await aiohttp_client(app)
    assert (await main.get("/metrics")).status == 404  # not on the webhook port
    side = await aiohttp_client(metrics_app(app[RUNTIME]))
    response = await side.get("/metrics")
    assert response.status == 200
    assert "synap_bridge_webhooks_received_total" in await response.text()
    assert (await side.post("/webhooks/synap/attempt.completed", json={})).status == 404


async def test_url_codes_leave_the_label_set_bounded(
    aiohttp_client: MakeClient, config_factory: Callable[..., Config]
) -> None:
    """Issue 12 item 9: 400 distinct bogus codes, authenticated (kept, then dead letters) and
    not (401), add one ``unknown`` label set per outcome, and /metrics does not grow with
    them."""
    client = await aiohttp_client(build_app(config_factory()))
    ok = await client.post(
        "/webhooks/synap/attempt.completed",
        json=fixture_body("attempt.completed"),
        headers=basic_auth(),
    )
    assert ok.status == 200
    await settled(client.app)  # its mapping's series exist before the size is taken
    for n in range(200):  # unauthenticated, at a bogus code and at a real one
        for code in (f"bogus-{n}", "user.registered"):
            async with client.post(f"/webhooks/synap/{code}", json={}) as answer:
                assert answer.status == 401
    before = len(await (await client.get("/metrics")).read())
    for n in range(200):
        async with client.post(f"/webhooks/synap/x{n}", json={}, headers=basic_auth()) as answer:
            assert answer.status == 200  # kept, labelled "unknown"
    await settled(client.app)  # and each one a dead letter: no label names its code either
    text = await (await client.get("/metrics")).text()
    assert len(text) - before < 1000  # a few new series (one label set each), not 200
    labelled = {
        line.split("{", 1)[1].split("}", 1)[0]
        for line in text.splitlines()
        if line.startswith("synap_bridge_webhooks_received_total{")
    }
    assert labelled == {
        'code="attempt.completed",outcome="accepted"',
        'code="unknown",outcome="unauthorized"',
        'code="unknown",outcome="accepted"',
    }
    assert sample(client, "synap_bridge_dead_letters_total", reason="unknown_code") == 200
    assert sample(client, "synap_bridge_webhooks_received_total", code="unknown",
                  outcome="unauthorized") == 400  # fmt: skip
