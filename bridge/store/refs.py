"""The ids inside a webhook body that the event search finds it by, from the parsed body.

Why here and not only in the database: PostgreSQL's trigger parsed every 6 KB body again as
jsonb to find them, about two thirds of the server's CPU per stored webhook (220 of 340 µs,
measured with the EXPLAIN and CPU probes in docs/benchmarks.md); the receiver has already
parsed the body to map it, so picking seven keys out of that dict costs a microsecond.

The answer must be exactly what ``bridge_webhook_refs`` (PostgreSQL, schema v2) returns for the
same body: string values as they are, integers as their decimal text, nothing else. Where the
Python value cannot say what PostgreSQL's jsonb would print (a float: ``1e3`` is ``1000`` there)
or where jsonb would refuse the body (a NUL), :func:`refs_of` answers None and the store lets
the database work the refs out from the raw body as before.

One exception to "exactly": a ref longer than :data:`MAX_REF_BYTES` is left out, here and in the
statement's SQL fallback. PostgreSQL cannot index it (a btree entry holds at most 2,704 bytes),
so storing it failed the whole insert: the webhook was refused with a 503 on every retry, and
each refusal marked storage as failing (``/readyz`` not ready) for every other webhook, all
because one body carried an absurd id. Such a webhook is now stored and found by every other
search field; SQLite, which has no such limit, still finds it by that ref too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: (object key, key inside it or None): ``id``, ``attempt.id``, ``test.id`` / ``objectId``,
#: ``exam.id`` / ``objectId``, ``assignment.objectId``.
PATHS: tuple[tuple[str, str | None], ...] = (
    ("id", None),
    ("attempt", "id"),
    ("test", "id"),
    ("test", "objectId"),
    ("exam", "id"),
    ("exam", "objectId"),
    ("assignment", "objectId"),
)

#: The longest ref (UTF-8 bytes) PostgreSQL's ``webhook_refs`` primary key can hold, with room
#: for the webhook id and the entry's header within the btree's 2,704 bytes.
MAX_REF_BYTES = 2048


def refs_of(payload: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The distinct refs of a decoded JSON object, or None when only the database can tell."""
    found: list[str] = []
    for key, inner in PATHS:
        value = payload.get(key)
        if inner is not None:
            value = value.get(inner) if isinstance(value, dict) else None
        if value is None or isinstance(value, bool | dict | list):
            continue  # jsonb: null, boolean, object and array are not refs
        if isinstance(value, str) and "\x00" not in value:
            text = value
        elif isinstance(value, int):
            text = str(value)
        else:
            return None  # a float, or a NUL that jsonb refuses: the database decides
        # Characters first: a text of at most MAX_REF_BYTES // 4 characters always fits, so the
        # common short id is never encoded just to be measured.
        too_long = len(text) > MAX_REF_BYTES // 4 and len(text.encode("utf-8")) > MAX_REF_BYTES
        if not too_long and text not in found:
            found.append(text)
    return tuple(found)
