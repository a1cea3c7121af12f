"""Fixtures shared by the integration tests: the strict fake Segment and a real bridge app.

The bridge under test is the real aiohttp application (bridge.app.build_app) with a real SQLite
file in tmp_path; only the Segment endpoint is local (tests/fakes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge import config as config_module
from bridge import logs
from bridge.config import Config
from bridge.receive.connections import ConnectionGuard, GuardedSite
from bridge.receive.runtime import RUNTIME
from bridge.serve import make_runner
from bridge.synap import samples
from tests import pgcluster, tiers
from tests.fakes import FakeSegment

WRITE_KEY = "test-write-key"
USER = "synap"
PASSWORD = "correct horse battery staple"
#: The sample bodies that ship with the package (bridge/synap/samples): the tests' fixtures.
FIXTURES = Path(samples.__file__).parent


def basic_auth(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def fixture_body(code: str) -> dict[str, Any]:
    """The documented-shape payload for ``code`` (bridge/synap/samples/<code>.json)."""
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{code}.json").read_text(encoding="utf-8"))
    return loaded


def attempt_completed(
    n: int | str, *, user: str | None = None, score: float = 5, pad: int = 0
) -> dict[str, Any]:
    """A small ``attempt.completed`` body that maps to exactly one Segment message ("Completed
    Test"): attempt ``att-<n>`` of ``user`` (default ``user-<n>``); ``pad`` bytes of ballast."""
    body: dict[str, Any] = {
        "id": f"att-{n}",
        "score": score,
        "timeCompleted": "2026-11-01T10:00:00Z",
        "test": {"id": "t-1", "title": "Algebra"},
        "attempt": {"id": f"att-{n}", "isExam": False},
        "user": {"id": user or f"user-{n}", "name": "Ada", "email": "ada@example.org"},
        "portal": {"id": "portal-1"},
        "meta": {"timestamp": "2026-11-01T10:00:01Z"},
    }
    if pad:
        body["pad"] = "x" * pad
    return body


def make_config(tmp_path: Path, segment_url: str | None = None, **sections: Any) -> Config:
    """A test configuration: SQLite in tmp_path, Basic auth on, Segment at the fake (or dry-run)."""
    data: dict[str, Any] = {
        "auth": {"username": USER, "password": PASSWORD},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "delivery": {"batch": {"timeout_secs": 0.01}, "retry": {"initial_backoff_secs": 0.01}},
        "logging": {"format": "json"},
    }
    if segment_url is not None:
        data["segment"] = {"write_key": WRITE_KEY, "endpoint": segment_url, "timeout_secs": 5}
    return config_module.parse(config_module.merge(data, sections))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tier marks (``process``, ``postgres``) each test earns by what it uses."""
    tiers.mark(items)


@pytest.fixture(autouse=True)
def _tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test outside the ``process``/``postgres``/``image`` tiers must start no process: if it
    does, its mark is missing (tests/tiers.py) and ``make test-fast`` would not be fast."""
    if any(request.node.get_closest_marker(name) for name in ("process", "postgres", "image")):
        yield
        return
    started: list[str] = []
    original = subprocess.Popen.__init__

    def recorded(self: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any) -> None:
        started.append(str(args)[:200])
        original(self, args, *rest, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", recorded)
    yield
    assert not started, f"started {started} without the process mark (see tests/tiers.py)"


@pytest.fixture(autouse=True, scope="session")
def _structured_logging() -> None:
    """Route structlog through the stdlib logging, as serve does, so caplog sees every record
    whatever the test order (unconfigured structlog would print straight to stdout)."""
    logs.configure("info", "json")


@pytest.fixture(autouse=True, scope="session")
def _postgres_cluster_cleanup() -> Iterator[None]:
    """Stop and remove the throwaway PostgreSQL cluster (tests/pgcluster.py) if a test started
    it; tests that need it call ``pgcluster.shared()`` or take the ``postgres`` fixture."""
    yield
    pgcluster.stop_shared()


@pytest.fixture
def postgres() -> pgcluster.Cluster:
    """The session's throwaway PostgreSQL cluster (started on first use)."""
    return pgcluster.shared()


#: Refusals a test scripts on purpose; any other one means the bridge sent something Segment
#: would refuse (a message over 32 KB, a missing field...), which no test may cause.
SCRIPTED_REFUSALS = ("programmed failure", "bad auth", "rejected messageId")


@pytest.fixture
async def fake_segment() -> AsyncIterator[FakeSegment]:
    async with FakeSegment(write_key=WRITE_KEY) as fake:
        yield fake
    unexpected = [r for r in fake.rejected if not r[1].startswith(SCRIPTED_REFUSALS)]
    assert unexpected == [], f"the strict fake Segment refused what the bridge sent: {unexpected}"


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Config]:
    def factory(segment_url: str | None = None, **sections: Any) -> Config:
        return make_config(tmp_path, segment_url, **sections)

    return factory


#: How often ``eventually`` looks. Not a wait for correctness (the bound is ``within``): a
#: busy loop of ``sleep(0)`` keeps the main thread hot and starves the bridge's SQLite and
#: upload threads of the GIL (each of their calls releases and retakes it), which made such
#: waits take seconds or time out.
POLL_INTERVAL_SECS = 0.005


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait, bounded, for state that another task changes and that has no event to wait on."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - no Event exists for these states
            await asyncio.sleep(POLL_INTERVAL_SECS)


#: How often ``polled`` asks another process (an HTTP probe, a CLI run, a log file): each ask
#: costs that process work, so not as often as ``eventually`` looks at in-process state.
PROCESS_POLL_SECS = 0.05


async def polled(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait, bounded, for state in another process, which has no event to offer: ask
    ``check`` again every :data:`PROCESS_POLL_SECS` until it says yes (TimeoutError past
    ``within``). The one polling loop of the tests; the bound is what keeps them honest."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - another process: nothing to wait on
            await asyncio.sleep(PROCESS_POLL_SECS)


async def settled(app: web.Application, within: float = 10.0) -> None:
    """Wait, bounded, until the app's mapping stage has mapped every kept webhook.

    Keep first, judge after: a webhook is answered once its raw body is committed, and mapped
    after the answer, so a test that looks at messages or dead letters waits for this first."""
    runtime = app[RUNTIME]

    async def done() -> bool:
        return (await runtime.store.stats(since=runtime.clock())).unmapped == 0

    await polled(done, within)


@contextlib.asynccontextmanager
async def serving(app: web.Application, config: Config) -> AsyncIterator[int]:
    """``app`` served as ``serve`` serves it (its runner, time bounds and connection guard) on
    127.0.0.1, port 0; yields the port. pytest-aiohttp's server cancels a handler whose client
    hangs up, which ``serve`` does not."""
    runtime = app[RUNTIME]
    runner = make_runner(app, config)
    await runner.setup()
    guard = ConnectionGuard(
        config.server.max_connections,
        config.server.header_timeout_secs,
        runtime.metrics,
        runtime.throttle,
    )
    site = GuardedSite(runner, guard, "127.0.0.1", 0)
    try:
        await site.start()
        yield site.port
    finally:
        await runner.cleanup()
