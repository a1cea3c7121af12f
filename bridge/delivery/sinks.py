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
:mod:`bridge.delivery.wire` splices them into the same request (same URL, keys, Basic auth, gzip)
and this module posts it with ``requests``, as ``request.post`` does. What we still take from the
library is its reading of ``Retry-After`` (:func:`segment.analytics.request.parse_retry_after`:
seconds or an HTTP date, capped at 300 s) and its error-body convention (``{"code", "message"}``).

Threads: ``send`` is synchronous and runs in a worker thread, up to ``delivery.concurrency`` at
once, all sharing one module-level ``requests.Session``: its connection pool (urllib3) is
thread-safe, the cookie jar takes a lock, and our posts change no other Session state; sharing
keeps TLS connections alive between batches. The pool holds :data:`MAX_CONNECTIONS`, the largest
concurrency the configuration allows (the default 10 would open and discard extra connections).

Secrets: the write key goes into the request and nowhere else. No exception text or log line
carries it: ``_scrub`` removes it, raw or as the Basic token, from any text that comes back
from the network, as a last line of defence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import requests
from segment.analytics import request as segment_request

from bridge import logs
from bridge.config import DEFAULT_DESTINATION, Config
from bridge.delivery import wire
from bridge.delivery.deadline import Deadline, DeadlineAdapter
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
#: Largest ``delivery.concurrency`` the configuration allows: the connection pool holds as many.
MAX_CONNECTIONS = 32
_DETAIL_CHARS = 300


def _session() -> requests.Session:
    session = requests.Session()
    adapter = DeadlineAdapter(pool_connections=4, pool_maxsize=MAX_CONNECTIONS)
    for prefix in ("https://", "http://"):
        session.mount(prefix, adapter)
    return session


#: Shared by every sink and worker thread (module docstring).
SESSION = _session()


class Sink(Protocol):
    """Where one destination's batches go. ``send`` blocks; call it from a worker thread."""

    name: str
    dry_run: bool
    #: Bytes the request body adds around the messages (``{"batch":[...],"sentAt"...}``).
    envelope_bytes: int
    #: ``send`` returns or raises within this time (connect, send and the whole answer).
    total_timeout_secs: float

    def send(self, batch: Sequence[bytes]) -> None: ...


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUSES or (500 <= status <= 599 and status not in PERMANENT_5XX)


def error_code_and_message(response: requests.Response) -> tuple[str, str]:
    """Segment's error body is ``{"code": ..., "message": ...}``; anything else is "unknown"
    with the text (the library's convention, so log lines read the same)."""
    try:
        doc = response.json()
        return str(doc["code"]), str(doc["message"])
    except (ValueError, KeyError, TypeError):
        return "unknown", response.text


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
        total_timeout_secs: float | None = None,
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
        self.envelope_bytes = wire.envelope_bytes(write_key)

    def __repr__(self) -> str:
        return f"SegmentSink(name={self.name!r}, endpoint={self.endpoint!r}, gzip={self.gzip})"

    def send(self, batch: Sequence[bytes]) -> None:
        """Upload ``batch`` (each item the JSON of one message); raise a DeliveryError if not 2xx.

        ``sentAt`` is fresh per attempt, so Segment's clock-skew correction sees the real send
        time of a retried batch.
        """
        data = wire.body(batch, wire.sent_at(), self._write_key)
        if self.gzip:
            data = wire.compress(data)
        try:
            with Deadline(self.total_timeout_secs) as deadline:
                response = SESSION.post(
                    self.url,
                    data=data,
                    headers=self._headers,
                    timeout=self.timeout_secs,
                    allow_redirects=False,
                )
        except requests.RequestException as exc:
            if deadline.expired:
                raise TransientDeliveryError(self.overdue()) from exc
            # Connection refused/reset, DNS, TLS, timeouts, a truncated body: all are the
            # network's doing. Anything else requests raises (an invalid URL) cannot come from
            # a validated endpoint, and retrying until max_age is safer than burying it.
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            raise TransientDeliveryError(detail) from exc
        if not 200 <= response.status_code < 300:
            raise self._translate(response)

    def overdue(self) -> str:
        return (
            f"no complete answer within {self.total_timeout_secs:g}s "
            "(segment.total_timeout_secs); the batch is retried"
        )

    def _translate(
        self, response: requests.Response
    ) -> TransientDeliveryError | PermanentDeliveryError:
        status = response.status_code
        if 300 <= status < 400:
            # Nothing was uploaded. Following would resend the write key wherever the answer
            # points (and turn the POST into a GET for 301/302). Like a refused key, this is the
            # destination's configuration, not the batch's fault: pause, never bury.
            where = response.headers.get("Location") or "nowhere"
            detail = self._scrub(
                f"HTTP {status}: the endpoint redirects to {where}; set the destination's "
                "endpoint to the final address; delivery is paused"
            )
            return TransientDeliveryError(detail, status=status)
        code, message = error_code_and_message(response)
        detail = self._scrub(f"HTTP {status} {code}: {message}")
        if is_transient_status(status):
            parsed = segment_request.parse_retry_after(response)
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

    def send(self, batch: Sequence[bytes]) -> None:  # noqa: ARG002 - the Sink protocol's signature
        raise TransientDeliveryError(f"destination {self.name!r} has no write key (dry-run)")


def build_sinks(config: Config) -> dict[str, Sink]:
    """One sink per destination: ``default`` (the segment section) and each routing entry.

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
            )
    return sinks
