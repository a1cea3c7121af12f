"""The test fakes, in one place: a strict Segment-compatible ``/v1/batch`` server (for tests and
benchmarks) and a clock a test sets by hand.

Why strict: the real Segment answers 200 to almost anything, which would let a sloppy bridge pass
every test. This fake enforces what Segment documents (Basic auth with the write key, 500 KB per
request, 2500 messages per batch, 32 KB per message, the required fields per call) and rejects a
whole batch with 400 when any message in it is invalid, storing nothing, so the bridge's
split-to-find-the-culprit path is exercised for real. It can also misbehave on demand (5xx,
429 with ``Retry-After``, a connection reset, a "poison" messageId) and then recover.

In-process::

    async with FakeSegment(write_key="k") as fake:
        ...  # fake.url, fake.messages, fake.fail(503, times=3), fake.poison.add(id)

As a process (benchmarks, subprocess tests)::

    python -m tests.fakes --port 0 --write-key K           # prints the port on stdout
    GET  /_stats      {"requests", "batches", "accepted", "unique", "rejected"}
    GET  /_received   {"messages": [...]}   (``?ids=1``: messageIds only)
    POST /_mode       {"fail": [{"status": 503, "times": 2}, {"reset": true, "times": 1},
                                {"status": 429, "retry_after": "3", "times": 1},
                                {"trickle": 0.5, "times": 1}],
                       "poison": ["messageId", ...]}
    POST /_clear      forget everything received, failures and poison
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

MAX_BODY_BYTES = 500_000
MAX_BATCH_MESSAGES = 2500
MAX_MESSAGE_BYTES = 32 * 1024
MAX_MESSAGE_ID_CHARS = 100
TYPES = frozenset({"identify", "track", "group", "page", "screen", "alias"})
OBJECT_FIELDS = ("traits", "properties", "context", "integrations")


class InvalidBatchError(Exception):
    """One reason a request is refused with 400."""


class ManualClock:
    """A wall clock (``clock()`` -> epoch seconds) that moves only when a test sets ``now``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Failure:
    """Answer the next ``times`` batch requests this way instead of processing them."""

    times: int
    status: int = 503
    retry_after: str | None = None
    reset: bool = False
    location: str | None = None  # for a 3xx: where the redirect points
    #: Accept the batch, then trickle the answer one byte every ``trickle`` seconds (a peer
    #: that never trips a per-read timeout).
    trickle: float | None = None


def check_message(msg: Any, index: int) -> None:
    """Raise :class:`InvalidBatchError` unless ``msg`` is a message Segment would accept."""
    if not isinstance(msg, dict):
        raise InvalidBatchError(f"batch[{index}] is not an object")
    if len(orjson.dumps(msg)) > MAX_MESSAGE_BYTES:
        raise InvalidBatchError(f"batch[{index}] is larger than 32KB")
    if not _present(msg.get("userId")) and not _present(msg.get("anonymousId")):
        raise InvalidBatchError(f"batch[{index}] has neither userId nor anonymousId")
    mid = msg.get("messageId")
    if not isinstance(mid, str) or not mid or len(mid) > MAX_MESSAGE_ID_CHARS:
        raise InvalidBatchError(f"batch[{index}].messageId must be a string of 1-100 characters")
    if not _iso8601(msg.get("timestamp")):
        raise InvalidBatchError(f"batch[{index}].timestamp is not ISO-8601")
    _check_call(msg, index)


def _check_call(msg: dict[str, Any], index: int) -> None:
    """What the message's call (``type``) requires of it."""
    kind = msg.get("type")
    if kind not in TYPES:
        raise InvalidBatchError(f"batch[{index}].type {kind!r} is not a Segment call")
    if kind == "track" and not _present(msg.get("event")):
        raise InvalidBatchError(f"batch[{index}] is a track without event")
    if kind == "group" and not _present(msg.get("groupId")):
        raise InvalidBatchError(f"batch[{index}] is a group without groupId")
    for name in OBJECT_FIELDS:
        if name in msg and not isinstance(msg[name], dict):
            raise InvalidBatchError(f"batch[{index}].{name} must be an object")


