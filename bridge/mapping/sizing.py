"""Keep every Segment message under the per-message limit, saying what was cut and why.

Segment rejects a message over 32 KB, and a rejected message is a dead letter: losing a whole
"Completed Test" because one free-form attribute was large would be the wrong trade. So the
biggest non-essential property (or trait) is shrunk first - a list loses items from its end, a
text is shortened, anything else is removed - until the serialised message fits. If a bounded
number of rounds is not enough, the last resort keeps only the essential keys (the ids that make
the event useful), with texts cut short. Every cut is described in plain words for the log.
"""

from __future__ import annotations

from typing import Any

import orjson

from bridge.errors import UnmappableError
from bridge.messages import MAX_MESSAGE_BYTES

MAX_ROUNDS = 64
#: Room kept for JSON escaping when a text is cut by its UTF-8 length.
SLACK = 64
ESSENTIAL_TEXT_CHARS = 1000


def size_of(value: Any) -> int:
    return len(orjson.dumps(value))


def fitted(
    body: dict[str, Any], field: str, essentials: tuple[str, ...], limit: int = MAX_MESSAGE_BYTES
) -> tuple[bytes, list[str]]:
    """``body`` serialised, after :func:`fit` if it had to be cut, and the reasons for the cuts.

    Why: nearly every message fits at once, and then the bytes that measured it are the bytes
    to store; serialising a message twice (once to measure, once to keep) showed in the profile.
    """
    payload = orjson.dumps(body)
    if len(payload) <= limit:
        return payload, []
    reasons = fit(body, field, essentials, limit)
    return orjson.dumps(body), reasons


def fit(
    body: dict[str, Any], field: str, essentials: tuple[str, ...], limit: int = MAX_MESSAGE_BYTES
) -> list[str]:
    """Shrink ``body[field]`` in place until ``body`` serialises to at most ``limit`` bytes.

    Returns the reasons (empty when nothing was cut). Raises UnmappableError("too_large") only if
    even the essentials do not fit, which the id length limits make impossible in practice.
    """
    size = size_of(body)
    if size <= limit:
        return []
    label = f"{body.get('type')} {body.get('event') or ''}".strip()
    original = size
    reasons: list[str] = []
    data: dict[str, Any] = body[field]
    for _ in range(MAX_ROUNDS):
        candidates = [(size_of(value), key) for key, value in data.items() if key not in essentials]
        if not candidates:
            break
        weight, key = max(candidates)
        shrunk, how = _shrink(data[key], size - limit + SLACK)
        if shrunk is None:
            del data[key]
            how = f"removed ({weight:,} bytes)"
        else:
            data[key] = shrunk
        reasons.append(f"{label}: {field}.{key} {how}")
        size = size_of(body)
        if size <= limit:
            return [_tail(reason, original, limit) for reason in reasons]
    body[field] = {key: _short(data[key]) for key in essentials if key in data}
    reasons.append(f"{label}: {field} cut down to its essential keys {list(body[field])}")
    if size_of(body) > limit:
        raise UnmappableError(
            "too_large", f"{label} exceeds {limit} bytes even with essentials only"
        )
    return [_tail(reason, original, limit) for reason in reasons]


def _tail(reason: str, original: int, limit: int) -> str:
    return f"{reason} (message was {original:,} bytes, limit {limit:,})"


def _shrink(value: Any, excess: int) -> tuple[Any, str]:
    """A smaller value saving at least ``excess`` bytes if it can, with a description."""
    if isinstance(value, list) and len(value) > 1:
        saved, keep = 0, len(value)
        while keep > 1 and saved < excess:
            keep -= 1
            saved += size_of(value[keep]) + 1
        if saved >= excess:
            return value[:keep], f"cut from {len(value):,} to {keep:,} items"
        return None, ""
    if isinstance(value, str):
        encoded = value.encode("utf-8")
        target = len(encoded) - excess - 3
        if target > 0:
            cut = encoded[:target].decode("utf-8", "ignore") + "…"
            return cut, f"shortened from {len(value):,} to {len(cut):,} characters"
    return None, ""


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > ESSENTIAL_TEXT_CHARS:
        return value[:ESSENTIAL_TEXT_CHARS] + "…"
    return value if isinstance(value, str | int | float | bool) or value is None else None
