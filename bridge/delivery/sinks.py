"""The Segment sink: the one module that knows HTTP statuses and Segment's error answers.

Everything that leaves the bridge goes through :meth:`SegmentSink.send`, which uploads one batch
to ``{endpoint}/v1/batch`` and translates every outcome into the bridge's own terms: it returns
on 2xx, raises :class:`~bridge.errors.TransientDeliveryError` when trying again later may work
(network errors, timeouts, 408/410/429/460 and 5xx except 501/505, with the server's
``Retry-After``) and, pausing the destination, when the endpoint or the whole request is refused
(401/403, 404, 405, 413, 3xx, 501/505 ...), and :class:`~bridge.errors.PermanentDeliveryError`
only when a message is wrong (400, 422, see :data:`MESSAGE_STATUSES`). Segment's own libraries
(segment-facts.md) give up on every 4xx but 408/429; we do so only for the message statuses.

Why not ``segment.analytics.request.post``: it takes the batch as Python objects and encodes it
with the standard ``json`` module, so every stored message had to be parsed and encoded again
per upload: with its level-9 gzip, that was the largest share of a backlog drain's CPU (figures
in docs/benchmarks.md). The stored bytes already are the messages' JSON, so
:mod:`bridge.delivery.wire` splices them into the same request (same URL, keys, Basic auth, gzip).
What we still take from the library is its reading of ``Retry-After``
(:func:`segment.analytics.request.parse_retry_after`: seconds or an HTTP date, capped at 300 s)
and its error-body convention (``{"code", "message"}``).

On the event loop: each sink owns one ``aiohttp.ClientSession`` (made at its first upload, in
the running loop; never at import), whose connector keeps up to ``delivery.concurrency``
connections to its endpoint alive between batches. ``ClientTimeout`` bounds every upload twice:
``segment.timeout_secs`` per connect and per read, and ``segment.total_timeout_secs`` for the
whole request, answer included, so a peer trickling its answer one byte a second is cut at the
total deadline and its connection closed, while the other uploads go on. The session is closed
by :meth:`SegmentSink.close` (the delivery loop calls it when it stops or replaces the sinks).
Like ``requests`` before it, a sink honours ``HTTPS_PROXY``/``HTTP_PROXY`` and ``NO_PROXY``, read
once when its session is made (:func:`env_proxy`). Not aiohttp's ``trust_env``: that reads the
environment, and ``~/.netrc`` in an executor thread, on every request (a thread in delivery, and
a tenth of a drain's CPU in its profile).

Secrets: the write key goes into the request and nowhere else. No exception text or log line
carries it: ``_scrub`` removes it, raw or as the Basic token, from any text that comes back
from the network, as a last line of defence.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Protocol

import aiohttp
import orjson
from segment.analytics import request as segment_request

from bridge import logs
from bridge.config import DEFAULT_DESTINATION, Config
from bridge.delivery import wire
from bridge.errors import PermanentDeliveryError, TransientDeliveryError

log = logs.get(__name__)

#: Statuses worth retrying besides 5xx (segment-facts.md); 501 and 505 will not get better.
TRANSIENT_STATUSES = frozenset({408, 410, 429, 460})
#: The only statuses that say "a message in this batch is wrong": the batch is split until the
#: culprit stands alone, and only it becomes a dead letter (Segment answers 400 for an invalid
#: message or batch body; 422 is the usual "understood, but a value is wrong").
MESSAGE_STATUSES = frozenset({400, 422})
#: Every other refusal says "this endpoint or this request is wrong": a refused write key
#: (401/403), a wrong path (404, 405), a request a proxy will not take (413: our batches are
#: under Segment's limits by construction, so a 413 is a proxy's or a wrong endpoint's limit),
#: a redirect, 501/505. Not the batch's fault: every batch would fail alike, so splitting and
#: burying would turn one configuration mistake into thousands of dead letters. The
#: destination pauses with backoff instead (messages wait, an error line says why) until the
#: endpoint or a reload fixes it, or ``max_age_secs`` makes them dead letters after all.
AUTH_STATUSES = frozenset({401, 403})
PERMANENT_5XX = frozenset({501, 505})
#: Connections a sink keeps when it is not told ``delivery.concurrency`` (its largest value).
MAX_CONNECTIONS = 32
_DETAIL_CHARS = 300


class Sink(Protocol):
    """Where one destination's batches go."""

    name: str
    dry_run: bool
    #: Bytes the request body adds around the messages (``{"batch":[...],"sentAt"...}``).
    envelope_bytes: int
    #: ``send`` returns or raises within this time (connect, send and the whole answer).
    total_timeout_secs: float

    async def send(self, batch: Sequence[bytes]) -> None: ...

    async def close(self) -> None:
        """Release the sink's connections (no upload is in flight any more)."""
        ...


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUSES or (500 <= status <= 599 and status not in PERMANENT_5XX)