def _present(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def _iso8601(value: Any) -> bool:
    if not isinstance(value, str) or len(value) < 10:
        return False
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


class FakeSegment:
    """The fake server. Everything it saw is readable as attributes."""

    def __init__(
        self, write_key: str = "test-write-key", *, port: int = 0, keep_bodies: bool = True
    ) -> None:
        self.write_key = write_key
        self.port = port
        self.keep_bodies = keep_bodies
        expected = base64.b64encode(f"{write_key}:".encode()).decode()
        self._auth = f"Basic {expected}"
        self._runner: web.AppRunner | None = None
        self.clear()

    # ---- what was received -------------------------------------------------------------

    def clear(self) -> None:
        self.requests = 0  # every POST /v1/batch, whatever the answer
        self.batches = 0  # accepted batches
        self.accepted = 0  # accepted messages, duplicates included
        self.messages: list[dict[str, Any]] = []  # accepted messages in order (keep_bodies)
        self.ids: dict[str, int] = {}  # messageId -> times accepted
        self.rejected: list[tuple[int, str]] = []  # (status, message) of refused requests
        self.batch_sizes: list[int] = []
        self.failures: deque[Failure] = deque()
        self.poison: set[str] = set()
        self.active = 0  # requests being handled right now
        self.trickling = 0  # answers being trickled right now
        self.trickles_abandoned = 0  # trickled answers the client stopped reading
        self.max_active = 0
        #: The client connections batches came on (peer address -> transport): a client that
        #: keeps its connections alive reuses a few; one that does not opens one per batch.
        self._transports: dict[Any, asyncio.BaseTransport] = {}
        self._gate: asyncio.Event | None = None  # set by hold(): requests wait until release()
        self._barrier: tuple[int, float] | None = None  # set by require_concurrency()
        self._changed: asyncio.Event | None = None

    @property
    def unique(self) -> int:
        return len(self.ids)

    @property
    def connections(self) -> int:
        """Distinct client connections that carried a batch request."""
        return len(self._transports)

    @property
    def open_connections(self) -> int:
        """Those still open now (a closed client session closes its kept-alive ones)."""
        return sum(1 for t in self._transports.values() if not t.is_closing())

    def fail(
        self,
        status: int = 503,
        *,
        times: int = 1,
        retry_after: str | None = None,
        reset: bool = False,
        location: str | None = None,
        trickle: float | None = None,
    ) -> None:
        """Queue a misbehaviour for the next ``times`` requests (queued ones run in order)."""
        self.failures.append(Failure(times, status, retry_after, reset, location, trickle))

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "accepted": self.accepted,
            "unique": self.unique,
            "rejected": len(self.rejected),
        }

    def hold(self) -> None:
        """Keep every request waiting, unanswered, until :meth:`release` (tests of shutdown)."""
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    def require_concurrency(self, parties: int, within: float = 5.0) -> None:
        """The next ``parties`` requests are answered only once all of them have arrived, i.e.
        only a client that really has ``parties`` requests in flight at once gets through;
        otherwise they are answered 503 after ``within`` seconds."""
        self._barrier = (parties, within)
        self._arrived: asyncio.Barrier = asyncio.Barrier(parties)
        self._to_pass = parties

    async def wait_for(self, unique: int, within: float = 10.0) -> None:
        """Wait until ``unique`` distinct messageIds have been accepted (bounded)."""
        await self.wait_until(lambda: self.unique >= unique, within)

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checked after every request (bounded)."""
        async with asyncio.timeout(within):
            while True:
                if self._changed is None:
                    self._changed = asyncio.Event()
                event = self._changed
                if predicate():
                    return
                await event.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # ---- serving -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * MAX_BODY_BYTES)
        app.router.add_post("/v1/batch", self._batch)
        app.router.add_get("/_stats", self._stats)
        app.router.add_get("/_received", self._received)
        app.router.add_post("/_mode", self._mode)
        app.router.add_post("/_clear", self._clear)
        return app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # We decompress ourselves, to apply the 500 KB limit to the decompressed body.
        self._runner = web.AppRunner(self.app(), auto_decompress=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSegment:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- handlers ----------------------------------------------------------------------

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            self._transports[request.transport.get_extra_info("peername")] = request.transport
        self.requests += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self._notify()
        try:
            return await self._handle(request)
        finally:
            self.active -= 1
            self._notify()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if self._gate is not None:
            await self._gate.wait()
        if self._barrier is not None and (refused := await self._wait_for_company()) is not None:
            return refused
        trickle: float | None = None
        if self.failures:
            failure = self._next_failure()
            if failure.trickle is None:
                return self._programmed_failure(request, failure)
            trickle = failure.trickle  # accepted below, answered slowly
        if request.headers.get("Authorization") != self._auth:
            self.rejected.append((401, "bad auth"))
            return _error(401, "invalid write key", code="unauthorized")
        try:
            batch = self._parse(raw, request.headers.get("Content-Encoding"))
        except InvalidBatchError as exc:
            self.rejected.append((400, str(exc)))
            return _error(400, str(exc))
        self._accept(batch)
        if trickle is not None:
            return await self._trickle(request, trickle)
        return web.json_response({"success": True})

    async def _wait_for_company(self) -> web.Response | None:
        """Hold a request until ``parties`` are in flight together (None), or refuse it (503)."""
        assert self._barrier is not None
        parties, within = self._barrier
        try:
            async with asyncio.timeout(within):
                await self._arrived.wait()
        except TimeoutError:
            self._barrier = None
            self.rejected.append((503, "concurrency not reached"))
            return _error(503, f"fewer than {parties} requests arrived together")
        self._to_pass -= 1
        if self._to_pass <= 0:
            self._barrier = None
        return None

    def _next_failure(self) -> Failure:
        """The programmed failure this request gets (counted off its ``times``)."""
        failure = self.failures[0]
        failure.times -= 1
        if failure.times <= 0:
            self.failures.popleft()
        return failure

    def _programmed_failure(self, request: web.Request, failure: Failure) -> web.Response:
        """Answer with a programmed failure (or reset the connection)."""
        if failure.reset:
            assert request.transport is not None
            request.transport.abort()  # no answer at all: the client sees a reset
            raise asyncio.CancelledError
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
        if failure.location:
            headers["Location"] = failure.location
        self.rejected.append((failure.status, "programmed failure"))
        return _error(failure.status, "programmed failure", headers)

    async def _trickle(self, request: web.Request, interval: float) -> web.StreamResponse:
        """Answer 200 one byte every ``interval`` seconds (headers first, then the body)."""
        answer = b'{"success": true}'
        self.trickling += 1
        self._notify()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(answer)
        try:
            await response.prepare(request)
            for index in range(len(answer)):
                await asyncio.sleep(interval)
                await response.write(answer[index : index + 1])
            await response.write_eof()
        except (ConnectionError, RuntimeError):  # the client gave up: nothing more to say
            self.trickles_abandoned += 1
        finally:
            self.trickling -= 1
            self._notify()
        return response

    def _parse(self, raw: bytes, encoding: str | None) -> list[dict[str, Any]]:
        body = _decompress(raw) if encoding == "gzip" else raw
        if encoding not in (None, "gzip", "identity"):
            raise InvalidBatchError(f"unsupported Content-Encoding {encoding}")
        if len(body) > MAX_BODY_BYTES:
            raise InvalidBatchError("request body larger than 500KB")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidBatchError("body is not JSON") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("batch"), list):
            raise InvalidBatchError("body must be an object with a batch array")
        batch: list[Any] = doc["batch"]
        if len(batch) > MAX_BATCH_MESSAGES:
            raise InvalidBatchError("batch has more than 2500 messages")
        if not isinstance(doc.get("sentAt"), str) or not _iso8601(doc["sentAt"]):
            raise InvalidBatchError("sentAt is missing or not ISO-8601")
        for index, msg in enumerate(batch):
            check_message(msg, index)
        poisoned = [m["messageId"] for m in batch if m["messageId"] in self.poison]
        if poisoned:
            raise InvalidBatchError(f"rejected messageId {poisoned[0]}")
        return batch

    def _accept(self, batch: list[dict[str, Any]]) -> None:
        self.batches += 1
        self.accepted += len(batch)
        self.batch_sizes.append(len(batch))
        ids = self.ids
        for msg in batch:
            mid = msg["messageId"]
            ids[mid] = ids.get(mid, 0) + 1
        if self.keep_bodies:
            self.messages.extend(batch)

    async def _stats(self, request: web.Request) -> web.Response:  # noqa: ARG002 - aiohttp's handler signature
        return web.json_response(self.stats())

    async def _received(self, request: web.Request) -> web.Response:
        if request.query.get("ids"):
            return _json({"ids": list(self.ids)})
        return _json({"messages": self.messages})

    async def _mode(self, request: web.Request) -> web.Response:
        doc = await request.json()
        for item in doc.get("fail", []):
            self.fail(
                int(item.get("status", 503)),
                times=int(item.get("times", 1)),
                retry_after=item.get("retry_after"),
                reset=bool(item.get("reset", False)),
                trickle=float(item["trickle"]) if item.get("trickle") else None,
            )
        self.poison.update(doc.get("poison", []))
        return web.json_response({"ok": True})

    async def _clear(self, request: web.Request) -> web.Response:  # noqa: ARG002 - aiohttp's handler signature
        self.release()
        self.clear()
        return web.json_response({"ok": True})


def _decompress(raw: bytes) -> bytes:
    """Gunzip, stopping just past the limit so a gzip bomb costs nothing."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise InvalidBatchError("body is not valid gzip") from exc
    if len(body) <= MAX_BODY_BYTES and not inflater.eof:
        raise InvalidBatchError("body is truncated gzip")
    return body


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, code: str = "invalid_request"
) -> web.Response:
    return _json({"code": code, "message": message}, status=status, headers=headers)


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(doc), status=status, headers=headers, content_type="application/json"
    )


async def _serve(port: int, write_key: str, keep_bodies: bool) -> None:
    fake = FakeSegment(write_key, port=port, keep_bodies=keep_bodies)
    await fake.start()
    print(fake.port, flush=True)
    await serve_until_signalled(fake)


async def serve_until_signalled(fake: FakeSegment) -> None:
    """Keep a started fake serving until SIGTERM or SIGINT, then stop it (process mode)."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Strict fake Segment /v1/batch server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--write-key", default="test-write-key")
    parser.add_argument(
        "--no-bodies", action="store_true", help="count and dedupe only (benchmarks)"
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.write_key, not args.no_bodies))


if __name__ == "__main__":
    main()
