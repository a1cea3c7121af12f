"""The SQL of the SQLite store: plain functions over a connection, run in a worker thread.

Writes run inside a transaction the writer thread opened (see :mod:`bridge.store.sqlite.writer`);
reads run on the reader's connection. Sets of ids are passed as one JSON array parameter
(``json_each``), so a statement handles any number of rows in one round trip and stays one
cached prepared statement.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from bridge.messages import OutgoingMessage
from bridge.store import (
    ClaimedMessage,
    DeadLetter,
    DeadLetterDetail,
    DeadLetterFilter,
    DeadReason,
    EventDetail,
    EventMessage,
    EventQuery,
    EventRecord,
    StoreStats,
    UnmappedWebhook,
    Webhook,
)
from bridge.store.rows import (
    EVENT_MESSAGE_COLUMNS,
    LETTER_COLUMNS,
    LETTER_FROM,
    PORTAL,
    PORTAL_JOIN,
    dead_letter_of,
    event_message,
    event_records,
    json_string,
    webhook_row,
)

MAX_ERROR_CHARS = 4000

_INSERT_MESSAGE = (
    "INSERT INTO messages (webhook_id, message_id, destination, user_id, state,"
    " attempts, due_at, enqueued_at, rank) VALUES (?,?,?,?,'pending',0,?,?,?)"
    " ON CONFLICT (message_id) DO NOTHING RETURNING id"
)
_INSERT_PAYLOAD = "INSERT INTO message_payloads (id, payload) VALUES (?,?)"
_INSERT_DEAD = (
    "INSERT INTO dead_letters (webhook_id, message_row, reason, detail, attempts, created_at)"
    " VALUES (?,?,?,?,?,?)"
)
#: Sets of ids travel as one JSON array parameter: "id IN (SELECT value FROM json_each(?))".


def _ids(ids: Iterable[int]) -> bytes:
    return orjson.dumps([int(i) for i in ids])


def _error(text: str) -> str:
    return text[:MAX_ERROR_CHARS]


# ---- writes (inside the writer's transaction) ----------------------------------------------


def message_row(webhook: int, message: OutgoingMessage, at: float) -> tuple[object, ...]:
    """A ``messages`` row's values in insert order: due after its hold, enqueued at ``at``."""
    return (
        webhook,
        message.message_id,
        message.destination,
        message.user_id,
        at + message.hold_secs,
        at,
        message.rank,
    )


def _insert_message(
    conn: sqlite3.Connection, webhook: int, message: OutgoingMessage, at: float
) -> int:
    """Store one message and its body, due after its hold; 0 when its messageId is stored."""
    inserted = conn.execute(_INSERT_MESSAGE, message_row(webhook, message, at)).fetchone()
    if inserted is None:
        return 0
    conn.execute(_INSERT_PAYLOAD, (inserted[0], message.payload))
    return 1


_CLAIM = (
    "UPDATE messages SET state = 'inflight', due_at = ? WHERE id IN"
    " (SELECT id FROM messages WHERE state IN ('pending', 'inflight') AND due_at <= ?"
    " ORDER BY due_at, id LIMIT ?)"
    " RETURNING id, message_id, destination, user_id, attempts, enqueued_at"
)
_CLAIM_EXCLUDING = (
    "UPDATE messages SET state = 'inflight', due_at = ? WHERE id IN"
    " (SELECT id FROM messages WHERE state IN ('pending', 'inflight') AND due_at <= ?"
    " AND destination NOT IN (SELECT value FROM json_each(?)) ORDER BY due_at, id LIMIT ?)"
    " RETURNING id, message_id, destination, user_id, attempts, enqueued_at"
)


_CLAIM_ONLY = (
    "UPDATE messages SET state = 'inflight', due_at = ? WHERE id IN"
    " (SELECT id FROM messages WHERE state IN ('pending', 'inflight') AND due_at <= ?"
    " AND destination IN (SELECT value FROM json_each(?)) ORDER BY due_at, id LIMIT ?)"
    " RETURNING id, message_id, destination, user_id, attempts, enqueued_at"
)


