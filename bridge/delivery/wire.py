"""The bytes of one Segment batch request, built from the stored messages: pure, no I/O.

Every message is stored as the exact compact UTF-8 JSON Segment will receive (orjson, made by
the mapping and checked against the 32 KB limit there). The request body is therefore spliced,
not serialised: ``{"batch":[`` + the stored payloads joined by ``,`` + ``],"sentAt":"…",
"writeKey":"…"}``. This is the body ``segment.analytics.request.post`` sends, with the same
keys, but without parsing every stored message back into Python objects and encoding them again
with the standard ``json`` module, a quarter of a drain's CPU per message (figures in
docs/benchmarks.md). Two consequences, both for the better:

* the size of a batch on the wire is known exactly (:func:`body_bytes`), where ``json.dumps``
  added a space after every ``:`` and ``,`` and escaped non-ASCII text (six bytes for ``é``), so
  the batcher had to guess from above;
* what reaches Segment is byte for byte what ``dead-letters show`` prints.

The envelope keeps ``writeKey`` in the body as the library does (Segment reads the key from the
Basic auth header; the body copy is what older endpoints and proxies look at).
"""

from __future__ import annotations

import base64
import gzip
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from bridge import __version__

#: ``sentAt`` always has this length: microseconds and an explicit offset are always written.
SENT_AT_SAMPLE = "2024-01-01T00:00:00.000000+00:00"
#: Bytes between two messages in the ``batch`` array.
SEPARATOR_BYTES = 1
#: Level 2, not zlib's default 6: on a full batch of the benchmark's messages (473 KB of JSON)
#: level 6 takes 2.4 ms of CPU and gives 12.6 KB, level 2 takes 0.9 ms and gives 14.3 KB (+13%),
#: level 9 (the library's ``GzipFile`` default) 3.9 ms for 12.1 KB. During a drain that CPU is
#: spent beside the writer and the event loop on a small machine, while the bytes saved are a few
#: KB per request; Segment's limits (500 KB per request, 32 KB per message) apply to the JSON,
#: not to its compressed size, so the level changes nothing Segment checks (docs/benchmarks.md).
GZIP_LEVEL = 2
USER_AGENT = f"synap-segment-bridge/{__version__}"

_HEAD = b'{"batch":['


def sent_at(now: datetime | None = None) -> str:
    """``sentAt`` for a request sent ``now`` (UTC ISO-8601, fixed length)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def _tail(sent: str, write_key: str) -> bytes:
    return b'],"sentAt":' + orjson.dumps(sent) + b',"writeKey":' + orjson.dumps(write_key) + b"}"


def body(payloads: Sequence[bytes], sent: str, write_key: str) -> bytes:
    """The JSON request body for ``payloads`` (each one stored message)."""
    return _HEAD + b",".join(payloads) + _tail(sent, write_key)


def envelope_bytes(write_key: str) -> int:
    """Size of the body around the messages (an empty batch), exactly."""
    return len(_HEAD) + len(_tail(SENT_AT_SAMPLE, write_key))


def body_bytes(envelope: int, payload_sizes: Sequence[int]) -> int:
    """Size of the body holding messages of ``payload_sizes`` bytes, exactly."""
    separators = max(len(payload_sizes) - 1, 0) * SEPARATOR_BYTES
    return envelope + sum(payload_sizes) + separators


def compress(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=GZIP_LEVEL)


def compressed_body(payloads: Sequence[bytes], sent: str, write_key: str) -> bytes:
    """``compress(body(...))`` without building the JSON body first: the stored payloads, joined,
    go to the compressor beside the envelope's two ends, so the ~475 KB of a full batch is not
    copied twice more into one string (on the event loop, a drain's largest pure-Python cost
    after the compression itself). A gzip stream (``wbits=31``), as ``gzip.compress`` makes."""
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    parts = (packer.compress(_HEAD), packer.compress(b",".join(payloads)))
    return b"".join((*parts, packer.compress(_tail(sent, write_key)), packer.flush()))


def basic_token(write_key: str) -> str:
    """Segment's Basic auth: the write key as user name, no password."""
    return base64.b64encode(f"{write_key}:".encode()).decode()


def headers(write_key: str, *, gzipped: bool) -> dict[str, str]:
    out = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Authorization": f"Basic {basic_token(write_key)}",
    }
    if gzipped:
        out["Content-Encoding"] = "gzip"
    return out
