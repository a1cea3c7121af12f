"""Keep every Segment message under the per-message limit, and say in the message what was cut.

Segment rejects a message over 32 KB, and a rejected message is a dead letter: losing a whole
"Completed Test" because one free-form attribute was large would be the wrong trade. So, in this
order, until the serialised message fits:

1. ``context.traits`` (a copy of the user's traits, secondary on a track) goes;
2. the *expendable* keys (an identify's ``EI-*`` custom attributes), largest first;
3. the other non-essential keys, largest first;

where a list loses items from its end, a text is shortened, anything else is removed. The ids
that make the event useful (and an identify's native traits) are *essential* and never cut,
except in the last resort: essentials only, texts cut short.

Whatever is cut is named in the message itself, in ``truncated`` inside the properties (or
traits): ``{"sectionGrades": 400}`` says the key was cut and held 400 items before. Counts are
items for a list, keys for an object, characters for a text, 1 for anything else; past
:data:`MARKER_KEYS` keys, the rest are counted under ``otherKeys``. So a cut event never looks
complete in a report. The reasons are also returned for the log.

The size measured is the bytes Segment receives: the message as stored is spliced into the
request as it is (bridge.delivery.wire), compact UTF-8 JSON. docs/mapping.md ("Size") explains
why this is the measure Segment's server applies, not the ``json.dumps`` of its Python library.
"""

from __future__ import annotations

from typing import Any

import orjson

from bridge.errors import UnmappableError
from bridge.messages import MAX_MESSAGE_BYTES

#: Room kept for JSON escaping when a text is cut by its UTF-8 length.
SLACK = 64
ESSENTIAL_TEXT_CHARS = 1000
#: The marker's key in properties / traits.
MARKER = "truncated"
#: At most this many keys are named in the marker; the rest are counted under ``otherKeys``.
MARKER_KEYS = 40
OTHER_KEYS = "otherKeys"


def size_of(value: Any) -> int:
    return len(orjson.dumps(value))


def fitted(
    body: dict[str, Any],
    field: str,
    essentials: tuple[str, ...],
    limit: int = MAX_MESSAGE_BYTES,
    expendable: tuple[str, ...] = (),
) -> tuple[bytes, list[str]]:
    """``body`` serialised, after :func:`fit` if it had to be cut, and the reasons for the cuts.

    Why: nearly every message fits at once, and then the bytes that measured it are the bytes
    to store; serialising a message twice (once to measure, once to keep) showed in the profile.
    """
    payload = orjson.dumps(body)
    if len(payload) <= limit:
        return payload, []
    reasons = fit(body, field, essentials, limit, expendable)
    return orjson.dumps(body), reasons


def count_of(value: Any) -> int:
    """What the marker records for a cut value (see the module docstring)."""
    return len(value) if isinstance(value, list | dict | str) else 1


def fit(
    body: dict[str, Any],
    field: str,
    essentials: tuple[str, ...],
    limit: int = MAX_MESSAGE_BYTES,
    expendable: tuple[str, ...] = (),
) -> list[str]:
    """Shrink ``body`` in place until it serialises to at most ``limit`` bytes.

    Returns the reasons (empty when nothing was cut). Raises UnmappableError("too_large") only if
    even the essentials do not fit, which the id length limits make impossible in practice.
    """
    size = size_of(body)
    if size <= limit:
        return []
    label = f"{body.get('type')} {body.get('event') or ''}".strip()
    original = size
    reasons: list[str] = []
    cut: dict[str, int] = {}
    context = body.get("context")
    if isinstance(context, dict) and "traits" in context:
        cut["context.traits"] = count_of(context.pop("traits"))
        reasons.append(f"{label}: context.traits removed")
        size = size_of(body)
    data: dict[str, Any] = body[field]
    data[MARKER] = cut
    if size_of(body) <= limit or _cut_keys(
        body, field, cut, essentials, expendable, limit, label, reasons
    ):
        return [_tail(reason, original, limit) for reason in reasons]
    for key in [key for key in data if key not in essentials and key != MARKER]:
        _note(cut, key, data.pop(key))
    body[field] = {key: _short(data[key]) for key in essentials if key in data}
    body[field][MARKER] = cut
    reasons.append(f"{label}: {field} cut down to its essential keys {list(essentials)}")
    if size_of(body) > limit:
        raise UnmappableError(
            "too_large", f"{label} exceeds {limit} bytes even with essentials only"
        )
    return [_tail(reason, original, limit) for reason in reasons]


def _cut_keys(
    body: dict[str, Any],
    field: str,
    cut: dict[str, int],
    essentials: tuple[str, ...],
    expendable: tuple[str, ...],
    limit: int,
    label: str,
    reasons: list[str],
) -> bool:
    """Cut keys in order (expendable first, then largest first) until ``body`` fits.

    Sizes are measured once and subtracted as keys shrink; the whole body is serialised again
    only when the estimate says it fits, so thousands of keys cost a few serialisations, not one
    per key (the old bounded number of rounds left an identify with 150 attributes empty).
    """
    data: dict[str, Any] = body[field]
    first = set(expendable)
    weights = {
        key: size_of(key) + size_of(value) + 2
        for key, value in data.items()
        if key not in essentials and key != MARKER
    }
    order = sorted(weights, key=lambda key: (key not in first, -weights[key]))
    size = size_of(body)
    for key in order:
        excess = size - limit
        value = data[key]
        shrunk, how = _shrink(value, excess + SLACK)
        if shrunk is None:
            del data[key]
            size -= weights[key]
            how = f"removed ({weights[key]:,} bytes)"
        else:
            data[key] = shrunk
            size -= size_of(value) - size_of(shrunk)
        size += _note(cut, key, value)
        reasons.append(f"{label}: {field}.{key} {how}")
        if size <= limit:
            size = size_of(body)
            if size <= limit:
                return True
    return False


def _note(cut: dict[str, int], key: str, value: Any) -> int:
    """Record ``key`` in the marker; about how many bytes the marker grew (an upper bound)."""
    if key in cut:
        return 0
    if len(cut) - (OTHER_KEYS in cut) < MARKER_KEYS:
        cut[key] = count_of(value)
        return size_of(key) + 12
    grew = 0 if OTHER_KEYS in cut else size_of(OTHER_KEYS) + 12
    cut[OTHER_KEYS] = cut.get(OTHER_KEYS, 0) + 1
    return grew


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
