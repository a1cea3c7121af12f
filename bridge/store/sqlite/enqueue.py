"""``enqueue`` for a whole group commit at once: a few statements per group, not per webhook.

Why: the writer thread shares the GIL with the event loop, and sqlite3 releases and re-takes it
around every statement step. Three or four statements per webhook (webhook, message, body, plus
the message's RETURNING row) meant about 300 hand-offs per 64-webhook group, each a chance for
the event loop to take the GIL and for the writer to wait its turn; and each statement costs
Python work (binding, cursor, result). Here a group is one statement per table: the rows travel
as one multi-row ``VALUES`` list of bound parameters, padded with NULL rows to a power of two so
that only a handful of statement texts exist and each stays in the prepared-statement cache.

The result is exactly that of storing the webhooks one after another in arrival order:

* webhook ids are assigned here, from the table's AUTOINCREMENT high-water mark (the ids the
  rows would have received one by one), so messages and dead letters know them up front;
* every message is offered to one INSERT in arrival order (``ON CONFLICT DO NOTHING``; SQLite
  inserts the rows of a ``VALUES`` list in their order), so each messageId's first occurrence
  is inserted if new and every refusal uses up an AUTOINCREMENT number as it did one by one:
  the message ids are the same too. The bodies of the first occurrences follow in one statement
  that joins on the rows this group inserted;
* every occurrence not inserted (its messageId stored before, or earlier in this group) then
  tries to supersede the stored row in arrival order (:func:`_supersede`), as it would have one
  by one: occurrences of different messageIds never touch the same row, so only the order among
  the occurrences of one messageId matters, and that order is kept.

tests/test_sqlite_group_enqueue.py compares a group's rows, ids and receipts with the same calls
made one by one.

The same machinery serves the two halves of "keep first, judge after": :func:`keep_group` stores
raw webhooks (one statement for the webhooks, one for their ``unmapped`` rows), and
:func:`record_group` writes the mapping stage's verdicts for webhooks already stored: the
messages exactly as ``enqueue`` would have, against the existing webhook ids.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence

import orjson

from bridge.messages import OutgoingMessage
from bridge.store import DeadReason, EnqueueReceipt, Judged, Webhook
from bridge.store.rows import portal_moves, receipt, webhook_ref
from bridge.store.sqlite.queries import message_row

#: One ``enqueue`` call: the webhook, its messages, or why it is a dead letter.
Item = tuple[Webhook, tuple[OutgoingMessage, ...], DeadReason | None]

#: Rows per statement at most (7 parameters a message row: far below SQLite's 32,766).
MAX_ROWS = 256

#: The highest id either table ever gave (AUTOINCREMENT never reuses one): new rows get more.
_HIGH_WATER = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'webhooks'), 0),"
    " coalesce((SELECT max(id) FROM webhooks), 0)),"
    " max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),"
    " coalesce((SELECT max(id) FROM messages), 0))"
)
_MESSAGES_HIGH_WATER = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),"
    " coalesce((SELECT max(id) FROM messages), 0))"
)
_UNMAPPED = (
    "INSERT INTO unmapped (webhook_id)"
    " SELECT column1 FROM (VALUES {rows}) WHERE column1 IS NOT NULL"
)
_REFS = (
    "INSERT OR IGNORE INTO webhook_refs (ref, webhook_id)"
    " SELECT column1, column2 FROM (VALUES {rows}) WHERE column1 IS NOT NULL"
)
#: A body whose refs Python cannot tell (not JSON to orjson, a float id): SQLite's own JSON
#: functions decide, as the v4 trigger did for every body.
_REFS_FROM_BODY = (
    "INSERT OR IGNORE INTO webhook_refs (ref, webhook_id)"
    " SELECT DISTINCT j.value, w.id FROM webhooks w, json_each("
    " CASE WHEN json_valid(CAST(w.raw_body AS TEXT)) THEN json_extract("
    " CAST(w.raw_body AS TEXT), '$.id', '$.attempt.id', '$.test.id', '$.test.objectId',"
    " '$.exam.id', '$.exam.objectId', '$.assignment.objectId')"
    " ELSE '[]' END) j WHERE w.id = ? AND j.type IN ('text', 'integer')"
)
#: Marks taken webhooks mapped; only those still unmapped are recorded (a second record of the
#: same webhook, after a crash between the two, changes nothing).
_MAPPED = (
    "DELETE FROM unmapped WHERE webhook_id IN (SELECT value FROM json_each(?)) RETURNING webhook_id"
)
#: The portal the mapping read, where it is not the one intake kept (schema v6: beside the
#: webhook's row, which a change of size would rewrite with its whole body).
_PORTALS = (
    "INSERT OR REPLACE INTO webhook_portals (webhook_id, portal_id)"
    " SELECT column1, column2 FROM (VALUES {rows}) WHERE column1 IS NOT NULL"
)
_WEBHOOKS = (
    "INSERT INTO webhooks (id, code, portal_id, received_at, raw_body)"
    " SELECT column1, column2, column3, column4, column5 FROM (VALUES {rows})"
    " WHERE column1 IS NOT NULL"
)
_DEAD = (
    "INSERT INTO dead_letters (webhook_id, message_row, reason, detail, attempts, created_at)"
    " SELECT column1, NULL, column2, column3, 0, column4 FROM (VALUES {rows})"
    " WHERE column1 IS NOT NULL"
)
_MESSAGES = (
    "INSERT INTO messages (webhook_id, message_id, destination, user_id, state,"
    " attempts, due_at, enqueued_at, rank)"
    " SELECT column1, column2, column3, column4, 'pending', 0, column5, column6, column7"
    " FROM (VALUES {rows}) WHERE column1 IS NOT NULL ON CONFLICT (message_id) DO NOTHING"
)
#: The bodies of the messages this group inserted (ids above the high-water mark): the join
#: finds their row ids in SQLite, so Python never fetches them.
_PAYLOADS = (
    "INSERT INTO message_payloads (id, payload)"
    " SELECT m.id, v.column2 FROM (VALUES {rows}) v JOIN messages m ON m.message_id = v.column1"
    " WHERE v.column1 IS NOT NULL AND m.id > ?"
)
_INSERTED = "SELECT message_id FROM messages WHERE id > ?"
#: The stored message of the same messageId, if it is still pending (not claimed, delivered or
#: dead) and less complete: it takes the new version in place (same row, same messageId).
_SUPERSEDE = (
    "UPDATE messages SET webhook_id = ?, destination = ?, user_id = ?, rank = ?,"
    " due_at = min(due_at, ?) WHERE message_id = ? AND state = 'pending' AND rank < ?"
    " RETURNING id"
)
_REPLACE_PAYLOAD = "UPDATE message_payloads SET payload = ? WHERE id = ?"


def keep_group(conn: sqlite3.Connection, webhooks: Sequence[Webhook]) -> list[str]:
    """Store raw webhooks, unmapped (inside the writer's transaction); their ``wh_`` ids."""
    webhooks_before, _ = conn.execute(_HIGH_WATER).fetchone()
    ids = range(webhooks_before + 1, webhooks_before + 1 + len(webhooks))
    _insert_webhooks(conn, ids, webhooks)
    _insert(conn, _UNMAPPED, 1, list(ids))
    return [webhook_ref(row_id) for row_id in ids]


def record_group(conn: sqlite3.Connection, judged: Sequence[Judged]) -> list[EnqueueReceipt]:
    """Write the mapping stage's verdicts for stored webhooks and mark them mapped; one receipt
    per verdict, in order (zeros for a webhook that was not unmapped any more)."""
    ids = [one.taken.row_id for one in judged]
    live = {row for (row,) in conn.execute(_MAPPED, (orjson.dumps(ids),))}
    kept = [one for one in judged if one.taken.row_id in live]
    portals: list[object] = [value for move in portal_moves(kept) for value in move]
    if portals:
        _insert(conn, _PORTALS, 2, portals)
    _insert_refs(conn, [one.taken.row_id for one in kept], [one.refs for one in kept])
    items: list[Item] = [(one.taken.webhook, one.messages, one.dead) for one in kept]
    (messages_before,) = conn.execute(_MESSAGES_HIGH_WATER).fetchone()
    receipts = iter(
        _store_messages(conn, items, [one.taken.row_id for one in kept], messages_before)
    )
    return [
        next(receipts) if one.taken.row_id in live else receipt(one.taken.row_id, 0)
        for one in judged
    ]


def enqueue_group(conn: sqlite3.Connection, items: Sequence[Item]) -> list[EnqueueReceipt]:
    """Store ``items`` (inside the writer's transaction); one receipt per item, in order."""
    webhooks_before, messages_before = conn.execute(_HIGH_WATER).fetchone()
    ids = range(webhooks_before + 1, webhooks_before + 1 + len(items))
    _insert_webhooks(conn, ids, [webhook for webhook, _, _ in items])
    _insert_refs(conn, list(ids), [webhook.refs for webhook, _, _ in items])
    return _store_messages(conn, items, ids, messages_before)


def _insert_webhooks(
    conn: sqlite3.Connection, ids: Sequence[int], webhooks: Sequence[Webhook]
) -> None:
    hooks: list[object] = []
    for row_id, webhook in zip(ids, webhooks, strict=True):
        hooks += (row_id, webhook.code, webhook.portal_id, webhook.received_at, webhook.raw_body)
    _insert(conn, _WEBHOOKS, 5, hooks)


def _insert_refs(
    conn: sqlite3.Connection, ids: Sequence[int], refs: Sequence[tuple[str, ...] | None]
) -> None:
    """The event search's refs of each webhook: the mapper's (or caller's) parse, else the
    database's own reading of the body."""
    rows: list[object] = []
    for row_id, known in zip(ids, refs, strict=True):
        if known is None:
            conn.execute(_REFS_FROM_BODY, (row_id,))
            continue
        for ref in known:
            rows += (ref, row_id)
    if rows:
        _insert(conn, _REFS, 2, rows)


def _store_messages(
    conn: sqlite3.Connection, items: Sequence[Item], ids: Sequence[int], messages_before: int
) -> list[EnqueueReceipt]:
    """Dead letters and messages of webhooks whose rows exist (ids in ``ids``)."""
    dead: list[object] = []
    for row_id, (webhook, _, reason) in zip(ids, items, strict=True):
        if reason is not None:
            dead += (row_id, reason.reason, reason.detail, webhook.received_at)
    if dead:
        _insert(conn, _DEAD, 4, dead)
    firsts, others = _occurrences(items)
    stored = [0] * len(items)
    superseded = [0] * len(items)
    inserted, refused = _insert_messages(conn, items, ids, firsts, messages_before)
    for index, _ in inserted:
        stored[index] += 1
    # Per messageId, a refused first occurrence comes before the others: arrival order.
    for index, message in refused + others:
        superseded[index] += _supersede(conn, ids[index], message, items[index][0].received_at)
    return [
        receipt(row_id, len(item[1]), stored[index], superseded[index])
        for index, (row_id, item) in enumerate(zip(ids, items, strict=True))
    ]


Occurrence = tuple[int, OutgoingMessage]  # (index of the item in the group, the message)


def _occurrences(items: Sequence[Item]) -> tuple[list[Occurrence], list[Occurrence]]:
    """The first occurrence of each messageId in the group, and all the others, in order."""
    seen: set[str] = set()
    firsts: list[Occurrence] = []
    others: list[Occurrence] = []
    for index, (_, messages, _) in enumerate(items):
        for message in messages:
            if message.message_id in seen:
                others.append((index, message))
            else:
                seen.add(message.message_id)
                firsts.append((index, message))
    return firsts, others


def _insert_messages(
    conn: sqlite3.Connection,
    items: Sequence[Item],
    ids: Sequence[int],
    firsts: list[Occurrence],
    messages_before: int,
) -> tuple[list[Occurrence], list[Occurrence]]:
    """Insert the messages and their bodies: (inserted, refused as already stored).

    Every occurrence is offered to the INSERT, in arrival order, as one by one: only a first
    occurrence can be new, and a refused one uses up an AUTOINCREMENT number just as it did
    one by one, so the message ids are the same. Bodies go for the first occurrences only
    (the one inserted). Usually every first occurrence is new, which the row count alone
    tells; otherwise one query names the messageIds this group inserted (ids above the
    high-water mark).
    """
    if not firsts:
        return [], []
    rows: list[object] = []
    for row_id, (webhook, messages, _) in zip(ids, items, strict=True):
        at = webhook.received_at
        for message in messages:
            rows += message_row(row_id, message, at)
    bodies: list[object] = []
    for _, message in firsts:
        bodies += (message.message_id, message.payload)
    count = _insert(conn, _MESSAGES, 7, rows)
    _insert(conn, _PAYLOADS, 2, bodies, messages_before)
    if count == len(firsts):
        return firsts, []
    new = {message_id for (message_id,) in conn.execute(_INSERTED, (messages_before,))}
    inserted = [o for o in firsts if o[1].message_id in new]
    refused = [o for o in firsts if o[1].message_id not in new]
    return inserted, refused


def _supersede(conn: sqlite3.Connection, webhook: int, message: OutgoingMessage, at: float) -> int:
    """Replace the stored, still pending, lower-ranked message of the same messageId; 0 if none.

    Why in the store and in the writer's transaction: the claim that would send the held
    version runs on the same single writer, so "still pending" cannot change between the check
    and the replacement, and a crash loses neither version (both commits are durable).
    ``enqueued_at`` is kept: a message's age counts from its first arrival.
    """
    replaced = conn.execute(
        _SUPERSEDE,
        (
            webhook,
            message.destination,
            message.user_id,
            message.rank,
            at + message.hold_secs,
            message.message_id,
            message.rank,
        ),
    ).fetchone()
    if replaced is None:
        return 0
    conn.execute(_REPLACE_PAYLOAD, (message.payload, replaced[0]))
    return 1


def _insert(
    conn: sqlite3.Connection, sql: str, columns: int, values: list[object], *after: object
) -> int:
    """Run ``sql`` over ``values`` (``columns`` per row) in statements of at most MAX_ROWS rows,
    each padded with NULL rows to a power of two; the rows inserted. ``after``: parameters
    that follow the rows."""
    total = len(values) // columns
    changed = 0
    for start in range(0, total, MAX_ROWS):
        count = min(MAX_ROWS, total - start)
        size = _padded(count)
        chunk = values[start * columns : (start + count) * columns]
        chunk += [None] * ((size - count) * columns)
        chunk += after
        changed += conn.execute(_statement(sql, columns, size), chunk).rowcount
    return changed


def _padded(count: int) -> int:
    return 1 << (count - 1).bit_length()


@functools.cache
def _statement(sql: str, columns: int, rows: int) -> str:
    row = "(" + ",".join("?" * columns) + ")"
    return sql.format(rows=",".join([row] * rows))