def _names(names: Sequence[str]) -> bytes:
    return orjson.dumps(list(names))


def claim(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    lease_secs: float,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[ClaimedMessage]:
    """The ``limit`` earliest-due open rows (pending and due, or in flight past their lease),
    leaving the destinations in ``exclude`` (and, with ``only``, those not in it) alone. With
    an exclusion the due-time index is still used, but rows of excluded destinations are
    stepped over (dry-run is rare; see docs/reliability.md)."""
    params: tuple[object, ...]
    if only is not None:
        names = [name for name in only if name not in exclude]
        if not names:
            return []
        sql, params = _CLAIM_ONLY, (now + lease_secs, now, _names(names), limit)
    elif exclude:
        sql, params = _CLAIM_EXCLUDING, (now + lease_secs, now, _names(exclude), limit)
    else:
        sql, params = _CLAIM, (now + lease_secs, now, limit)
    rows = conn.execute(sql, params).fetchall()
    return _with_bodies(conn, rows)


def _with_bodies(conn: sqlite3.Connection, rows: list[Any]) -> list[ClaimedMessage]:
    if not rows:
        return []
    rows.sort()
    bodies = dict(
        conn.execute(
            "SELECT id, payload FROM message_payloads WHERE id IN (SELECT value FROM json_each(?))",
            (_ids(row[0] for row in rows),),
        ).fetchall()
    )
    return [
        ClaimedMessage(row_id, message_id, destination, user, bodies[row_id], attempts, enqueued)
        for row_id, message_id, destination, user, attempts, enqueued in rows
    ]


def peek(
    conn: sqlite3.Connection, destinations: Sequence[str], after: int, limit: int
) -> list[ClaimedMessage]:
    """Open messages of ``destinations`` after id ``after``, unchanged (a read)."""
    conn.execute("BEGIN")
    try:
        rows = conn.execute(
            "SELECT id, message_id, destination, user_id, attempts, enqueued_at FROM messages"
            " WHERE id > ? AND state IN ('pending', 'inflight')"
            " AND destination IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?",
            (after, _names(destinations), limit),
        ).fetchall()
        return _with_bodies(conn, rows)
    finally:
        conn.execute("COMMIT")


def count_open(conn: sqlite3.Connection, destinations: Sequence[str]) -> int:
    (count,) = conn.execute(
        "SELECT count(*) FROM messages WHERE state IN ('pending', 'inflight')"
        " AND destination IN (SELECT value FROM json_each(?))",
        (_names(destinations),),
    ).fetchone()
    return int(count)


def recover(conn: sqlite3.Connection, now: float) -> int:
    """Make every claim claimable now (the claims of a process that is gone)."""
    return conn.execute(
        "UPDATE messages SET due_at = ? WHERE state = 'inflight' AND due_at > ?", (now, now)
    ).rowcount


def ack(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> None:
    changed = conn.execute(
        "UPDATE messages SET state = 'delivered', delivered_at = ?, due_at = NULL"
        " WHERE id IN (SELECT value FROM json_each(?)) AND state IN ('pending', 'inflight')",
        (now, _ids(ids)),
    ).rowcount
    if changed:
        _move(conn, changed, "open", "delivered", "delivered_total")
        conn.execute(
            "UPDATE meta SET value = max(coalesce(value, ?), ?) WHERE key = 'last_delivered_at'",
            (now, now),
        )


def _move(conn: sqlite3.Connection, count: int, source: str, *targets: str) -> None:
    """Counters for ``count`` messages that changed class: one statement, not one per row
    (the schema's comment on ``counters`` says why there is no trigger for updates)."""
    conn.execute(
        "UPDATE counters SET n = n + CASE WHEN name = ? THEN -? ELSE ? END"
        " WHERE name IN (SELECT value FROM json_each(?))",
        (source, count, count, json.dumps([source, *targets])),
    )


def retry_later(conn: sqlite3.Connection, ids: Sequence[int], due_at: float, error: str) -> None:
    conn.execute(
        "UPDATE messages SET state = 'pending', due_at = ?, attempts = attempts + 1,"
        " last_error = ? WHERE id IN (SELECT value FROM json_each(?)) AND state = 'inflight'",
        (due_at, _error(error), _ids(ids)),
    )


def bury(
    conn: sqlite3.Connection, ids: Sequence[int], dead: DeadReason, error: str, now: float
) -> None:
    buried = conn.execute(
        "UPDATE messages SET state = 'dead', due_at = NULL, attempts = attempts + 1,"
        " last_error = ? WHERE id IN (SELECT value FROM json_each(?))"
        " AND state IN ('pending', 'inflight') RETURNING id, webhook_id, attempts",
        (_error(error), _ids(ids)),
    ).fetchall()
    if buried:
        _move(conn, len(buried), "open", "dead")
    conn.executemany(
        _INSERT_DEAD,
        [(webhook, row, dead.reason, dead.detail, tries, now) for row, webhook, tries in buried],
    )


# ---- the mapping stage ---------------------------------------------------------------------

_UNMAPPED = (
    "SELECT u.webhook_id, u.tries, u.last_error, w.code, w.portal_id, w.received_at, w.raw_body"
    " FROM unmapped u JOIN webhooks w ON w.id = u.webhook_id"
    " WHERE u.webhook_id NOT IN (SELECT value FROM json_each(?))"
    " ORDER BY u.webhook_id LIMIT ?"
)


def unmapped(
    conn: sqlite3.Connection, limit: int, leased: Sequence[int] = ()
) -> list[UnmappedWebhook]:
    """The next unmapped webhooks in arrival order but for ``leased`` (taken and not recorded
    yet), each as it will be once this take is counted. A webhook tried before comes alone
    (poison isolation); the batch stops before the next such one."""
    taken: list[UnmappedWebhook] = []
    rows = conn.execute(_UNMAPPED, (_ids(leased), limit))
    for row_id, tries, error, code, portal, received_at, raw in rows:
        if tries > 0 and taken:
            break
        webhook = Webhook(code, portal, received_at, bytes(raw))
        taken.append(UnmappedWebhook(row_id, webhook, tries + 1, 0, error))
        if tries > 0:
            break
    return taken


def count_tries(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    conn.execute(
        "UPDATE unmapped SET tries = tries + 1"
        " WHERE webhook_id IN (SELECT value FROM json_each(?))",
        (_ids(ids),),
    )


def mapping_failed(conn: sqlite3.Connection, row_id: int, error: str) -> None:
    conn.execute("UPDATE unmapped SET last_error = ? WHERE webhook_id = ?", (_error(error), row_id))


def probe(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'writable_probe'")


def delete_letters(conn: sqlite3.Connection, letters: Sequence[int]) -> int:
    """Delete dead letters, then their dead messages and webhooks nothing refers to any more."""
    gone = conn.execute(
        "DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(?))"
        " RETURNING webhook_id, message_row",
        (_ids(letters),),
    ).fetchall()
    conn.execute(
        "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) AND state = 'dead'"
        " AND NOT EXISTS"
        " (SELECT 1 FROM dead_letters d WHERE d.message_row = messages.id)",
        (_ids(row for _, row in gone if row is not None),),
    )
    delete_orphan_webhooks(conn, {webhook for webhook, _ in gone})
    return len(gone)


def delete_orphan_webhooks(conn: sqlite3.Connection, webhooks: Iterable[int]) -> None:
    conn.execute(
        "DELETE FROM webhooks WHERE id IN (SELECT value FROM json_each(?))"
        " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = webhooks.id)"
        " AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.webhook_id = webhooks.id)",
        (_ids(webhooks),),
    )


def purge_dead(conn: sqlite3.Connection, older_than: float, chunk: int) -> int:
    """Delete up to ``chunk`` dead letters created before ``older_than``; how many went."""
    letters = conn.execute(
        "SELECT id FROM dead_letters WHERE created_at < ? ORDER BY created_at LIMIT ?",
        (older_than, chunk),
    ).fetchall()
    return delete_letters(conn, [letter for (letter,) in letters])


def prune_delivered(conn: sqlite3.Connection, before: float, chunk: int) -> int:
    """Delete up to ``chunk`` messages delivered before ``before``; how many went."""
    webhooks = conn.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE state = 'delivered'"
        " AND delivered_at < ? LIMIT ?) RETURNING webhook_id",
        (before, chunk),
    ).fetchall()
    delete_orphan_webhooks(conn, {webhook for (webhook,) in webhooks})
    return len(webhooks)


def replay_chunk(
    conn: sqlite3.Connection,
    outcomes: Sequence[tuple[int, int, Sequence[OutgoingMessage] | DeadReason]],
    now: float,
) -> tuple[int, int, int]:
    """Apply remapped dead letters ``(letter id, webhook row, result)``: counts as ReplayOutcome."""
    replayed = still_dead = made = 0
    for letter, webhook, result in outcomes:
        if conn.execute("SELECT 1 FROM dead_letters WHERE id = ?", (letter,)).fetchone() is None:
            continue  # replayed meanwhile (another CLI run, or revived with a sibling letter)
        if isinstance(result, DeadReason):
            conn.execute(
                "UPDATE dead_letters SET reason = ?, detail = ? WHERE id = ?",
                (result.reason, result.detail, letter),
            )
            still_dead += 1
            continue
        for message in result:
            made += _revive_or_insert(conn, webhook, message, now)
        delete_letters(conn, [letter])  # may already be gone: reviving its message removed it
        replayed += 1
    return replayed, still_dead, made


def _revive_or_insert(
    conn: sqlite3.Connection, webhook: int, message: OutgoingMessage, now: float
) -> int:
    """Insert a new message, or revive a dead one (attempts kept); others are left alone."""
    found = conn.execute(
        "SELECT id, state FROM messages WHERE message_id = ?", (message.message_id,)
    ).fetchone()
    if found is None:
        return _insert_message(conn, webhook, message, now)
    row, state = found
    if state != "dead":
        return 0  # delivered (never send twice) or already on its way
    conn.execute("DELETE FROM dead_letters WHERE message_row = ?", (row,))
    conn.execute(
        "UPDATE messages SET state = 'pending', destination = ?, user_id = ?,"
        " due_at = ?, enqueued_at = ?, rank = ? WHERE id = ?",
        (message.destination, message.user_id, now, now, message.rank, row),
    )
    conn.execute("UPDATE message_payloads SET payload = ? WHERE id = ?", (message.payload, row))
    _move(conn, 1, "dead", "open")
    return 1


# ---- reads (reader connection) ---------------------------------------------------------------


def dead_letters(conn: sqlite3.Connection, which: DeadLetterFilter) -> list[DeadLetter]:
    where: list[str] = ["1"]
    params: list[str | bytes] = []
    if which.code is not None:
        where.append("w.code = ?")
        params.append(which.code)
    if which.reason is not None:
        where.append("d.reason = ?")
        params.append(which.reason)
    if which.ids:
        where.append("d.id IN (SELECT value FROM json_each(?))")
        params.append(_ids(which.ids))
    if which.user_id is not None:
        where.append(
            "(m.user_id = ? OR (d.message_row IS NULL AND instr(CAST(w.raw_body AS TEXT), ?) > 0))"
        )
        params += [which.user_id, json_string(which.user_id)]
    limit = -1 if which.limit is None else which.limit
    # Built only from the constant fragments above; every value is a bound parameter.
    sql = f"SELECT {LETTER_COLUMNS} {LETTER_FROM} WHERE {' AND '.join(where)}"
    rows = conn.execute(f"{sql} ORDER BY d.id LIMIT ?", (*params, limit)).fetchall()
    return [dead_letter_of(row) for row in rows]


def dead_letter(conn: sqlite3.Connection, letter_id: int) -> DeadLetterDetail | None:
    row = conn.execute(
        f"SELECT {LETTER_COLUMNS}, w.raw_body, p.payload, m.last_error {LETTER_FROM}"
        " WHERE d.id = ?",
        (letter_id,),
    ).fetchone()
    if row is None:
        return None
    return DeadLetterDetail(dead_letter_of(row[:9]), row[9], row[10], row[11])


def webhooks_of_letters(
    conn: sqlite3.Connection, letters: Sequence[int]
) -> list[tuple[int, int, Webhook]]:
    rows = conn.execute(
        "SELECT d.id, w.id, w.code, w.portal_id, w.received_at, w.raw_body FROM dead_letters d"
        " JOIN webhooks w ON w.id = d.webhook_id"
        " WHERE d.id IN (SELECT value FROM json_each(?)) ORDER BY d.id",
        (_ids(letters),),
    ).fetchall()
    return [(letter, webhook, Webhook(*rest)) for letter, webhook, *rest in rows]


def next_due_at(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT min(due_at) FROM messages WHERE state IN ('pending', 'inflight')"
    ).fetchone()
    return None if row[0] is None else float(row[0])


def stats(conn: sqlite3.Connection, since: float, storage_bytes: int) -> StoreStats:
    """One read transaction, so the numbers agree with each other. All O(log n) but
    ``delivered_since``, which counts the index range since ``since``."""
    conn.execute("BEGIN")
    try:
        counts = dict(conn.execute("SELECT name, n FROM counters").fetchall())
        (oldest,) = conn.execute(
            "SELECT min(enqueued_at) FROM messages WHERE state IN ('pending', 'inflight')"
        ).fetchone()
        (recent,) = conn.execute(
            "SELECT count(*) FROM messages WHERE state = 'delivered' AND delivered_at >= ?",
            (since,),
        ).fetchone()
        (in_flight,) = conn.execute(
            "SELECT count(*) FROM messages WHERE state = 'inflight'"
        ).fetchone()
        dead = dict(conn.execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason"))
        (last,) = conn.execute("SELECT value FROM meta WHERE key = 'last_delivered_at'").fetchone()
        unmapped, oldest_unmapped = conn.execute(
            "SELECT count(*), (SELECT w.received_at FROM unmapped u JOIN webhooks w"
            " ON w.id = u.webhook_id ORDER BY u.webhook_id LIMIT 1) FROM unmapped"
        ).fetchone()
    finally:
        conn.execute("COMMIT")
    return StoreStats(
        pending=counts["open"] - in_flight,
        in_flight=in_flight,
        oldest_pending_at=oldest,
        delivered_total=counts["delivered_total"],
        delivered_since=recent,
        dead_letters=dead,
        storage_bytes=storage_bytes,
        last_delivered_at=last,
        unmapped=unmapped,
        oldest_unmapped_at=oldest_unmapped,
    )


# ---- event search (reader connection; read-only) ---------------------------------------------

#: Each field of an EventQuery as a condition on ``webhooks w``. The key fields are ``IN`` over a
#: small indexed set, so SQLite starts from them; the state conditions start from the partial
#: indexes of the open rows or from ``dead_letters`` (few rows), except ``delivered`` (most rows),
#: which is checked per webhook while the receipt-time index is walked newest first. The open
#: states repeat ``state IN ('pending', 'inflight')`` verbatim so the partial indexes apply.
_STATE_WHERE = {
    "pending": "w.id IN (SELECT webhook_id FROM messages WHERE state IN ('pending', 'inflight')"
    " AND state = 'pending' AND (attempts > 0 OR due_at <= ?))",
    "held": "w.id IN (SELECT webhook_id FROM messages WHERE state IN ('pending', 'inflight')"
    " AND state = 'pending' AND attempts = 0 AND due_at > ?)",
    "inflight": "w.id IN (SELECT webhook_id FROM messages WHERE state = 'inflight')",
    "delivered": "EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = w.id"
    " AND m.state = 'delivered')",
    "dead": "w.id IN (SELECT webhook_id FROM dead_letters)",
    "unmapped": "w.id IN (SELECT webhook_id FROM unmapped)",
}


#: A user's webhooks: those with a message of the user, and those with no message of their own
#: (superseded by a later webhook, a redelivery, not mapped, dead-lettered whole) whose body
#: names the user. The second part reads bodies, but only of message-less webhooks, so its cost
#: follows their number, not the store's; PostgreSQL's USER_WHERE says the same.
USER_WHERE = (
    "(w.id IN (SELECT webhook_id FROM messages WHERE user_id = ?)"
    " OR (NOT EXISTS (SELECT 1 FROM messages m0 WHERE m0.webhook_id = w.id)"
    " AND instr(CAST(w.raw_body AS TEXT), ?) > 0))"
)


def find_events(conn: sqlite3.Connection, query: EventQuery, now: float) -> list[EventRecord]:
    where: list[str] = []
    params: list[object] = []
    for value, condition in (
        (query.message_id, "w.id IN (SELECT webhook_id FROM messages WHERE message_id = ?)"),
        (query.user_id, USER_WHERE),
        (query.ref, "w.id IN (SELECT webhook_id FROM webhook_refs WHERE ref = ?)"),
        (query.code, "w.code = ?"),
        (query.since, "w.received_at >= ?"),
        (query.until, "w.received_at < ?"),
    ):
        if value is not None:
            where.append(condition)
            params.append(value)
            if condition is USER_WHERE:  # its second parameter: the id as a JSON string
                params.append(json_string(str(value)))
    if query.state is not None:
        if query.state not in _STATE_WHERE:
            raise ValueError(f"unknown state {query.state!r}")
        where.append(_STATE_WHERE[query.state])
        if query.state in ("pending", "held"):
            params.append(now)
    # Built only from the constant fragments above; every value is a bound parameter.
    sql = (
        f"SELECT w.id, w.code, {PORTAL}, w.received_at FROM webhooks w {PORTAL_JOIN}"  # noqa: S608
        f" WHERE {' AND '.join(where) or '1'} ORDER BY w.received_at DESC, w.id DESC LIMIT ?"
    )
    conn.execute("BEGIN")
    try:
        webhooks = conn.execute(sql, (*params, max(0, query.limit))).fetchall()
        return _records(conn, webhooks, now)
    finally:
        conn.execute("COMMIT")


def event(conn: sqlite3.Connection, ref: str, now: float) -> EventDetail | None:
    row_id = webhook_row(ref)
    if row_id is None:
        return None
    conn.execute("BEGIN")
    try:
        found = conn.execute(
            f"SELECT w.id, w.code, {PORTAL}, w.received_at, w.raw_body FROM webhooks w"  # noqa: S608
            f" {PORTAL_JOIN} WHERE w.id = ?",
            (row_id,),
        ).fetchone()
        if found is None:
            return None
        (record,) = _records(conn, [found[:4]], now)
        return EventDetail(record, found[4])
    finally:
        conn.execute("COMMIT")


def _records(
    conn: sqlite3.Connection, webhooks: Sequence[tuple[int, str, str | None, float]], now: float
) -> list[EventRecord]:
    """The webhooks' messages and whole-webhook dead letters, in two statements."""
    ids = _ids(row[0] for row in webhooks)
    messages: dict[int, list[EventMessage]] = {}
    # Constant columns; the ids are one bound parameter.
    for row in conn.execute(
        f"SELECT {EVENT_MESSAGE_COLUMNS} FROM messages m"  # noqa: S608
        " LEFT JOIN message_payloads p ON p.id = m.id"
        " WHERE m.webhook_id IN (SELECT value FROM json_each(?)) ORDER BY m.id",
        (ids,),
    ):
        webhook, message = event_message(row, now)
        messages.setdefault(webhook, []).append(message)
    dead = {
        webhook: DeadReason(reason, detail)
        for webhook, reason, detail in conn.execute(
            "SELECT webhook_id, reason, detail FROM dead_letters WHERE message_row IS NULL"
            " AND webhook_id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (ids,),
        )
    }
    unmapped = dict(
        conn.execute(
            "SELECT webhook_id, tries FROM unmapped"
            " WHERE webhook_id IN (SELECT value FROM json_each(?))",
            (ids,),
        ).fetchall()
    )
    return event_records(webhooks, messages, dead, unmapped)
