"""Keep every Segment message under the per-message limit, and say in the message what was cut.

Segment rejects a message over 32 KB, and a rejected message is a dead letter: losing a whole
"Completed Test" because one part of it was large would be the wrong trade, and so would losing
more of it than the limit asks for. So, in this order, until the serialised message fits:

1. ``context.traits`` (a copy of the user's traits, secondary on a track) goes;
2. a track's properties: the **largest leaf** is cut, and only it: from the top, the cut goes
   down into a part while one child holds at least half of it (``tags`` -> ``tags.topic``), and
   shortens what it reaches: a list loses items from its end, an object keys from its end, a
   text is shortened with "…". Its siblings stay (``tags.subject`` and the other sections are
   kept when ``tags.topic`` is long). Repeated while the message is too large;
3. an identify's or a group's traits: a trait is a profile value a destination keeps, so a
   shortened one would write a value Synap never held. A trait that does not fit is **left
   out** (the profile keeps its previous value), custom attributes first, largest first.

The ids that make the event useful (and an identify's native traits) are *essential* and never
cut, except in the last resort: essentials only, texts cut short.

Whatever is cut is named in ``context.truncated`` (every call type; never inside properties or
traits, where it would become a profile trait or a warehouse column of its own), by its path:
``{"tags.topic": 3000}`` says ``properties.tags.topic`` held 3,000 items before. Counts are
items for a list, keys for an object, characters for a text, 1 for anything else; past
:data:`MARKER_KEYS` paths, the rest are counted under ``otherKeys``. The reasons are also
returned for the log.

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
#: The marker's key in ``context``.
MARKER = "truncated"
#: At most this many paths are named in the marker; the rest are counted under ``otherKeys``.
MARKER_KEYS = 40
OTHER_KEYS = "otherKeys"
#: Cuts of a track's properties before the last resort (each cut saves what the excess asks, so
#: more are needed only when many parts are large).
MAX_CUTS = 64


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

    ``field`` is ``properties`` (a track: leaves are shortened) or ``traits`` (identify, group:
    whole traits are left out). Returns the reasons (empty when nothing was cut). Raises
    UnmappableError("too_large") only if even the essentials do not fit, which the id length
    limits make impossible in practice.
    """
    size = size_of(body)
    if size <= limit:
        return []
    label = f"{body.get('type')} {body.get('event') or ''}".strip()
    original = size
    reasons: list[str] = []
    cut: dict[str, int] = {}
    context = body.get("context")
    if not isinstance(context, dict):
        context = body["context"] = {}
    if "traits" in context:
        _note(cut, "context.traits", context.pop("traits"))
        reasons.append(f"{label}: context.traits removed")
    context[MARKER] = cut
    if field == "traits":
        done = _leave_out(body, field, cut, essentials, expendable, limit, label, reasons)
    else:
        done = _cut_leaves(body, field, cut, essentials, limit, label, reasons)
    if done:
        return [_tail(reason, original, limit) for reason in reasons]
    data: dict[str, Any] = body[field]
    for key in [key for key in data if key not in essentials]:
        _note(cut, key, data.pop(key))
    body[field] = {key: _short(data[key]) for key in essentials if key in data}
    reasons.append(f"{label}: {field} cut down to its essential keys {list(essentials)}")
    if size_of(body) > limit:
        raise UnmappableError(
            "too_large", f"{label} exceeds {limit} bytes even with essentials only"
        )
    return [_tail(reason, original, limit) for reason in reasons]


