"""Idle and slow connections cannot lock webhooks out (issue 12 item 8).

The real ``synap-bridge serve`` (a subprocess, with a chosen descriptor limit) gets 1,100
connections that send nothing, half a request head or half a body, held open, while 100 real
webhooks arrive. Before the fix, with systemd's default 1,024 descriptors, no webhook got
through, ``/healthz`` failed and the watchdog stopped; the connections stayed open for minutes.
Timeouts are lowered through the configuration (1 s) to keep the test short. Each test prints
its figures (``pytest -s tests/test_connections.py``).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from bridge.app import build_app
from bridge.config import Config
from bridge.receive.answers import raw_unavailable
from bridge.receive.connections import (
    RESERVED_DESCRIPTORS,
    ConnectionGuard,
    GuardedSite,
    fit_to_descriptors,
)
from bridge.receive.runtime import RUNTIME
from tests.conftest import (
    PASSWORD,
    PROCESS_POLL_SECS,
    USER,
    attempt_completed,
    basic_auth,
    eventually,
    serving,
)
from tests.process import BridgeProcess, write_config
from tests.test_hostile import http_status, raw_request
from tests.test_refusals import webhook_request

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
#: How late after its timeout a connection may be closed: timers, and a loaded 2-core machine
#: where ``make test`` also traces the subprocess for coverage (3.2 s seen for a 1 s timeout).
#: The failure this guards against is connections open for minutes.
SLACK = 5.0
BAD = 1100
WEBHOOKS = 100
URL = "/webhooks/synap/attempt.completed"
AUTH = basic_auth()["Authorization"]
REFUSED = raw_unavailable("too_many_connections", "the bridge has too many open connections")
PARTS = {
    "nothing": b"",
    "half_header": f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Le".encode(),
    "half_body": (
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\nContent-Length: 1000\r\n\r\n"
        '{"id": "att-x", "pad": "'
    ).encode(),
}


@dataclass
class Held:
    kind: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float


@dataclass
class Closed:
    kind: str
    after: float  # seconds from opening to the server's close
    reply: bytes


def bridge_config(
    tmp_path: Path, header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT
) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "server": {
                "port": 0,
                "header_timeout_secs": header_timeout,
                "body_timeout_secs": body_timeout,
            },
            "auth": {"username": USER, "password": PASSWORD},
            "storage": {"path": str(tmp_path / "bridge.db")},
            "logging": {"format": "json"},
        },
    )


def enough_descriptors(count: int) -> None:
    """This test process holds ``count`` client sockets: make sure its own limit allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(count, hard), hard))


async def hold(port: int, kind: str, source: str = "127.0.0.1") -> Held:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    opened = time.monotonic()
    if PARTS[kind]:
        writer.write(PARTS[kind])
        await writer.drain()
    return Held(kind, reader, writer, opened)


async def hold_many(port: int, count: int, kinds: tuple[str, ...] = tuple(PARTS)) -> list[Held]:
    """``count`` bad connections, as many of each kind, opened 100 at a time (a burst of 1,100
    SYNs would overflow the listen backlog and measure TCP's retransmission, not the bridge).
    They come from :data:`SOURCES` loopback addresses, under each client's share of the cap."""
    held: list[Held] = []
    for start in range(0, count, 100):
        batch = range(start, min(count, start + 100))
        held += await asyncio.gather(*(hold(port, kinds[n % len(kinds)], source(n)) for n in batch))
    return held


#: Loopback addresses the bad connections come from (any 127/8 address is the host's own).
SOURCES = 20


def source(n: int) -> str:
    return f"127.0.0.{10 + n % SOURCES}"


async def until_closed(held: Held, within: float) -> Closed:
    """Read until the server closes the connection (bounded); what it said and when."""
    reply = b""
    try:
        async with asyncio.timeout(within):
            reply = await held.reader.read()
    except ConnectionError:
        pass
    except TimeoutError:
        return Closed(held.kind, float("inf"), reply)
    finally:
        held.writer.close()
    return Closed(held.kind, time.monotonic() - held.opened, reply)


def watch(
    held: list[Held], header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT
) -> asyncio.Future[list[Closed]]:
    """Start reading every bad connection now, so that each close is timed when it happens."""
    within = header_timeout + 2 * body_timeout + SLACK
    return asyncio.gather(*(until_closed(h, within) for h in held))


@dataclass
class Accepted:
    latency: float  # seconds from the first try to the 200
    tries: int


