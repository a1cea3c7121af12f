"""Requests aiohttp cannot parse, against the real ``serve``: a few short lines, no secrets.

Before, each malformed request (bad header token, bad HTTP version, bad chunk size, a line over
8,190 bytes) wrote an unthrottled ERROR line of 300-400 bytes quoting the offending bytes, and
``Authorization : Basic ...`` (a space before the colon) put the base64 credentials in it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

from tests.conftest import PASSWORD, USER, eventually
from tests.process import BridgeProcess, write_config
from tests.test_hostile import http_status

CREDENTIALS = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
URL = "/webhooks/synap/attempt.completed"
BAD = {
    "header_token": b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n",
    "http_version": b"GET /healthz HTTP/9.9\r\n\r\n",
    "chunk_size": (
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    ).encode(),
    "long_line": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    "spaced_authorization": (
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization : Basic {CREDENTIALS}\r\n\r\n"
    ).encode(),
}
EACH = 400


async def send(port: int, data: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            return http_status(await reader.read(4096))
    finally:
        writer.close()


async def test_malformed_requests_leave_few_short_lines_and_no_credentials(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        {
            "server": {"port": 0},
            "auth": {"username": USER, "password": PASSWORD},
            "storage": {"path": str(tmp_path / "bridge.db")},
            "logging": {"format": "json"},
        },
    )
    bridge = BridgeProcess(config)
    try:
        port = await bridge.start()
        started = time.monotonic()
        for data in BAD.values():
            statuses = []
            for start in range(0, EACH, 100):  # 100 connections at a time
                statuses += await asyncio.gather(
                    *(send(port, data) for _ in range(min(100, EACH - start)))
                )
            assert statuses == [400] * EACH
        took = time.monotonic() - started
        kinds = {"BadHttpMessage", "BadStatusLine", "LineTooLong"}
        await eventually(lambda: {ln["error"] for ln in bridge.events("bad_request")} == kinds)
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()
    lines = bridge.events("bad_request")
    written = sum(len(raw) for raw in bridge.raw)
    print(
        f"\n{EACH * len(BAD)} malformed requests in {took:.1f} s: {len(lines)} bad_request "
        f"lines, {written} bytes of log in all"
    )
    assert not [ln for ln in bridge.lines if ln.get("level") == "error"]
    assert not [raw for raw in bridge.raw if "Error handling request" in raw]
    assert not [raw for raw in bridge.raw if CREDENTIALS in raw or PASSWORD in raw]
    # One line a second per kind at most, each counting what it left out.
    assert {ln["error"] for ln in lines} == kinds
    assert len(lines) <= 3 * (int(took) + 2)
    assert sum(ln["suppressed"] for ln in lines) + len(lines) <= EACH * len(BAD)
    assert all(ln["level"] == "info" and ln["status"] == 400 for ln in lines)
    assert written < 20_000