def error_code_and_message(body: bytes) -> tuple[str, str]:
    """Segment's error body is ``{"code": ..., "message": ...}``; anything else is "unknown"
    with the text (the library's convention, so log lines read the same)."""
    try:
        doc = orjson.loads(body)
        return str(doc["code"]), str(doc["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "unknown", body.decode("utf-8", errors="replace")


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY`` ..., unless ``NO_PROXY``
    exempts its host), as ``requests`` and curl read it; None for a direct connection."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxy


class _Answer:
    """What :func:`segment_request.parse_retry_after` reads of a response: its headers."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers


class SegmentSink:
    """Uploads batches to one Segment source (one write key) over its own connection pool."""

    dry_run = False

    def __init__(
        self,
        write_key: str,
        endpoint: str,
        timeout_secs: float,
        gzip: bool,
        *,
        name: str = DEFAULT_DESTINATION,
        total_timeout_secs: float | None = None,
        connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not write_key:
            raise ValueError("write_key is empty")
        self._write_key = write_key
        token = wire.basic_token(write_key)
        self._secrets = (token, token.rstrip("="), write_key)
        self._headers = wire.headers(write_key, gzipped=gzip)
        self.endpoint = endpoint
        self.url = endpoint.rstrip("/") + "/v1/batch"
        self.timeout_secs = timeout_secs
        self.total_timeout_secs = total_timeout_secs or 2 * timeout_secs
        self.gzip = gzip
        self.name = name
        self.connections = connections
        self.envelope_bytes = wire.envelope_bytes(write_key)
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None

    def __repr__(self) -> str:
        return f"SegmentSink(name={self.name!r}, endpoint={self.endpoint!r}, gzip={self.gzip})"

    def _client(self) -> aiohttp.ClientSession:
        """The sink's session, made in the running loop at the first upload."""
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=0)
            timeout = aiohttp.ClientTimeout(
                total=self.total_timeout_secs,
                sock_connect=self.timeout_secs,
                sock_read=self.timeout_secs,
            )
            session = aiohttp.ClientSession(connector=connector, timeout=timeout)
            self._session = session
            self._proxy = env_proxy(self.url)
        return session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def send(self, batch: Sequence[bytes]) -> None:
        """Upload ``batch`` (each item the JSON of one message); raise a DeliveryError if not 2xx.

        ``sentAt`` is fresh per attempt, so Segment's clock-skew correction sees the real send
        time of a retried batch.
        """
        sent = wire.sent_at()
        if self.gzip:
            data = wire.compressed_body(batch, sent, self._write_key)
        else:
            data = wire.body(batch, sent, self._write_key)
        started = time.monotonic()
        session = self._client()
        try:
            async with session.post(
                self.url, data=data, headers=self._headers, allow_redirects=False, proxy=self._proxy
            ) as response:
                answer = await response.read()  # the whole answer, so the connection is reused
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._network_error(exc, time.monotonic() - started) from exc
        if not 200 <= status < 300:
            raise self._translate(status, headers, answer)

    def _network_error(self, exc: BaseException, elapsed: float) -> TransientDeliveryError:
        """Connection refused/reset, DNS, TLS, a timeout, a truncated answer: all the network's
        doing, all transient. Anything else aiohttp raises (an invalid URL) cannot come from a
        validated endpoint, and retrying until max_age is safer than burying it."""
        total = not isinstance(exc, aiohttp.ClientError) and isinstance(exc, TimeoutError)
        if total or elapsed >= self.total_timeout_secs:
            return TransientDeliveryError(self.overdue())
        if isinstance(exc, TimeoutError):
            kind = "Timeout"
        elif isinstance(exc, aiohttp.ClientConnectionError):
            kind = "ConnectionError"
        else:
            kind = "HTTPError"
        return TransientDeliveryError(self._scrub(f"{kind}: {type(exc).__name__}: {exc}"))

    def overdue(self) -> str:
        return (
            f"no complete answer within {self.total_timeout_secs:g}s "
            "(segment.total_timeout_secs); the batch is retried"
        )

    def _translate(
        self, status: int, headers: Mapping[str, str], answer: bytes
    ) -> TransientDeliveryError | PermanentDeliveryError:
        if 300 <= status < 400:
            # Nothing was uploaded. Following would resend the write key wherever the answer
            # points (and turn the POST into a GET for 301/302). Like a refused key, this is the
            # destination's configuration, not the batch's fault: pause, never bury.
            where = headers.get("Location") or "nowhere"
            detail = self._scrub(
                f"HTTP {status}: the endpoint redirects to {where}; set the destination's "
                "endpoint to the final address; delivery is paused"
            )
            return TransientDeliveryError(detail, status=status)
        code, message = error_code_and_message(answer)
        detail = self._scrub(f"HTTP {status} {code}: {message}")
        if is_transient_status(status):
            parsed = segment_request.parse_retry_after(_Answer(headers))
            retry_after = float(parsed) if parsed is not None else None
            return TransientDeliveryError(detail, status=status, retry_after=retry_after)
        if status in AUTH_STATUSES:
            detail = f"{detail} - Segment refused the write key: check it; delivery is paused"
            return TransientDeliveryError(detail[: _DETAIL_CHARS + 80], status=status)
        if status in MESSAGE_STATUSES:
            return PermanentDeliveryError(detail, status=status)
        detail = f"{detail} - the endpoint refused the whole request: check segment.endpoint"
        return TransientDeliveryError(
            f"{detail[: _DETAIL_CHARS + 80]}; delivery is paused", status=status
        )

    def _scrub(self, text: str) -> str:
        """Remove the write key in every form it travels in (raw, and as the Basic token) from
        text a server sent back: an error page may echo our request."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:_DETAIL_CHARS]


class DryRunSink:
    """A destination without a write key. The delivery loop never claims its messages
    (:mod:`bridge.delivery.dryrun` logs them and leaves them queued); should a batch reach
    :meth:`send` all the same, it is refused as transient, never reported as delivered."""

    dry_run = True
    total_timeout_secs = 1.0

    def __init__(self, name: str = DEFAULT_DESTINATION) -> None:
        self.name = name
        self.envelope_bytes = wire.envelope_bytes("")

    def __repr__(self) -> str:
        return f"DryRunSink(name={self.name!r})"

    async def send(self, batch: Sequence[bytes]) -> None:  # noqa: ARG002 - the Sink protocol's signature
        raise TransientDeliveryError(f"destination {self.name!r} has no write key (dry-run)")

    async def close(self) -> None:
        """Nothing to release."""


async def close_all(sinks: Sequence[Sink]) -> None:
    """Close every sink; one that fails to close does not keep the others open."""
    results = await asyncio.gather(*(sink.close() for sink in sinks), return_exceptions=True)
    for sink, result in zip(sinks, results, strict=True):
        if isinstance(result, Exception):
            log.warning("sink_close_failed", destination=sink.name, error=type(result).__name__)


def build_sinks(config: Config) -> dict[str, Sink]:
    """One sink per destination: ``default`` (the segment section) and each routing entry,
    each with a pool of ``delivery.concurrency`` connections.

    A destination without a write key is a dry run: its messages are logged and kept queued,
    never marked delivered (an empty key is a configuration error, never a dry run).
    """
    seg = config.segment
    endpoints = {DEFAULT_DESTINATION: (seg.write_key, seg.endpoint)}
    for name, dest in config.routing.destinations.items():
        endpoints[name] = (dest.write_key, dest.endpoint)
    sinks: dict[str, Sink] = {}
    for name, (write_key, endpoint) in endpoints.items():
        if write_key is None:
            sinks[name] = DryRunSink(name)
        else:
            secret = write_key.get_secret_value()
            sinks[name] = SegmentSink(
                secret,
                endpoint,
                seg.timeout_secs,
                seg.gzip,
                name=name,
                total_timeout_secs=seg.total_timeout_secs,
                connections=config.delivery.concurrency,
            )
    return sinks
