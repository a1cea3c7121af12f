"""Segment messages as the bridge builds, stores and sends them, and how their ids are derived.

A message is built once by the mapping, serialised once (orjson) into the bytes the store keeps,
and those bytes go to Segment as they are. Its ``messageId`` is derived, never random: the same
Synap fact (portal, event family, natural id, call) always gives the same id, so Synap's
redelivery, our retry after a crash and an operator's replay collapse into one event in Segment,
which de-duplicates on ``messageId``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge import NAME, __version__

MAX_MESSAGE_ID_CHARS = 100
#: Segment documents 32 KB per message. We keep every message under 32,000 bytes so it holds
#: whichever of 32,000 or 32,768 Segment means.
MAX_MESSAGE_BYTES = 32_000
#: Segment's limits on one /v1/batch request.
MAX_BATCH_BYTES = 500_000
MAX_BATCH_MESSAGES = 2500

#: Epoch seconds or milliseconds written as text ("1715677288", "1715677288020.5").
EPOCH_TEXT = re.compile(r"^-?\d{9,16}(\.\d+)?$")
#: A time already in the form :func:`iso8601` writes (``2024-05-14T09:41:27.880Z``).
CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

CONTEXT: dict[str, Any] = {
    "library": {"name": NAME, "version": __version__},
    "integration": {"name": NAME, "version": __version__},
}


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One Segment call, ready to store. ``payload`` is the JSON of the whole message."""

    message_id: str
    destination: str
    user_id: str
    payload: bytes
    #: Not due before ``received_at + hold_secs``: an exam attempt's ``attempt.*`` message waits
    #: this long for the ``exam.*`` webhook of the same attempt and stage to supersede it.
    hold_secs: float = 0.0
    #: How complete this version of the message is. A stored message that is still pending (not
    #: claimed, delivered or dead) is replaced in place by a later one with the same messageId
    #: and a higher rank; otherwise the later one is a duplicate.
    rank: int = 0

    @classmethod
    def build(
        cls,
        destination: str,
        body: dict[str, Any],
        payload: bytes | None = None,
        *,
        hold_secs: float = 0.0,
        rank: int = 0,
    ) -> OutgoingMessage:
        """``payload``: ``body`` already serialised, when the caller has it (else done here)."""
        return cls(
            message_id=body["messageId"],
            destination=destination,
            user_id=body["userId"],
            payload=orjson.dumps(body) if payload is None else payload,
            hold_secs=hold_secs,
            rank=rank,
        )

    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.payload)
        return parsed


def message_id(*parts: str) -> str:
    """A deterministic id for a Segment call, at most 100 characters.

    ``parts`` name the fact: portal, event family, natural id, call (``track``/``identify``...).
    The id is readable at the front (the call) and collision-free behind (SHA-256 of the parts,
    separated so that ``("a|b", "c")`` and ``("a", "b|c")`` differ).
    """
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    head = parts[-1] if parts else "msg"
    return f"{head[:20]}-{digest}"[:MAX_MESSAGE_ID_CHARS]


def iso8601(moment: datetime) -> str:
    """UTC, millisecond precision, ``Z`` suffix: the form Segment documents."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if utc.year < 1000:  # strftime's %Y does not pad those years; isoformat would
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    # The same text, several times cheaper: "...T09:00:00.123+00:00" with the offset as Z.
    return utc.isoformat(timespec="milliseconds")[:-6] + "Z"


def as_iso8601(value: Any) -> str | None:
    """A Synap time (see :func:`parse_time`) as :func:`iso8601` text; None when it does not parse
    or cannot be written (e.g. year 9999 with a negative offset).

    Why a fast path: nearly every time Synap sends is already in the canonical form, and parsing
    it into a datetime only to write the same text again was a tenth of the mapping's cost. Such
    a text is returned as it is once ``fromisoformat`` accepts it (a real date and time: no
    month 13 or hour 24) and it is not before 1970, which is exactly when the slow path would
    return the same text (``…27.880Z`` parses to 27.880000 UTC and prints back identically).
    Hour 24 takes the slow path: Python 3.14's ``fromisoformat`` reads ``T24:00`` as the next
    day's midnight, which the slow path writes as ``T00:00`` of that day. Checked only when the
    parsed hour is 0 (one attribute read on the common path, not a slice of the text).
    """
    if type(value) is str and len(value) == 24 and CANONICAL_TIME.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.hour or value[11] == "0":
            return value if value >= "1970" else None
    moment = parse_time(value)
    if moment is None:
        return None
    try:
        return iso8601(moment)
    except (OverflowError, ValueError):
        return None


def parse_time(value: Any) -> datetime | None:
    """Read a Synap time: ISO-8601 text (``Z`` or offset, date only), epoch seconds/millis as a
    number or as text, or the ``new Date('…')`` form Synap's native source writes. A time
    without a zone is UTC.

    Returns None for anything else, so callers fall back to another field or the receipt time.
    """
    if type(value) is str:  # the common case first (a str is never a bool or a number)
        return _parse_text(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _from_epoch(value)
    if isinstance(value, str):
        return _parse_text(value)
    return None


def _from_epoch(value: float) -> datetime | None:
    """Epoch seconds, or milliseconds when the number is too large to be seconds."""
    seconds = value / 1000 if abs(value) > 1e11 else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _parse_text(value: str) -> datetime | None:
    text = value.strip()
    if text.startswith("new Date(") and text.endswith(")"):
        text = text[len("new Date(") : -1].strip().strip("'\"").strip()
    if not text:
        return None
    if EPOCH_TEXT.match(text):
        try:
            return _from_epoch(float(text))
        except ValueError:
            return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.year < 1970:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
