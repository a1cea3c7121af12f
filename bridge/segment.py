"""The Segment sink: the one module that knows HTTP statuses and the segment library's exceptions.

Everything that leaves the bridge goes through :meth:`SegmentSink.send`, which uploads one batch
with ``segment.analytics.request.post`` and translates every outcome into the bridge's own terms:
it returns on 2xx, raises :class:`~bridge.errors.TransientDelivery` when trying again later may
work (network errors, timeouts, 408/410/429/460 and 5xx except 501/505, with the server's
``Retry-After``; and 401/403, a refused write key, see :data:`AUTH_STATUSES`), and
:class:`~bridge.errors.PermanentDelivery` when the same request will never be accepted. This is
the classification of Segment's own libraries (segment-facts.md), but for the write key.

Threads: ``send`` is synchronous and runs in a worker thread, up to ``delivery.concurrency`` at
once. ``request.post`` uses one module-level ``requests.Session``. We share it on purpose: a
Session's connection pool (urllib3) is thread-safe, the cookie jar takes a lock, and our posts
change no other Session state; sharing keeps TLS connections alive between batches. The one
thing to fix is the pool size (10 by default): with more concurrent batches than that, urllib3
would open extra connections and throw them away after each request, so :func:`tune_library`
mounts adapters sized for the largest allowed concurrency.

Gzip: ``request.post`` compresses with ``GzipFile``'s default level, 9. On the bridge's JSON that
costs four times the CPU of zlib's usual level 6 for bodies under 1 % smaller (measured on 500
realistic messages, 258 KB: 9.7 ms at level 9, 2.3 ms at level 6, 42.4 KB vs 42.7 KB), and it
was the largest single cost of a backlog drain. The library offers no setting, so
:func:`tune_library` points the name ``GzipFile`` inside ``segment.analytics.request`` at a
level-6 ``GzipFile``: same upload path, same format, a different level.

Secrets: the write key goes into ``request.post`` and nowhere else. No exception text or log
line carries it (``_scrub`` removes it, raw or as the Basic token, from any text that comes
back from the network, as a last line of defence), and the library's own debug log, which
prints whole request bodies including the key, is held at WARNING by :mod:`bridge.logs`.
"""

from __future__ import annotations

import base64
import functools
import gzip as gzip_module
import json
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
import requests
from requests.adapters import HTTPAdapter
from segment.analytics import request as segment_request

from bridge import logs
from bridge.config import DEFAULT_DESTINATION, Config
from bridge.errors import PermanentDelivery, TransientDelivery

log = logs.get(__name__)

#: Statuses worth retrying besides 5xx (segment-facts.md); 501 and 505 will not get better.
TRANSIENT_STATUSES = frozenset({408, 410, 429, 460})
#: The write key itself was refused. Not the batch's fault: every batch would fail alike, so
#: splitting and burying would turn one configuration mistake into thousands of dead letters.
#: The destination pauses with backoff instead (messages wait, an error line says why) until a
#: reload brings the right key, or ``max_age_secs`` makes them dead letters after all.
AUTH_STATUSES = frozenset({401, 403})
PERMANENT_5XX = frozenset({501, 505})
#: Largest ``delivery.concurrency`` the configuration allows: the connection pool holds as many.
MAX_CONNECTIONS = 32
#: What ``request.post`` puts in ``sentAt``: ``datetime.now(tzutc()).isoformat()``.
_SAMPLE_SENT_AT = "2024-01-01T00:00:00.000000+00:00"
_DETAIL_CHARS = 300
#: zlib's default; see the module docstring for why not the library's 9.
GZIP_LEVEL = 6


class Sink(Protocol):
    """Where one destination's batches go. ``send`` blocks; call it from a worker thread."""

    name: str
    dry_run: bool
    #: Bytes the request body adds around the messages (``{"batch": [...], "sentAt"...}``).
    envelope_bytes: int

    def send(self, batch: Sequence[bytes]) -> None: ...


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUSES or (500 <= status <= 599 and status not in PERMANENT_5XX)


def envelope_bytes(write_key: str) -> int:
    """Size of the request body ``request.post`` builds for an empty batch, exactly."""
    body = {"batch": [], "sentAt": _SAMPLE_SENT_AT, "writeKey": write_key}
    return len(json.dumps(body).encode("utf-8"))


