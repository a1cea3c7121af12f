"""bridge/probe.py, the container's HEALTHCHECK: it asks /healthz where serve listens.

The image test (tests/container_image.py) runs it inside the container on ``0.0.0.0`` and on
``::``; here the address rules, and the real probe against a real server and a closed port.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bridge.probe import target


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080/healthz"),
        ("", "http://127.0.0.1:8080/healthz"),
        ("::", "http://[::1]:8080/healthz"),
        ("[::]", "http://[::1]:8080/healthz"),
        ("127.0.0.1", "http://127.0.0.1:8080/healthz"),
        ("10.1.2.3", "http://10.1.2.3:8080/healthz"),
        ("fd00::5", "http://[fd00::5]:8080/healthz"),
        ("localhost", "http://localhost:8080/healthz"),
    ],
)
def test_probes_the_listening_address(host: str, url: str) -> None:
    assert target(host, "8080") == url


async def ok(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@pytest.fixture
async def healthz() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/healthz", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert runner.addresses
    yield int(runner.addresses[0][1])
    await runner.cleanup()


async def probe(host: str, port: int) -> tuple[int, str]:
    """The real ``python -m bridge.probe`` with the image's two variables."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.probe",
        env={"BRIDGE_SERVER__HOST": host, "BRIDGE_SERVER__PORT": str(port)},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_healthy_server_exits_zero(healthz: int) -> None:
    assert await probe("0.0.0.0", healthz) == (0, "")


async def test_nothing_listening_exits_one_and_says_where() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    status, err = await probe("127.0.0.1", port)
    assert status == 1
    assert f"unhealthy: http://127.0.0.1:{port}/healthz" in err
