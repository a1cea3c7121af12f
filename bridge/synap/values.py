"""Value coercion in and value cleaning out: the two places where JSON meets Python types.

In: the ``as_*`` functions are the "before" validators of the lenient payload models
(bridge/synap/payloads.py). They never raise; what they cannot use becomes ``None`` or empty.

Out: :func:`clean` makes any value copied into a Segment message serialisable by orjson, whatever
the body held: lone surrogates are replaced, integers beyond 64 bits become text, NaN and
infinities become null, dates become ISO-8601 text, nesting deeper than :data:`MAX_DEPTH` is cut.
Without it, one odd custom attribute would make a whole webhook unmappable.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from bridge.messages import iso8601

MAX_DEPTH = 16

#: Longer "ids" are not ids: treated as missing (they would also bloat every message).
MAX_ID_CHARS = 256


def safe_text(value: str) -> str:
    """The text with lone surrogates replaced, so it always encodes as UTF-8."""
    if value.isascii():  # the common case, and much cheaper than trying to encode
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value.isascii() else safe_text(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        return str(value)
    except ValueError:  # an int beyond Python's digit limit
        return None


def as_id(value: Any) -> str | None:
    text = value if type(value) is str and value.isascii() else as_text(value)
    if text is None:
        return None
    text = text.strip()
    return text if 0 < len(text) <= MAX_ID_CHARS else None


def as_number(value: Any) -> int | float | None:
    kind = type(value)  # exact types first: the common case, checked without isinstance calls
    if kind is int:
        return value if -(2**63) < value < 2**63 else None
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) < 2**63 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        whole = number.is_integer() and "." not in value and abs(number) < 2**63
        return int(number) if whole else number
    return None


def as_flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def as_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in as_list(value) if isinstance(item, dict)]


def as_texts(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    # ASCII text (nearly every item) is kept as it is without a call to as_text. A loop rather
    # than two comprehensions: the lists are short, and each comprehension is a call of its own.
    texts = []
    for item in value:
        if type(item) is str and item.isascii():
            texts.append(item)
        else:
            text = as_text(item)
            if text is not None:
                texts.append(text)
    return texts


def as_time(value: Any) -> Any:
    """Times stay raw (text or epoch number); bridge.messages.parse_time reads them."""
    return value if isinstance(value, str | int | float) and not isinstance(value, bool) else None


def as_list_or_none(value: Any) -> list[Any] | None:
    return value if isinstance(value, list) else None


# C901: one flat case per JSON type (the exact-type fast path first, the isinstance chain after);
# splitting it would add a call per value on the intake's hottest path.
def clean(value: Any, depth: int = 0) -> Any:  # noqa: C901
    """``value`` as plain JSON data that orjson can always serialise (see the module docstring)."""
    kind = type(value)  # exact JSON types first, without the isinstance chain (same results)
    if kind is str:
        return value if value.isascii() else safe_text(value)
    if kind is int:
        return value if -(2**63) < value < 2**63 else as_text(value)
    if kind is float:
        return value if math.isfinite(value) else None
    # Containers: an ASCII text key or item (nearly all of them) is kept without a call, which
    # is most of the cost of cleaning a response map or a user's attributes (same results:
    # ``clean`` keeps an ASCII text as it is).
    if kind is dict and depth < MAX_DEPTH:
        return {
            (key if type(key) is str and key.isascii() else safe_text(str(key))): (
                item if type(item) is str and item.isascii() else clean(item, depth + 1)
            )
            for key, item in value.items()
        }
    if kind is list and depth < MAX_DEPTH:
        return [
            item if type(item) is str and item.isascii() else clean(item, depth + 1)
            for item in value
        ]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, int):
        return value if abs(value) < 2**63 else as_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return iso8601(value)
    if isinstance(value, date):
        return value.isoformat()
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {safe_text(str(key)): clean(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item, depth + 1) for item in value]
    return safe_text(str(value))


def content_hash(payload: Mapping[str, Any]) -> str:
    """A stable digest of a body's content (key order ignored), for events with no natural id."""
    try:
        text = json.dumps(payload, sort_keys=True, ensure_ascii=True, default=str)
    except (RecursionError, ValueError, TypeError):
        text = json.dumps(clean(payload), sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]
