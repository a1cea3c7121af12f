"""Back-pressure: a backlog over ``storage.max_pending`` or free disk under
``storage.min_free_bytes`` makes intake answer 503 + Retry-After and ``/readyz`` fail, and both
lift by themselves once delivery catches up (or disk is freed).

The real app, a real SQLite file, the strict fake Segment. The fake is *held* to build a
backlog (its requests wait unanswered), then released: delivery catches up, and the watcher
(``build_app(..., watch_interval=...)``) lifts the refusal without anyone calling it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config, StorageConfig
from bridge.receive import backpressure
from bridge.receive.runtime import RUNTIME
from tests.conftest import attempt_completed as attempt
from tests.conftest import basic_auth, eventually, settled
from tests.fakes import FakeSegment

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

URL = "/webhooks/synap/attempt.completed"


class TestRefusalRule:
    """The pure decision, at and around its thresholds."""

    storage = StorageConfig(max_pending=10, min_free_bytes=1000)

    @pytest.mark.parametrize(
        ("pending", "free", "refused"),
        [
            (0, 10_000, False),
            (9, 1000, False),
            (10, 10_000, True),  # at max_pending: refuse
            (9, 999, True),  # under min_free_bytes: refuse
            (9, None, False),  # free space unknown (statvfs failed): do not refuse on it
        ],
    )
    def test_thresholds(self, pending: int, free: int | None, refused: bool) -> None:
        reason = backpressure.refusal(pending, free, self.storage)
        assert (reason is not None) is refused
        if reason is not None:
            assert "max_pending" in reason or "min_free_bytes" in reason


class TestBacklog:
    async def test_backlog_over_max_pending_refuses_then_recovers_by_itself(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        config = config_factory(fake_segment.url, storage={"max_pending": 5, "min_free_bytes": 0})
        client = await aiohttp_client(build_app(config, watch_interval=3600))
        runtime = client.app[RUNTIME]
        fake_segment.hold()  # Segment hangs: what is claimed stays in flight, the rest pending
        for n in range(5):
            response = await client.post(URL, json=attempt(n), headers=basic_auth())
            assert response.status == 200
        await settled(client.app)  # mapped: five messages, a backlog at its limit
        await backpressure.refresh(runtime)  # what the watcher does every interval

        refused = await client.post(URL, json=attempt(99), headers=basic_auth())
        assert refused.status == 503
        assert int(refused.headers["Retry-After"]) > 0
        assert (await refused.json())["error"] == "unavailable"
        ready = await client.get("/readyz")
        assert ready.status == 503
        assert any("max_pending" in p for p in (await ready.json())["problems"])
        # Liveness is unaffected: restarting a process because Segment is slow would not help.
        assert (await client.get("/healthz")).status == 200
        stats = await runtime.store.stats(0)
        assert stats.pending + stats.in_flight == 5  # the refused webhook stored nothing

        fake_segment.release()
        await fake_segment.wait_for(5)
        await eventually(lambda: runtime.metrics.delivered.labels("default")._value.get() == 5)
        await backpressure.refresh(runtime)
        assert runtime.backpressure is None
        assert (await client.get("/readyz")).status == 200
        again = await client.post(URL, json=attempt(99), headers=basic_auth())
        assert again.status == 200

    async def test_the_watcher_applies_and_lifts_the_refusal_on_its_own(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        config = config_factory(fake_segment.url, storage={"max_pending": 3, "min_free_bytes": 0})
        client = await aiohttp_client(build_app(config, watch_interval=0.02))
        runtime = client.app[RUNTIME]
        fake_segment.hold()
        for n in range(3):
            assert (await client.post(URL, json=attempt(n), headers=basic_auth())).status == 200
        await eventually(lambda: runtime.backpressure is not None)
        assert (await client.post(URL, json=attempt(9), headers=basic_auth())).status == 503

        fake_segment.release()
        await eventually(lambda: runtime.backpressure is None)
        assert (await client.get("/readyz")).status == 200
        assert (await client.post(URL, json=attempt(9), headers=basic_auth())).status == 200
        await fake_segment.wait_for(4)


class TestFreeDisk:
    async def test_low_free_disk_refuses_and_recovers_when_space_returns(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
        tmp_path: Path,
    ) -> None:
        """Real free space: the threshold sits 256 MiB under what is free now, a 512 MiB file
        (allocated, not written) pushes free space under it, deleting the file lifts it."""
        folder = tmp_path  # storage.path is tmp_path/bridge.db (conftest.make_config)
        free = shutil.disk_usage(folder).free
        margin = 256 * 1024 * 1024
        config = config_factory(
            fake_segment.url, storage={"min_free_bytes": free - margin, "max_pending": 1000}
        )
        client = await aiohttp_client(build_app(config, watch_interval=3600))
        runtime = client.app[RUNTIME]
        assert runtime.backpressure is None
        assert (await client.post(URL, json=attempt(1), headers=basic_auth())).status == 200

        ballast = folder / "ballast"
        fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, 2 * margin)
        finally:
            os.close(fd)
        try:
            await backpressure.refresh(runtime)
            refused = await client.post(URL, json=attempt(2), headers=basic_auth())
            assert refused.status == 503
            assert "Retry-After" in refused.headers
            ready = await client.get("/readyz")
            assert ready.status == 503
            assert any("min_free_bytes" in p for p in (await ready.json())["problems"])
        finally:
            ballast.unlink()
        await backpressure.refresh(runtime)
        assert runtime.backpressure is None
        assert (await client.get("/readyz")).status == 200
        assert (await client.post(URL, json=attempt(2), headers=basic_auth())).status == 200
        await fake_segment.wait_for(2)
