"""A poison message inside a big batch: the rest arrive, that one is a dead letter, and
``synap-bridge dead-letters replay`` sends it once Segment accepts it.

The real app receives the webhooks over HTTP; ``delivery.batch.max_events`` equals their number
so they leave as ONE batch, which the strict fake refuses whole (400) because one messageId in
it is poisoned. The bridge must split the batch until the culprit stands alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import BatchConfig, Config, DeliveryConfig
from bridge.mapping import intake
from bridge.receive.runtime import RUNTIME
from bridge.store import DeadLetterFilter
from tests.conftest import PASSWORD, USER, WRITE_KEY, basic_auth, eventually
from tests.conftest import attempt_completed as completed
from tests.fakes import FakeSegment
from tests.process import write_config
from tests.test_cli_ops import run_cli

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

COUNT = 150
POISONED = 97


async def test_poison_message_in_a_big_batch(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, tmp_path: Path
) -> None:
    data: dict[str, Any] = {
        "auth": {"username": USER, "password": PASSWORD},
        "segment": {"write_key": WRITE_KEY, "endpoint": fake_segment.url, "timeout_secs": 5},
        "storage": {"path": str(tmp_path / "bridge.db")},
        # One batch of exactly COUNT messages; it leaves as soon as it is full.
        "delivery": {"batch": {"max_events": COUNT, "timeout_secs": 10}, "concurrency": 1},
        "logging": {"format": "json"},
    }
    config_path = write_config(tmp_path / "config.yaml", data)
    from bridge import config as config_module

    config: Config = config_module.load(str(config_path), {})
    # The poisoned messageId, derived exactly as the receiver will (deterministic ids).
    poisoned = (
        intake.process("attempt.completed", orjson.dumps(completed(POISONED)), 0.0, config)
        .messages[0]
        .message_id
    )
    fake_segment.poison.add(poisoned)

    client = await aiohttp_client(build_app(config))
    runtime = client.app[RUNTIME]
    for n in range(COUNT):
        answer = await client.post(
            "/webhooks/synap/attempt.completed", json=completed(n), headers=basic_auth()
        )
        assert answer.status == 200

    await fake_segment.wait_for(COUNT - 1, within=20)
    buried = runtime.metrics.dead_lettered.labels("rejected_by_segment")
    await eventually(lambda: buried._value.get() == 1)  # counted once the burial committed
    letters = await runtime.store.dead_letters(DeadLetterFilter())
    # The whole batch was refused first: it really was one batch.
    assert fake_segment.rejected[0] == (400, f"rejected messageId {poisoned}")
    assert poisoned not in fake_segment.ids
    assert fake_segment.unique == COUNT - 1
    assert all(times == 1 for times in fake_segment.ids.values())  # nobody was sent twice
    # Splitting in halves costs about log2(COUNT) refused requests, not COUNT.
    assert len(fake_segment.rejected) <= 2 * COUNT.bit_length()

    (letter,) = letters
    assert letter.reason == "rejected_by_segment"
    assert letter.message_id == poisoned
    detail = await runtime.store.dead_letter(letter.id)
    assert detail is not None
    assert detail.last_error is not None
    assert "400" in detail.last_error
    assert orjson.loads(detail.raw_body) == completed(POISONED)

    # Segment accepts it now (say, the workspace's schema was fixed): replay it from the CLI
    # while the bridge runs on the same database.
    fake_segment.poison.clear()
    replay = await run_cli(config_path, "dead-letters", "replay", "--reason", "rejected_by_segment")
    assert replay.code == 0
    assert "replayed 1 dead letter(s) as 1 message(s)" in replay.out
    # Restart with the usual batch age (this test's first app waited up to 10 s to fill its
    # one big batch); the replayed message goes out at start.
    await client.close()
    quick = config.model_copy(
        update={"delivery": DeliveryConfig(batch=BatchConfig(timeout_secs=0.01))}
    )
    client = await aiohttp_client(build_app(quick))
    runtime = client.app[RUNTIME]
    await fake_segment.wait_for(COUNT, within=20)
    assert fake_segment.ids[poisoned] == 1
    delivered = runtime.metrics.delivered.labels("default")
    await eventually(lambda: delivered._value.get() == 1)  # acked, not only received
    assert await runtime.store.dead_letters(DeadLetterFilter()) == []
    stats = await runtime.store.stats(0)
    assert stats.dead_letters == {}
    assert stats.pending + stats.in_flight == 0
    assert stats.delivered_total == COUNT