async def webhook(session: aiohttp.ClientSession, url: str, n: int, deadline: float) -> Accepted:
    """Post one real webhook until it is accepted (a refused connection is tried again, as
    Synap does)."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            async with session.post(
                f"{url}{URL}", json=attempt_completed(n), headers=basic_auth()
            ) as answer:
                if answer.status == 200:
                    return Accepted(time.monotonic() - started, tries)
                assert answer.status == 503, await answer.text()
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"webhook {n} not accepted in time"
        await asyncio.sleep(PROCESS_POLL_SECS)  # a client's pause before asking again


async def webhooks(url: str, within: float) -> list[Accepted]:
    deadline = time.monotonic() + within
    connector = aiohttp.TCPConnector(limit=20, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(webhook(session, url, n, deadline) for n in range(WEBHOOKS)))


async def healthz(url: str) -> float:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as answer:
        assert answer.status == 200
    return time.monotonic() - started


def p99(accepted: list[Accepted]) -> float:
    latencies = sorted(a.latency for a in accepted)
    return latencies[max(0, round(0.99 * len(latencies)) - 1)]


async def test_1100_idle_and_slow_connections_under_the_units_limit(tmp_path: Path) -> None:
    """Under the unit's LimitNOFILE (4096) the default cap (2000) holds the 1,100 bad
    connections: every webhook is accepted at its first try, and every bad connection is closed
    by its timeout (half a body: 408)."""
    enough_descriptors(BAD + WEBHOOKS + 200)
    bridge = BridgeProcess(bridge_config(tmp_path), nofile=4096)
    try:
        url = f"http://127.0.0.1:{await bridge.start()}"
        assert bridge.port is not None
        held = await hold_many(bridge.port, BAD)
        watching = watch(held)
        opened = time.monotonic()
        health = await healthz(url)
        accepted = await webhooks(url, within=10)
        busy = time.monotonic() - opened
        closed = await watching
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()
    print(
        f"\n{BAD} bad connections held: {len(accepted)}/{WEBHOOKS} webhooks accepted in "
        f"{busy:.2f} s, p99 {p99(accepted) * 1000:.0f} ms;"
        f" /healthz {health * 1000:.0f} ms; bad connections closed after at most "
        f"{max(c.after for c in closed):.2f} s"
    )
    assert len(accepted) == WEBHOOKS
    assert [a.tries for a in accepted] == [1] * WEBHOOKS  # none refused, none retried
    for kind, limit in (("nothing", HEADER_TIMEOUT), ("half_header", HEADER_TIMEOUT)):
        mine = [c for c in closed if c.kind == kind]
        late = [c.after for c in mine if c.after > limit + SLACK]
        assert not late, f"{len(late)} {kind} connections closed late: {late[:5]}"
    bodies = [c for c in closed if c.kind == "half_body"]
    odd = [(c.reply[:40], c.after) for c in bodies if not c.reply.startswith(b"HTTP/1.1 408 ")]
    assert not odd, odd[:5]
    # 408 at the body timeout; aiohttp then drains the unread rest for up to as long again.
    assert all(c.after <= 2 * BODY_TIMEOUT + SLACK for c in bodies)


async def test_1100_connections_over_systemds_default_descriptor_limit(tmp_path: Path) -> None:
    """With systemd's default 1,024 descriptors the cap is lowered to fit (960): the
    connections past it get a 503 at once instead of exhausting descriptors, and every webhook
    is accepted once the timeouts have closed the bad connections. Idle connections only (the
    kinds are the other test's), with a 3 s header timeout, so that all 1,100 are surely open
    together even on a loaded machine."""
    header_timeout, body_timeout = 3.0, BODY_TIMEOUT
    enough_descriptors(BAD + WEBHOOKS + 200)
    bridge = BridgeProcess(bridge_config(tmp_path, header_timeout, body_timeout), nofile=1024)
    try:
        url = f"http://127.0.0.1:{await bridge.start()}"
        assert bridge.port is not None
        (lowered,) = bridge.events("max_connections_lowered")
        assert lowered["used"] == 1024 - 64
        held = await hold_many(bridge.port, BAD, kinds=("nothing",))
        watching = watch(held, header_timeout, body_timeout)
        accepted = await webhooks(url, within=header_timeout + 2 * body_timeout + 10)
        health = await healthz(url)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/metrics") as answer,
        ):
            scraped = await answer.text()
        closed = await watching
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()
    # The bridge's own count of connections refused at accept (the clients cannot always tell:
    # one that had sent bytes the bridge never read gets a reset instead of the 503).
    counted = [
        ln
        for ln in scraped.splitlines()
        if ln.startswith("synap_bridge_connections_refused_total ")
    ]
    refused_total = float(counted[0].split()[1])
    told = [c for c in closed if c.reply == REFUSED]
    print(
        f"\n{BAD} bad connections at 1,024 descriptors: {refused_total:.0f} connections refused "
        f"at accept (bad ones and webhook tries), "
        f"{len(told)} bad ones read the 503 (at most {max(c.after for c in told) * 1000:.0f} ms "
        f"after connecting); {len(accepted)}/{WEBHOOKS} webhooks accepted, p99 "
        f"{p99(accepted) * 1000:.0f} ms; /healthz {health * 1000:.0f} ms"
    )
    assert refused_total >= BAD - lowered["used"]
    assert len(told) >= BAD - lowered["used"]  # nothing sent, so each one reads its 503
    assert all(c.after < header_timeout for c in told)  # at once, not held until a timeout
    assert len(accepted) == WEBHOOKS
    assert not [c for c in closed if c.after == float("inf")]  # every one closed in time
    assert bridge.events("connection_refused")  # logged, throttled
    assert not bridge.events("unhandled_error")


async def test_the_first_head_is_bounded_by_the_guard_itself(
    config_factory: Callable[..., Config],
) -> None:
    """aiohttp before 3.14 armed no timer until a first request arrived: the guard's own header
    deadline closes a connection that sends nothing or half a head even when aiohttp's
    keep-alive timer is an hour away."""
    config = config_factory(server={"header_timeout_secs": 0.5})
    app = build_app(config)
    runtime = app[RUNTIME]
    runner = web.AppRunner(app, keepalive_timeout=3600, access_log=None)
    await runner.setup()
    guard = ConnectionGuard(100, 0.5, runtime.metrics, runtime.throttle)
    site = GuardedSite(runner, guard, "127.0.0.1", 0)
    try:
        await site.start()
        held = [await hold(site.port, kind) for kind in ("nothing", "half_header", "half_header")]
        held[2].writer.write(b"ngth: 2\r\n\r\n{}")  # the head completes: not cut, answered
        closed = await asyncio.gather(*(until_closed(h, 0.5 + SLACK) for h in held[:2]))
        answered = await held[2].reader.readuntil(b"\r\n")
        held[2].writer.close()
    finally:
        await runner.cleanup()
    assert all(c.after <= 0.5 + SLACK and c.reply == b"" for c in closed), closed
    assert answered.startswith(b"HTTP/1.1 401 ")  # no credentials, but it got its answer


async def test_past_the_cap_a_connection_gets_a_503_at_once(
    config_factory: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    """In process, the guard as ``serve`` installs it: with ``max_connections`` open, the next
    connection is answered 503 and closed without waiting; once one closes, a webhook gets in."""
    config = config_factory(server={"max_connections": 2})
    app = build_app(config)
    async with serving(app, config) as port:
        held = [await hold(port, "nothing") for _ in range(2)]
        refused = await until_closed(await hold(port, "nothing"), 5)
        assert (refused.reply, refused.after < 1.0) == (REFUSED, True)
        held[0].writer.close()
        registry = app[RUNTIME].metrics.registry
        await eventually(lambda: registry.get_sample_value("synap_bridge_connections_open") == 1)
        reply = await raw_request(port, webhook_request(attempt_completed(1)))
        assert http_status(reply) == 200
        for each in held[1:]:
            each.writer.close()
    assert registry.get_sample_value("synap_bridge_connections_refused_total") == 1
    assert any(
        isinstance(r.msg, dict) and r.msg.get("event") == "connection_refused"
        for r in caplog.records
    )


class TestDescriptorFit:
    def test_a_cap_that_fits_is_kept(self) -> None:
        assert fit_to_descriptors(10) == 10

    def test_a_cap_over_the_hard_limit_is_lowered(self) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:  # nothing to lower against: the cap stands
            assert fit_to_descriptors(10**6) == 10**6
            return
        assert fit_to_descriptors(hard) == hard - RESERVED_DESCRIPTORS
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard  # raised as far as it goes


async def keep_asking(port: int, source: str, every: float, stop: asyncio.Event) -> str:
    """One kept-alive connection asking ``GET /healthz`` every ``every`` seconds until ``stop``
    or until the bridge closes it; how it ended: ``refused``, ``closed`` or ``held``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        while True:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 503 "):
                assert b"too_many_connections_from_client" in body, body
                return "refused"
            assert head.startswith(b"HTTP/1.1 200 "), head
            try:
                await asyncio.wait_for(stop.wait(), every)
                return "held"
            except TimeoutError:
                continue
    except (ConnectionError, asyncio.IncompleteReadError):
        return "closed"
    finally:
        writer.close()


async def test_one_client_cannot_hold_every_slot(tmp_path: Path) -> None:
    """400 keep-alive connections from one address (the cap), each asking ``/healthz``: before,
    they held every slot and 50 of 50 real webhooks from elsewhere were answered 503. Now the
    address gets its share (a tenth: 40), the rest a 503 ``too_many_connections_from_client``,
    and every webhook from another address is accepted at its first try."""
    cap = 400
    enough_descriptors(cap + WEBHOOKS + 200)
    path = bridge_config(tmp_path, header_timeout=10.0)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["server"]["max_connections"] = cap
    write_config(path, data)
    bridge = BridgeProcess(path)
    stop = asyncio.Event()
    try:
        url = f"http://127.0.0.1:{await bridge.start()}"
        assert bridge.port is not None
        greedy = [
            asyncio.create_task(keep_asking(bridge.port, "127.0.0.2", 8.0, stop))
            for _ in range(cap)
        ]
        # Every connection past the address's share has been refused: the share is held.
        await eventually(lambda: sum(t.done() for t in greedy) >= cap - cap // 10, within=20)
        accepted = await webhooks(url, within=10)
        stop.set()
        ended = await asyncio.gather(*greedy)
        assert await bridge.terminate() == 0
    finally:
        stop.set()
        await bridge.close()
    print(
        f"\n{cap} keep-alive connections from one address: {ended.count('held')} held, "
        f"{ended.count('refused')} refused; {len(accepted)}/{WEBHOOKS} webhooks from elsewhere "
        f"accepted, p99 {p99(accepted) * 1000:.0f} ms"
    )
    assert ended.count("held") == cap // 10
    assert ended.count("refused") == cap - cap // 10
    assert [a.tries for a in accepted] == [1] * WEBHOOKS
    assert bridge.events("client_connections_refused")


async def test_requests_do_not_keep_a_connection_forever(
    config_factory: Callable[..., Config],
) -> None:
    """A connection asking every 0.2 s re-arms aiohttp's keep-alive timer each time; past
    ``server.connection_max_age_secs`` it is closed after an answer all the same."""
    config = config_factory(server={"connection_max_age_secs": 1.0, "header_timeout_secs": 10})
    app = build_app(config)
    runtime = app[RUNTIME]
    runner = web.AppRunner(app, keepalive_timeout=10, access_log=None)
    await runner.setup()
    guard = ConnectionGuard(100, 10, runtime.metrics, runtime.throttle, max_age=1.0)
    site = GuardedSite(runner, guard, "127.0.0.1", 0)
    stop = asyncio.Event()
    try:
        await site.start()
        started = time.monotonic()
        ended = await asyncio.wait_for(keep_asking(site.port, "127.0.0.1", 0.2, stop), 1 + SLACK)
        lasted = time.monotonic() - started
    finally:
        stop.set()
        await runner.cleanup()
    assert (ended, lasted >= 1.0) == ("closed", True)


def test_trusted_proxies_are_not_held_to_a_share(config_factory: Callable[..., Config]) -> None:
    """Behind a proxy every client has its address: the proxy is exempt, the cap still holds."""
    config = config_factory(server={"max_connections": 50, "trusted_proxies": ["10.0.0.0/8"]})
    assert config.server.per_client_connections() == 5
    runtime = build_app(config)[RUNTIME]
    guard = ConnectionGuard(
        50,
        1.0,
        runtime.metrics,
        runtime.throttle,
        per_client=5,
        exempt=config.server.trusted_proxies,
    )
    proxy, other = _Peer("10.1.2.3"), _Peer("192.0.2.7")
    assert [guard.admit(proxy)[0] for _ in range(20)] == [True] * 20
    assert [guard.admit(other)[0] for _ in range(6)] == [True] * 5 + [False]
    assert guard.by_client == {"192.0.2.7": 5}
    guard.release("192.0.2.7")
    assert guard.admit(other) == (True, "192.0.2.7")


class _Peer(asyncio.Transport):
    """A transport that is only a peer address (and swallows the refusal)."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.address, 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        pass