def _leave_out(
    body: dict[str, Any],
    field: str,
    cut: dict[str, int],
    essentials: tuple[str, ...],
    expendable: tuple[str, ...],
    limit: int,
    label: str,
    reasons: list[str],
) -> bool:
    """Leave whole traits out (expendable first, then largest first) until ``body`` fits.

    Sizes are measured once and subtracted as traits go; the whole body is serialised again
    only when the estimate says it fits, so thousands of traits cost a few serialisations.
    """
    data: dict[str, Any] = body[field]
    first = set(expendable)
    weights = {
        key: size_of(key) + size_of(value) + 2
        for key, value in data.items()
        if key not in essentials
    }
    order = sorted(weights, key=lambda key: (key not in first, -weights[key]))
    size = size_of(body)
    for key in order:
        size += _note(cut, key, data.pop(key)) - weights[key]
        reasons.append(f"{label}: {field}.{key} left out ({weights[key]:,} bytes)")
        if size <= limit:
            size = size_of(body)
            if size <= limit:
                return True
    return size_of(body) <= limit


def _cut_leaves(
    body: dict[str, Any],
    field: str,
    cut: dict[str, int],
    essentials: tuple[str, ...],
    limit: int,
    label: str,
    reasons: list[str],
) -> bool:
    """Cut the largest leaf, then the next, until ``body`` fits (module docstring, step 2).

    While no one property can absorb the excess, properties are removed largest first in one
    pass (sizes measured once), so thousands of them cost a few serialisations, not one each.
    """
    data: dict[str, Any] = body[field]
    for _ in range(MAX_CUTS):
        size = size_of(body)
        if size <= limit:
            return True
        excess = size - limit + SLACK
        sizes = {
            key: size_of(key) + size_of(value) + 2
            for key, value in data.items()
            if key not in essentials
        }
        if not sizes:
            return False
        if max(sizes.values()) < excess:
            _remove_largest(data, sizes, excess, cut, f"{label}: {field}", reasons)
            continue
        path, node = _largest(data, sizes, excess)
        shrunk, how = _shrink(node, excess)
        parent = _at(data, path[:-1])
        name = ".".join(str(part) for part in path)
        _note(cut, name, node)
        if shrunk is None:
            del parent[path[-1]]
            how = f"removed ({size_of(node):,} bytes)"
        else:
            parent[path[-1]] = shrunk
        reasons.append(f"{label}: {field}.{name} {how}")
    return size_of(body) <= limit


def _remove_largest(
    data: dict[str, Any],
    sizes: dict[str, int],
    excess: int,
    cut: dict[str, int],
    where: str,
    reasons: list[str],
) -> None:
    """Remove properties largest first until ``excess`` is saved, stopping before one large
    enough to absorb what is left (the next round shortens it instead)."""
    left = excess
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if sizes[key] >= left:
            return
        left += _note(cut, key, data.pop(key)) - sizes[key]
        reasons.append(f"{where}.{key} removed ({sizes[key]:,} bytes)")
        if left <= 0:
            return


def _largest(data: dict[str, Any], sizes: dict[str, int], excess: int) -> tuple[list[Any], Any]:
    """The path to the part to cut, and the part: the largest property, then down into its
    largest child while that child alone is large enough to absorb the whole excess (so its
    siblings stay)."""
    key = max(sizes, key=sizes.__getitem__)
    path: list[Any] = [key]
    node = data[key]
    while isinstance(node, dict | list) and node:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        weight, part = max(((size_of(value), part) for part, value in items), key=_first)
        child = node[part]
        if weight < excess or not isinstance(child, dict | list | str):
            break
        path.append(part)
        node = child
    return path, node


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _at(data: Any, path: list[Any]) -> Any:
    for part in path:
        data = data[part]
    return data


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
    if isinstance(value, list) and value:
        saved, keep = 0, len(value)
        while keep > 0 and saved < excess:
            keep -= 1
            saved += size_of(value[keep]) + 1
        if saved >= excess and keep > 0:
            return value[:keep], f"cut from {len(value):,} to {keep:,} items"
        return None, ""
    if isinstance(value, dict) and value:
        keys = list(value)
        saved, keep = 0, len(keys)
        while keep > 0 and saved < excess:
            keep -= 1
            saved += size_of(keys[keep]) + size_of(value[keys[keep]]) + 2
        if saved >= excess and keep > 0:
            kept = {key: value[key] for key in keys[:keep]}
            return kept, f"cut from {len(keys):,} to {keep:,} keys"
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