def tune_library(size: int = MAX_CONNECTIONS) -> None:
    """Size the library's shared Session pool for ``size`` concurrent uploads and set its gzip
    level (module docstring). Idempotent; called by every SegmentSink."""
    segment_request.GzipFile = functools.partial(gzip_module.GzipFile, compresslevel=GZIP_LEVEL)
    session = segment_request._session
    current = session.get_adapter("https://")
    if getattr(current, "_pool_maxsize", 0) >= size:
        return
    for prefix in ("https://", "http://"):
        session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=size))


class SegmentSink:
    """Uploads batches to one Segment source (one write key)."""

    dry_run = False

    def __init__(
        self,
        write_key: str,
        endpoint: str,
        timeout_secs: float,
        gzip: bool,
        *,
        name: str = DEFAULT_DESTINATION,
    ) -> None:
        if not write_key:
            raise ValueError("write_key is empty")
        self._write_key = write_key
        token = base64.b64encode(f"{write_key}:".encode()).decode()
        self._secrets = (token, token.rstrip("="), write_key)
        self.endpoint = endpoint
        self.timeout_secs = timeout_secs
        self.gzip = gzip
        self.name = name
        self.envelope_bytes = envelope_bytes(write_key)
        tune_library()

    def __repr__(self) -> str:
        return f"SegmentSink(name={self.name!r}, endpoint={self.endpoint!r}, gzip={self.gzip})"

    def send(self, batch: Sequence[bytes]) -> None:
        """Upload ``batch`` (each item the JSON of one message); raise a DeliveryError if not 2xx.

        The stored bytes are parsed with orjson (fast) because ``request.post`` serialises the
        body itself with ``json.dumps``; a fresh ``sentAt`` is added by the library per attempt.
        """
        messages = [orjson.loads(item) for item in batch]
        try:
            segment_request.post(
                self._write_key,
                host=self.endpoint,
                gzip=self.gzip,
                timeout=self.timeout_secs,
                batch=messages,
            )
        except segment_request.APIError as exc:
            raise self._translate_api_error(exc) from exc
        except requests.RequestException as exc:
            # Connection refused/reset, DNS, TLS, timeouts, a truncated body: all are the
            # network's doing. Anything else requests raises (an invalid URL) cannot come from
            # a validated endpoint, and retrying until max_age is safer than burying it.
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            raise TransientDelivery(detail) from exc

    def _translate_api_error(
        self, exc: segment_request.APIError
    ) -> TransientDelivery | PermanentDelivery:
        status = int(exc.status)
        detail = self._scrub(f"HTTP {status} {exc.code}: {exc.message}")
        if is_transient_status(status):
            retry_after = None
            if exc.response is not None:
                parsed = segment_request.parse_retry_after(exc.response)
                retry_after = float(parsed) if parsed is not None else None
            return TransientDelivery(detail, status=status, retry_after=retry_after)
        if status in AUTH_STATUSES:
            detail = f"{detail} - Segment refused the write key: check it; delivery is paused"
            return TransientDelivery(detail[: _DETAIL_CHARS + 80], status=status)
        return PermanentDelivery(detail, status=status)

    def _scrub(self, text: str) -> str:
        """Remove the write key in every form it travels in (raw, and as the Basic token) from
        text a server sent back: an error page may echo our request."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:_DETAIL_CHARS]


class DryRunSink:
    """No write key: log what would be sent (one line per message) and report success."""

    dry_run = True

    def __init__(self, name: str = DEFAULT_DESTINATION) -> None:
        self.name = name
        self.envelope_bytes = envelope_bytes("")

    def __repr__(self) -> str:
        return f"DryRunSink(name={self.name!r})"

    def send(self, batch: Sequence[bytes]) -> None:
        for item in batch:
            try:
                msg: Any = orjson.loads(item)
            except orjson.JSONDecodeError:
                msg = {}
            if not isinstance(msg, dict):
                msg = {}
            log.info(
                "dry_run_message",
                destination=self.name,
                type=msg.get("type"),
                segment_event=msg.get("event"),
                user_id=msg.get("userId"),
                message_id=msg.get("messageId"),
            )


def build_sinks(config: Config) -> dict[str, Sink]:
    """One sink per destination: ``default`` (the segment section) and each routing entry.

    A destination without a write key is a dry run: its messages are logged and acked.
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
            sinks[name] = SegmentSink(secret, endpoint, seg.timeout_secs, seg.gzip, name=name)
    return sinks
