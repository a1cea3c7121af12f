"""The SQL of the PostgreSQL store: plain async functions over one asyncpg connection.

Sets travel as arrays (``unnest($1::bigint[], ...)``), so a statement handles any number of rows
in one round trip. Outcome-changing statements (``ack``, ``retry_later``, ``bury``) take
``(id, lease)`` pairs and touch only rows still in flight under that lease: the fencing that keeps
a replica whose lease expired from overwriting a newer claim's outcome.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.messages import OutgoingMessage
from bridge.store import (
    ClaimedMessage,
    DeadLetter,
    DeadLetterDetail,
    DeadLetterFilter,
    DeadReason,
    EnqueueReceipt,
    EventDetail,
    EventMessage,
    EventQuery,
    EventRecord,
    Judged,
    StoreStats,
    UnmappedWebhook,
    Webhook,
)
from bridge.store.postgres.schema import SHARDS
from bridge.store.refs import MAX_REF_BYTES
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
    portal_moves,
    receipt,
    webhook_ref,
    webhook_row,
)

MAX_ERROR_CHARS = 4000
Conn = Any  # an asyncpg connection (asyncpg ships no types)


def _text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Human text (errors, details) as PostgreSQL text: bounded, and no NUL (text cannot hold
    one; a NUL inside an error message from a peer must not make the write fail)."""
    return text[:limit].replace("\x00", "\ufffd")


def _clean(text: str | None) -> str | None:
    """An identifier (user, portal, code, messageId) as PostgreSQL text, which cannot hold NUL.

    A NUL inside an id is hostile input that SQLite would store; refusing it here would answer
    503 for ever, so it becomes U+FFFD in these informational columns. The payload and the raw
    body (bytea) keep every byte: what Segment receives is unchanged.
    """
    return None if text is None else text.replace("\x00", "\ufffd")


def _shard() -> int:
    """The ``counts`` row a statement adds to: random, so concurrent writers rarely meet."""
    return random.randrange(SHARDS)  # noqa: S311 - spreads counter writes, not a secret


def _count(status: str) -> int:
    """Rows touched, from a command tag such as ``UPDATE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


# ---- enqueue (group commit: many webhooks in one transaction) ------------------------------


@dataclass(frozen=True, slots=True)
class Intake:
    """One ``enqueue`` call waiting for the group commit."""

    webhook: Webhook
    messages: tuple[OutgoingMessage, ...]
    dead: DeadReason | None


#: Messages into ``messages`` (and their bodies), from a CTE ``src`` the statement defines
#: (with each row's ``id`` drawn in arrival order). Rows are inserted, or locked and superseded,
#: in messageId order, the same in every transaction: two batches holding the same messageIds
#: (Synap's concurrent redeliveries) then wait for each other instead of deadlocking, as they did
#: in arrival order. The ids keep the arrival order claims follow.
_UPSERT = """
ins AS (
    INSERT INTO messages AS m
        (id, webhook_id, message_id, destination, user_id, state, due_at, enqueued_at, rank)
    SELECT id, webhook_id, message_id, destination, user_id, 'pending', due_at, enqueued_at,
           rank
    FROM src ORDER BY message_id
    ON CONFLICT (message_id) DO UPDATE SET
        webhook_id = EXCLUDED.webhook_id, destination = EXCLUDED.destination,
        user_id = EXCLUDED.user_id, rank = EXCLUDED.rank,
        due_at = least(m.due_at, EXCLUDED.due_at)
    WHERE m.state = 'pending' AND m.rank < EXCLUDED.rank
    RETURNING m.id, m.message_id, (m.xmax = 0) AS inserted
), bodies AS (
    INSERT INTO message_payloads (id, payload)
    SELECT ins.id, src.payload FROM ins JOIN src USING (message_id)
    ORDER BY ins.id
    ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload
), counted AS (
    UPDATE counts SET open = open + (SELECT count(*) FROM ins WHERE inserted)
    WHERE shard = $SHARD AND EXISTS (SELECT 1 FROM ins WHERE inserted)
)
SELECT (SELECT array_agg(message_id) FILTER (WHERE inserted) FROM ins),
       (SELECT array_agg(message_id) FILTER (WHERE NOT inserted) FROM ins)"""

#: The whole batch in ONE statement (one round trip, atomic without BEGIN/COMMIT): webhook ids
#: drawn in order, the webhooks, their refs for the event search, the dead letters, the messages
#: of the first round. The refs come from the receiver's own parse of each body (``$16``/``$17``,
#: :mod:`bridge.store.refs`); a webhook without them (``$18``) has them worked out from its raw
#: body by ``bridge_webhook_refs`` as the v2 trigger did for all (schema v3 explains why); either
#: way without a ref too long to index (:data:`bridge.store.refs.MAX_REF_BYTES` says why).
_BATCH = (
    """
WITH w AS MATERIALIZED (
    SELECT nextval('webhooks_id_seq') AS id, u.*
    FROM unnest($1::text[], $2::text[], $3::float8[], $4::bytea[]) WITH ORDINALITY
        AS u(code, portal_id, received_at, raw_body, ord)
), hooks AS (
    INSERT INTO webhooks (id, code, portal_id, received_at, raw_body)
    SELECT id, code, portal_id, received_at, raw_body FROM w
), refs AS (
    INSERT INTO webhook_refs (ref, webhook_id)
    SELECT r.ref, w.id FROM unnest($16::bigint[], $17::text[]) AS r(ord, ref) JOIN w USING (ord)
    UNION ALL
    SELECT f.ref, w.id FROM w, bridge_webhook_refs(w.raw_body) AS f(ref)
    WHERE w.ord = ANY($18::bigint[]) AND octet_length(f.ref) <= $MAX_REF_BYTES
), dead AS (
    INSERT INTO dead_letters (webhook_id, reason, detail, attempts, created_at)
    SELECT w.id, d.reason, d.detail, 0, w.received_at
    FROM unnest($5::bigint[], $6::text[], $7::text[]) AS d(ord, reason, detail)
    JOIN w USING (ord)
), src AS MATERIALIZED (
    SELECT nextval('messages_id_seq') AS id, arrived.* FROM (
        SELECT w.id AS webhook_id, s.message_id, s.destination, s.user_id,
               w.received_at + s.hold AS due_at, w.received_at AS enqueued_at, s.rank,
               s.payload, s.n
        FROM unnest($8::bigint[], $9::text[], $10::text[], $11::text[], $12::float8[],
                    $13::integer[], $14::bytea[]) WITH ORDINALITY
            AS s(ord, message_id, destination, user_id, hold, rank, payload, n)
        JOIN w USING (ord)
        ORDER BY s.n
    ) AS arrived
), """  # noqa: S608 - constant SQL fragments only; every value is a bound parameter
    + _UPSERT.replace("$SHARD", "$15")
    + """,
       (SELECT array_agg(id ORDER BY ord) FROM w)
"""
).replace("$MAX_REF_BYTES", str(MAX_REF_BYTES))

#: A later round (a messageId that occurs again in the batch), with the webhook ids known.
_ROUND = (
    """
WITH src AS MATERIALIZED (
    SELECT nextval('messages_id_seq') AS id, arrived.* FROM (
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::float8[],
                             $6::float8[], $7::integer[], $8::bytea[]) WITH ORDINALITY
            AS s(webhook_id, message_id, destination, user_id, due_at, enqueued_at, rank,
                 payload, n)
        ORDER BY n
    ) AS arrived
), """  # noqa: S608 - constant SQL fragments only; every value is a bound parameter
    + _UPSERT.replace("$SHARD", "$9")
)


async def enqueue(conn: Conn, batch: Sequence[Intake]) -> list[EnqueueReceipt]:
    """Store every webhook of ``batch`` and its messages atomically.

    A messageId is stored once (``ON CONFLICT``); a pending one with a lower rank takes the new
    version in place (superseded). A messageId that occurs twice in the batch is applied in
    rounds (the n-th occurrence in round n), exactly as if the calls had committed one by one:
    one INSERT cannot touch a row twice. The usual batch is one statement, so one round trip
    and no explicit transaction; more rounds share a transaction.
    """
    rounds = _rounds(batch)
    if len(rounds) <= 1:
        return await _enqueue(conn, batch, rounds)
    async with conn.transaction():
        return await _enqueue(conn, batch, rounds)


async def _enqueue(
    conn: Conn, batch: Sequence[Intake], rounds: list[list[tuple[int, OutgoingMessage]]]
) -> list[EnqueueReceipt]:
    first = rounds[0] if rounds else []
    shard = _shard()  # one per transaction, locked last: rounds add to the row they hold
    dead = [(i + 1, item.dead) for i, item in enumerate(batch) if item.dead is not None]
    stored_ids, superseded_ids, ids = await conn.fetchrow(
        _BATCH,
        [_clean(item.webhook.code) for item in batch],
        [_clean(item.webhook.portal_id) for item in batch],
        [item.webhook.received_at for item in batch],
        [item.webhook.raw_body for item in batch],
        [ordinal for ordinal, _ in dead],
        [_text(reason.reason, 200) for _, reason in dead],
        [_text(reason.detail) for _, reason in dead],
        [index + 1 for index, _ in first],
        [_clean(m.message_id) for _, m in first],
        [_clean(m.destination) for _, m in first],
        [_clean(m.user_id) for _, m in first],
        [m.hold_secs for _, m in first],
        [m.rank for _, m in first],
        [m.payload for _, m in first],
        shard,
        *_refs(batch),
    )
    stored = [0] * len(batch)
    superseded = [0] * len(batch)
    _tally(first, stored_ids, superseded_ids, stored, superseded)
    await _later_rounds(conn, batch, ids, rounds[1:], shard, stored, superseded)
    return [
        receipt(ids[i], len(item.messages), stored[i], superseded[i])
        for i, item in enumerate(batch)
    ]


async def _later_rounds(
    conn: Conn,
    batch: Sequence[Intake],
    ids: Sequence[int],
    rounds: Sequence[list[tuple[int, OutgoingMessage]]],
    shard: int,
    stored: list[int],
    superseded: list[int],
) -> None:
    """Apply ``rounds`` (messages of webhooks whose rows exist, ``ids``) one statement each,
    counting what each webhook stored and superseded: ``enqueue``'s later rounds, and every
    round of the mapping stage's ``record``."""
    for round_ in rounds:
        more_stored, more_superseded = await conn.fetchrow(
            _ROUND,
            [ids[index] for index, _ in round_],
            [_clean(m.message_id) for _, m in round_],
            [_clean(m.destination) for _, m in round_],
            [_clean(m.user_id) for _, m in round_],
            [batch[i].webhook.received_at + m.hold_secs for i, m in round_],
            [batch[i].webhook.received_at for i, _ in round_],
            [m.rank for _, m in round_],
            [m.payload for _, m in round_],
            shard,
        )
        _tally(round_, more_stored, more_superseded, stored, superseded)


def _refs(batch: Sequence[Intake]) -> tuple[list[int], list[str], list[int]]:
    """The known refs as (webhook ordinal, ref) columns, and the ordinals the database must
    work out from the raw body (``Webhook.refs`` is None)."""
    ordinals: list[int] = []
    texts: list[str] = []
    unknown: list[int] = []
    for ordinal, item in enumerate(batch, 1):
        refs = item.webhook.refs
        if refs is None:
            unknown.append(ordinal)
            continue
        ordinals.extend([ordinal] * len(refs))
        texts.extend(refs)
    return ordinals, texts, unknown


def _tally(
    round_: Sequence[tuple[int, OutgoingMessage]],
    stored_ids: Sequence[str] | None,
    superseded_ids: Sequence[str] | None,
    stored: list[int],
    superseded: list[int],
) -> None:
    """Count each returned messageId for the webhook it came with (unique within a round)."""
    owner = {_clean(message.message_id): index for index, message in round_}
    for message_id in stored_ids or ():
        stored[owner[message_id]] += 1
    for message_id in superseded_ids or ():
        superseded[owner[message_id]] += 1


def _rounds(batch: Sequence[Intake]) -> list[list[tuple[int, OutgoingMessage]]]:
    rounds: list[list[tuple[int, OutgoingMessage]]] = []
    seen: dict[str, int] = {}  # cleaned messageId -> occurrences so far
    for index, item in enumerate(batch):
        for message in item.messages:
            key = _clean(message.message_id) or ""
            n = seen.get(key, 0)
            seen[key] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append((index, message))
    return rounds


# ---- keep first, judge after -------------------------------------------------------------------

#: The receiver's statement: webhooks as received, one ``unmapped`` row each, and a wake-up for
#: every replica's mapper (delivered at COMMIT). One round trip, atomic without BEGIN.
_KEEP = """
WITH w AS MATERIALIZED (
    SELECT nextval('webhooks_id_seq') AS id, u.*
    FROM unnest($1::text[], $2::text[], $3::float8[], $4::bytea[]) WITH ORDINALITY
        AS u(code, portal_id, received_at, raw_body, ord)
), hooks AS (
    INSERT INTO webhooks (id, code, portal_id, received_at, raw_body)
    SELECT id, code, portal_id, received_at, raw_body FROM w
), waiting AS (
    INSERT INTO unmapped (webhook_id, tag) SELECT id, t.tag FROM w, (SELECT $5::text AS tag) t
)
SELECT (SELECT array_agg(id ORDER BY ord) FROM w), pg_notify('bridge_unmapped', '')
"""
UNMAPPED_CHANNEL = "bridge_unmapped"


async def keep(conn: Conn, batch: Sequence[tuple[Webhook, str]]) -> list[str]:
    """Webhooks with the mapping tag of the replica that kept them (one tag per group: every
    webhook of a group is kept by this process's configuration at the time)."""
    ids, _ = await conn.fetchrow(
        _KEEP,
        [_clean(w.code) for w, _ in batch],
        [_clean(w.portal_id) for w, _ in batch],
        [w.received_at for w, _ in batch],
        [w.raw_body for w, _ in batch],
        batch[0][1] if batch else "",
    )
    return [webhook_ref(row_id) for row_id in ids]


#: Take unmapped rows not leased by anyone (or whose lease ran out), in arrival order, counting
#: the try and leasing them; ``{tried}``: tried before (taken alone, through the partial index
#: ``unmapped_tried``) or never tried (a batch); only rows kept under this mapping configuration
#: (``$3``), or waiting longer than ``$4`` seconds. The rows to update are named by an array,
#: not joined from a CTE: the generic plan a prepared statement settles on estimated the CTE at
#: thousands of rows and hashed the whole table to join it (a call read the whole backlog), and
#: a parameter for "tried" kept it off the partial index (tests/test_postgres_plans.py).
_TAKE_TEMPLATE = """
UPDATE unmapped u SET tries = u.tries + 1, lease = u.lease + 1,
    taken_until = extract(epoch FROM clock_timestamp()) + $2
WHERE u.webhook_id = ANY(ARRAY(
    SELECT webhook_id FROM unmapped
    WHERE (taken_until IS NULL OR taken_until < extract(epoch FROM clock_timestamp()))
      AND tries {tried}
      AND (tag = $3 OR kept_at < extract(epoch FROM clock_timestamp()) - $4)
    ORDER BY webhook_id LIMIT $1 FOR UPDATE SKIP LOCKED
))
RETURNING u.webhook_id, u.tries, u.lease, u.last_error
"""
_TAKE_TRIED = _TAKE_TEMPLATE.format(tried="> 0")
_TAKE_NEW = _TAKE_TEMPLATE.format(tried="= 0")


#: How long a webhook kept under another mapping configuration waits for a replica of that
#: configuration to map it before any replica does (that one is gone, or stuck).
FOREIGN_AFTER_SECS = 30.0


async def take(conn: Conn, limit: int, lease_secs: float, tag: str) -> list[UnmappedWebhook]:
    """A webhook tried before comes alone (poison isolation); otherwise up to ``limit`` new."""
    rows = await conn.fetch(_TAKE_TRIED, 1, lease_secs, tag, FOREIGN_AFTER_SECS)
    if not rows:
        rows = await conn.fetch(_TAKE_NEW, limit, lease_secs, tag, FOREIGN_AFTER_SECS)
    if not rows:
        return []
    taken = {row[0]: row for row in rows}
    bodies = await conn.fetch(
        "SELECT id, code, portal_id, received_at, raw_body FROM webhooks"
        " WHERE id = ANY($1::bigint[]) ORDER BY id",
        list(taken),
    )
    found: list[UnmappedWebhook] = []
    for row_id, code, portal, received_at, raw in bodies:
        _, tries, lease, error = taken[row_id]
        webhook = Webhook(code, portal, received_at, raw)
        found.append(UnmappedWebhook(row_id, webhook, tries, lease, error))
    return found


#: Mark taken webhooks mapped, only where this take's lease still holds.
_MAPPED = """
DELETE FROM unmapped u USING unnest($1::bigint[], $2::bigint[]) AS t(id, lease)
WHERE u.webhook_id = t.id AND u.lease = t.lease RETURNING u.webhook_id
"""
#: The mapped webhooks' portals (from their bodies), refs and whole-webhook dead letters.
_JUDGED = (
    """
WITH portals AS (
    INSERT INTO webhook_portals (webhook_id, portal_id)
    SELECT p.id, p.portal_id FROM unnest($1::bigint[], $2::text[]) AS p(id, portal_id)
    ON CONFLICT (webhook_id) DO UPDATE SET portal_id = EXCLUDED.portal_id
), refs AS (
    INSERT INTO webhook_refs (ref, webhook_id)
    SELECT r.ref, r.id FROM unnest($3::bigint[], $4::text[]) AS r(id, ref)
    UNION ALL
    SELECT f.ref, w.id FROM webhooks w, bridge_webhook_refs(w.raw_body) AS f(ref)
    WHERE w.id = ANY($5::bigint[]) AND octet_length(f.ref) <= $MAX_REF_BYTES
    ON CONFLICT DO NOTHING
)
INSERT INTO dead_letters (webhook_id, reason, detail, attempts, created_at)
SELECT d.id, d.reason, d.detail, 0, d.at
FROM unnest($6::bigint[], $7::text[], $8::text[], $9::float8[]) AS d(id, reason, detail, at)
"""
).replace("$MAX_REF_BYTES", str(MAX_REF_BYTES))


async def record(conn: Conn, judged: Sequence[Judged]) -> list[EnqueueReceipt]:
    """The mapping stage's verdicts, in the caller's transaction: messages as ``enqueue``
    stores them (rounds for a messageId seen twice), against the webhooks already stored."""
    live = {
        row[0]
        for row in await conn.fetch(
            _MAPPED, [j.taken.row_id for j in judged], [j.taken.lease for j in judged]
        )
    }
    kept = [j for j in judged if j.taken.row_id in live]
    ref_ids: list[int] = []
    ref_texts: list[str] = []
    unknown: list[int] = []
    for j in kept:
        if j.refs is None:
            unknown.append(j.taken.row_id)
            continue
        ref_ids.extend([j.taken.row_id] * len(j.refs))
        ref_texts.extend(j.refs)
    dead = [j for j in kept if j.dead is not None]
    moves = portal_moves(kept)
    await conn.execute(
        _JUDGED,
        [row_id for row_id, _ in moves],
        [_clean(portal) for _, portal in moves],
        ref_ids,
        ref_texts,
        unknown,
        [j.taken.row_id for j in dead],
        [_text(j.dead.reason, 200) for j in dead if j.dead is not None],
        [_text(j.dead.detail) for j in dead if j.dead is not None],
        [j.taken.webhook.received_at for j in dead],
    )
    batch = [Intake(j.taken.webhook, j.messages, j.dead) for j in kept]
    ids = [j.taken.row_id for j in kept]
    stored = [0] * len(batch)
    superseded = [0] * len(batch)
    await _later_rounds(conn, batch, ids, _rounds(batch), _shard(), stored, superseded)
    receipts = {
        row_id: receipt(row_id, len(item.messages), stored[i], superseded[i])
        for i, (row_id, item) in enumerate(zip(ids, batch, strict=True))
    }
    return [receipts.get(j.taken.row_id, receipt(j.taken.row_id, 0)) for j in judged]


async def mapping_failed(conn: Conn, row_id: int, lease: int, error: str) -> None:
    """Keep the error and release the lease (the next take may come at once)."""
    await conn.execute(
        "UPDATE unmapped SET last_error = $3, taken_until = NULL"
        " WHERE webhook_id = $1 AND lease = $2",
        row_id,
        lease,
        _text(error),
    )


# ---- delivery --------------------------------------------------------------------------------

#: Claim the earliest-due messages in arrival order, skipping rows another replica holds;
#: ``{where}`` narrows the candidates (the dry-run destinations left out). The payload comes
#: by its key for each claimed row: joined from a CTE, the generic plan merged the claim with
#: ``message_payloads`` from its first row, reading every retained delivered message's payload
#: on each call (tests/test_postgres_plans.py).
_CLAIM_TEMPLATE = """
UPDATE messages m SET state = 'inflight', due_at = $1 + $3, lease = m.lease + 1
WHERE m.id = ANY(ARRAY(
    SELECT id FROM messages
    WHERE state IN ('pending', 'inflight') AND due_at <= $1{where}
    ORDER BY due_at, id LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING m.id, m.message_id, m.destination, m.user_id,
          (SELECT p.payload FROM message_payloads p WHERE p.id = m.id), m.attempts,
          m.enqueued_at, m.lease
"""
_CLAIM = _CLAIM_TEMPLATE.format(where="")
_CLAIM_EXCLUDING = _CLAIM_TEMPLATE.format(where=" AND destination <> ALL($4::text[])")
_CLAIM_ONLY = _CLAIM_TEMPLATE.format(where=" AND destination = ANY($4::text[])")


async def claim(
    conn: Conn,
    now: float,
    limit: int,
    lease_secs: float,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[tuple[ClaimedMessage, int]]:
    """Up to ``limit`` due open rows (pending and due, or in flight past their lease), in
    arrival order, with their new fencing tokens. Rows another replica holds are skipped, and
    so are the destinations in ``exclude`` (dry-run) and, given ``only`` (already without
    ``exclude``), every destination not in it."""
    if only is not None:
        rows = await conn.fetch(_CLAIM_ONLY, now, limit, lease_secs, list(only))
    elif exclude:
        rows = await conn.fetch(_CLAIM_EXCLUDING, now, limit, lease_secs, list(exclude))
    else:
        rows = await conn.fetch(_CLAIM, now, limit, lease_secs)
    claimed = [(ClaimedMessage(*row[:7]), int(row[7])) for row in rows]
    claimed.sort(key=lambda pair: pair[0].id)
    return claimed


#: The rows of ``(id, lease)`` pairs still in flight under that lease, locked in messageId order
#: as enqueue locks them (a redelivery of a message in flight locks its row too): an outcome
#: and an enqueue over the same rows wait for each other instead of deadlocking.
_FENCED = """
fenced AS (
    SELECT m.id FROM messages m
    JOIN unnest($1::bigint[], $2::bigint[]) AS f(id, lease) ON m.id = f.id AND m.lease = f.lease
    WHERE m.state = 'inflight'
    ORDER BY m.message_id
    FOR UPDATE OF m
)"""


_ACK = (
    "WITH "  # noqa: S608 - constant SQL fragments only; every value is a bound parameter
    + _FENCED
    + """, done AS (
    UPDATE messages m SET state = 'delivered', delivered_at = $3, due_at = NULL
    FROM fenced WHERE m.id = fenced.id
    RETURNING 1
)
UPDATE counts SET open = open - (SELECT count(*) FROM done),
    delivered = delivered + (SELECT count(*) FROM done), last_at = greatest(last_at, $3)
WHERE shard = $4 AND EXISTS (SELECT 1 FROM done)"""
)
_RETRY = (
    "WITH "
    + _FENCED
    + """
UPDATE messages m SET state = 'pending', due_at = $3, attempts = attempts + 1, last_error = $4
FROM fenced WHERE m.id = fenced.id"""
)
_BURY = (
    "WITH "  # noqa: S608 - constant SQL fragments only; every value is a bound parameter
    + _FENCED
    + """, buried AS (
    UPDATE messages m SET state = 'dead', due_at = NULL, attempts = attempts + 1,
        last_error = $3
    FROM fenced WHERE m.id = fenced.id
    RETURNING m.id, m.webhook_id, m.attempts
), letters AS (
    INSERT INTO dead_letters (webhook_id, message_row, reason, detail, attempts, created_at)
    SELECT webhook_id, id, $4, $5, attempts, $6 FROM buried
)
UPDATE counts SET open = open - (SELECT count(*) FROM buried)
WHERE shard = $7 AND EXISTS (SELECT 1 FROM buried)"""
)


def _fenced(leases: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    pairs = list(leases)
    return [row for row, _ in pairs], [token for _, token in pairs]


async def ack(conn: Conn, leases: Sequence[tuple[int, int]], now: float) -> int:
    ids, tokens = _fenced(leases)
    status = await conn.execute(
        _ACK,
        ids,
        tokens,
        now,
        _shard(),
    )
    return _count(status)


async def retry_later(
    conn: Conn, leases: Sequence[tuple[int, int]], due_at: float, error: str
) -> int:
    ids, tokens = _fenced(leases)
    status = await conn.execute(
        _RETRY,
        ids,
        tokens,
        due_at,
        _text(error),
    )
    return _count(status)


async def bury(
    conn: Conn, leases: Sequence[tuple[int, int]], dead: DeadReason, error: str, now: float
) -> int:
    ids, tokens = _fenced(leases)
    status = await conn.execute(
        _BURY,
        ids,
        tokens,
        _text(error),
        _text(dead.reason, 200),
        _text(dead.detail),
        now,
        _shard(),
    )
    return _count(status)


async def peek(
    conn: Conn, destinations: Sequence[str], after: int, limit: int
) -> list[ClaimedMessage]:
    """Open messages of ``destinations`` after id ``after``, in id order, unchanged."""
    rows = await conn.fetch(
        """
        SELECT m.id, m.message_id, m.destination, m.user_id, p.payload, m.attempts,
               m.enqueued_at
        FROM messages m JOIN message_payloads p ON p.id = m.id
        WHERE m.id > $1 AND m.state IN ('pending', 'inflight') AND m.destination = ANY($2::text[])
        ORDER BY m.id LIMIT $3
        """,
        after,
        list(destinations),
        limit,
    )
    return [ClaimedMessage(*row) for row in rows]


async def count_open(conn: Conn, destinations: Sequence[str]) -> int:
    value = await conn.fetchval(
        "SELECT count(*) FROM messages"
        " WHERE state IN ('pending', 'inflight') AND destination = ANY($1::text[])",
        list(destinations),
    )
    return int(value or 0)


async def next_due_at(conn: Conn) -> float | None:
    value = await conn.fetchval(
        "SELECT min(due_at) FROM messages WHERE state IN ('pending', 'inflight')"
    )
    return None if value is None else float(value)


async def check_writable(conn: Conn) -> str | None:
    """Why a write would fail now (a standby, a read-only session), or None."""
    row = await conn.fetchrow(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'"
    )
    if row[0]:
        return "the server is a standby (in recovery): point storage.url at the primary"
    if row[1]:
        return "the session is read-only"
    return None


_STATS = """
SELECT
    (SELECT coalesce(sum(open), 0) FROM counts),
    (SELECT count(*) FROM messages WHERE state = 'inflight'),
    (SELECT min(enqueued_at) FROM messages WHERE state IN ('pending', 'inflight')),
    (SELECT count(*) FROM messages WHERE state = 'delivered' AND delivered_at >= $1),
    (SELECT coalesce(sum(delivered), 0) FROM counts),
    (SELECT max(last_at) FROM counts),
    (SELECT coalesce(json_object_agg(reason, n), '{}')::text
       FROM (SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason) AS d),
    (SELECT sum(pg_total_relation_size(t)) FROM unnest(ARRAY['webhooks', 'messages',
       'message_payloads', 'dead_letters']::regclass[]) AS t),
    (SELECT count(*) FROM unmapped),
    (SELECT w.received_at FROM unmapped u JOIN webhooks w ON w.id = u.webhook_id
       ORDER BY u.webhook_id LIMIT 1)
"""


async def stats(conn: Conn, since: float) -> StoreStats:
    """One statement, one snapshot: the numbers agree with each other. Open and delivered
    totals come from the sharded counters; only the few in-flight rows are counted."""
    row = await conn.fetchrow(_STATS, since)
    opened, in_flight, oldest, recent, total, last, dead, size, unmapped, oldest_unmapped = row
    return StoreStats(
        pending=int(opened) - int(in_flight),
        in_flight=int(in_flight),
        oldest_pending_at=oldest,
        delivered_total=int(total),
        delivered_since=int(recent),
        dead_letters={k: int(v) for k, v in json.loads(dead).items()},
        storage_bytes=int(size or 0),
        last_delivered_at=last,
        unmapped=int(unmapped),
        oldest_unmapped_at=oldest_unmapped,
    )


# ---- maintenance -------------------------------------------------------------------------------


#: Webhooks no message or dead letter needs any more, with their mapped portal and their refs
#: (no foreign keys there: see schema v5 and v7).
_DELETE_ORPHANS = """
WITH gone AS (
    DELETE FROM webhooks w WHERE w.id = ANY($1::bigint[])
    AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = w.id)
    AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.webhook_id = w.id)
    RETURNING w.id
), refs AS (
    DELETE FROM webhook_refs r USING gone WHERE r.webhook_id = gone.id
)
DELETE FROM webhook_portals p USING gone WHERE p.webhook_id = gone.id
"""


#: Delivered messages pruned with their payloads (no foreign key there: schema v7).
_PRUNE_DELIVERED = """
WITH gone AS (
    DELETE FROM messages WHERE id IN (
        SELECT id FROM messages WHERE state = 'delivered' AND delivered_at < $1
        ORDER BY delivered_at LIMIT $2 FOR UPDATE SKIP LOCKED
    ) RETURNING id, webhook_id
), payloads AS (
    DELETE FROM message_payloads p USING gone WHERE p.id = gone.id
)
SELECT webhook_id FROM gone
"""
#: Dead messages no dead letter names any more, with their payloads (schema v7).
_DELETE_DEAD_MESSAGES = """
WITH gone AS (
    DELETE FROM messages m WHERE m.id = ANY($1::bigint[]) AND m.state = 'dead'
    AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.message_row = m.id)
    RETURNING m.id
)
DELETE FROM message_payloads p USING gone WHERE p.id = gone.id
"""


async def delete_orphan_webhooks(conn: Conn, webhooks: Iterable[int]) -> None:
    await conn.execute(_DELETE_ORPHANS, sorted(set(webhooks)))


async def prune_delivered(conn: Conn, before: float, chunk: int) -> int:
    """Delete up to ``chunk`` messages delivered before ``before`` (rows another replica is
    pruning are skipped, so replicas never wait on each other); how many went."""
    rows = await conn.fetch(_PRUNE_DELIVERED, before, chunk)
    await delete_orphan_webhooks(conn, (row[0] for row in rows))
    return len(rows)


async def delete_letters(conn: Conn, letters: Sequence[int]) -> int:
    """Delete dead letters, then their dead messages and webhooks nothing refers to any more."""
    gone = await conn.fetch(
        "DELETE FROM dead_letters WHERE id = ANY($1::bigint[]) RETURNING webhook_id, message_row",
        list(letters),
    )
    await conn.execute(_DELETE_DEAD_MESSAGES, [row[1] for row in gone if row[1] is not None])
    await delete_orphan_webhooks(conn, (row[0] for row in gone))
    return len(gone)


async def purge_dead(conn: Conn, older_than: float, chunk: int) -> int:
    letters = await conn.fetch(
        "SELECT id FROM dead_letters WHERE created_at < $1 ORDER BY created_at LIMIT $2"
        " FOR UPDATE SKIP LOCKED",
        older_than,
        chunk,
    )
    return await delete_letters(conn, [row[0] for row in letters])


async def replay_chunk(
    conn: Conn,
    outcomes: Sequence[tuple[int, int, Sequence[OutgoingMessage] | DeadReason]],
    now: float,
) -> tuple[int, int, int]:
    """Apply remapped dead letters ``(letter id, webhook row, result)``: counts as ReplayOutcome."""
    replayed = still_dead = made = 0
    for letter, webhook, result in outcomes:
        exists = await conn.fetchval("SELECT 1 FROM dead_letters WHERE id = $1 FOR UPDATE", letter)
        if exists is None:
            continue  # replayed meanwhile (another CLI run, or revived with a sibling letter)
        if isinstance(result, DeadReason):
            await conn.execute(
                "UPDATE dead_letters SET reason = $1, detail = $2 WHERE id = $3",
                _text(result.reason, 200),
                _text(result.detail),
                letter,
            )
            still_dead += 1
            continue
        for message in result:
            made += await _revive_or_insert(conn, webhook, message, now)
        await delete_letters(conn, [letter])  # may already be gone: reviving removed it
        replayed += 1
    if made:  # once per chunk, last: the counter row stays locked only until the commit
        await conn.execute("UPDATE counts SET open = open + $1 WHERE shard = $2", made, _shard())
    return replayed, still_dead, made


async def _revive_or_insert(conn: Conn, webhook: int, message: OutgoingMessage, now: float) -> int:
    """Insert a new message, or revive a dead one (attempts kept); others are left alone."""
    found = await conn.fetchrow(
        "SELECT id, state FROM messages WHERE message_id = $1 FOR UPDATE",
        _clean(message.message_id),
    )
    if found is None:
        row = await conn.fetchval(
            "INSERT INTO messages (webhook_id, message_id, destination, user_id, state, due_at,"
            " enqueued_at, rank) VALUES ($1, $2, $3, $4, 'pending', $5, $5, $6)"
            " ON CONFLICT (message_id) DO NOTHING RETURNING id",
            webhook,
            _clean(message.message_id),
            _clean(message.destination),
            _clean(message.user_id),
            now,
            message.rank,
        )
        if row is None:
            return 0  # stored meanwhile by intake: it is on its way
        await conn.execute(
            "INSERT INTO message_payloads (id, payload) VALUES ($1, $2)", row, message.payload
        )
        return 1
    row, state = found
    if state != "dead":
        return 0  # delivered (never send twice) or already on its way
    await conn.execute("DELETE FROM dead_letters WHERE message_row = $1", row)
    await conn.execute(
        "UPDATE messages SET state = 'pending', destination = $1, user_id = $2, due_at = $3,"
        " enqueued_at = $3, rank = $4 WHERE id = $5",
        _clean(message.destination),
        _clean(message.user_id),
        now,
        message.rank,
        row,
    )
    await conn.execute(
        "UPDATE message_payloads SET payload = $1 WHERE id = $2", message.payload, row
    )
    return 1


# ---- reads -------------------------------------------------------------------------------------


async def dead_letters(conn: Conn, which: DeadLetterFilter) -> list[DeadLetter]:
    rows = await conn.fetch(
        f"SELECT {LETTER_COLUMNS} {LETTER_FROM}"
        " WHERE ($1::text IS NULL OR w.code = $1) AND ($2::text IS NULL OR d.reason = $2)"
        " AND ($3::bigint[] IS NULL OR d.id = ANY($3))"
        " AND ($5::text IS NULL OR m.user_id = $5 OR (d.message_row IS NULL"
        " AND position($6::text in encode(w.raw_body, 'escape')) > 0))"
        " ORDER BY d.id LIMIT $4",
        which.code,
        which.reason,
        [int(i) for i in which.ids] if which.ids else None,
        which.limit,
        which.user_id,
        None if which.user_id is None else json_string(which.user_id),
    )
    return [dead_letter_of(row) for row in rows]


async def dead_letter(conn: Conn, letter_id: int) -> DeadLetterDetail | None:
    row = await conn.fetchrow(
        f"SELECT {LETTER_COLUMNS}, w.raw_body, p.payload, m.last_error {LETTER_FROM}"
        " WHERE d.id = $1",
        letter_id,
    )
    if row is None:
        return None
    return DeadLetterDetail(dead_letter_of(row[:9]), row[9], row[10], row[11])


async def webhooks_of_letters(conn: Conn, letters: Sequence[int]) -> list[tuple[int, int, Webhook]]:
    rows = await conn.fetch(
        "SELECT d.id, w.id, w.code, w.portal_id, w.received_at, w.raw_body FROM dead_letters d"
        " JOIN webhooks w ON w.id = d.webhook_id WHERE d.id = ANY($1::bigint[]) ORDER BY d.id",
        list(letters),
    )
    return [(row[0], row[1], Webhook(row[2], row[3], row[4], row[5])) for row in rows]


# ---- event search (read-only) ------------------------------------------------------------------

#: As in the SQLite store: the key fields are ``IN`` over a small indexed set; the open states
#: start from the partial indexes of the open rows, ``dead`` from ``dead_letters``, and
#: ``delivered`` (most rows) is checked per webhook while the receipt-time index is walked.
_STATE_WHERE = {
    "pending": "w.id IN (SELECT webhook_id FROM messages WHERE state IN ('pending', 'inflight')"
    " AND state = 'pending' AND (attempts > 0 OR due_at <= {now}))",
    "held": "w.id IN (SELECT webhook_id FROM messages WHERE state IN ('pending', 'inflight')"
    " AND state = 'pending' AND attempts = 0 AND due_at > {now})",
    "inflight": "w.id IN (SELECT webhook_id FROM messages WHERE state = 'inflight')",
    "delivered": "EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = w.id"
    " AND m.state = 'delivered')",
    "dead": "w.id IN (SELECT webhook_id FROM dead_letters)",
    "unmapped": "w.id IN (SELECT webhook_id FROM unmapped)",
}
_KEY_WHERE = (
    ("message_id", "w.id IN (SELECT webhook_id FROM messages WHERE message_id = {arg})"),
    # A user's webhooks, the message-less ones whose body names the user included (see
    # bridge.store.sqlite.queries.USER_WHERE); encode(..., 'escape') never fails on bytes that
    # are not UTF-8, as a cast would. {quoted}: the id as a JSON string.
    (
        "user_id",
        "(w.id IN (SELECT webhook_id FROM messages WHERE user_id = {arg})"
        " OR (NOT EXISTS (SELECT 1 FROM messages m0 WHERE m0.webhook_id = w.id)"
        " AND position({quoted} in encode(w.raw_body, 'escape')) > 0))",
    ),
    ("ref", "w.id IN (SELECT webhook_id FROM webhook_refs WHERE ref = {arg})"),
    ("code", "w.code = {arg}"),
    ("since", "w.received_at >= {arg}"),
    ("until", "w.received_at < {arg}"),
)


async def find_events(conn: Conn, query: EventQuery, now: float) -> list[EventRecord]:
    where: list[str] = []
    params: list[Any] = []
    for field, condition in _KEY_WHERE:
        value = getattr(query, field)
        if value is not None:
            params.append(value)
            arg = f"${len(params)}"
            if "{quoted}" in condition:
                params.append(json_string(value))
                where.append(condition.format(arg=arg, quoted=f"${len(params)}"))
            else:
                where.append(condition.format(arg=arg))
    if query.state is not None:
        if query.state not in _STATE_WHERE:
            raise ValueError(f"unknown state {query.state!r}")
        condition = _STATE_WHERE[query.state]
        if "{now}" in condition:
            params.append(now)
            condition = condition.format(now=f"${len(params)}::float8")
        where.append(condition)
    params.append(max(0, query.limit))
    # Built only from the constant fragments above; every value is a bound parameter.
    sql = (
        f"SELECT w.id, w.code, {PORTAL}, w.received_at FROM webhooks w {PORTAL_JOIN}"  # noqa: S608
        f" WHERE {' AND '.join(where) or 'true'}"
        f" ORDER BY w.received_at DESC, w.id DESC LIMIT ${len(params)}"
    )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        webhooks = await conn.fetch(sql, *params)
        return await _records(conn, [tuple(row) for row in webhooks], now)


async def event(conn: Conn, ref: str, now: float) -> EventDetail | None:
    row_id = webhook_row(ref)
    if row_id is None:
        return None
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        found = await conn.fetchrow(
            f"SELECT w.id, w.code, {PORTAL}, w.received_at, w.raw_body FROM webhooks w"  # noqa: S608
            f" {PORTAL_JOIN} WHERE w.id = $1",
            row_id,
        )
        if found is None:
            return None
        (record,) = await _records(conn, [tuple(found)[:4]], now)
        return EventDetail(record, found[4])


async def _records(
    conn: Conn, webhooks: Sequence[tuple[Any, ...]], now: float
) -> list[EventRecord]:
    ids = [row[0] for row in webhooks]
    messages: dict[int, list[EventMessage]] = {}
    for row in await conn.fetch(
        f"SELECT {EVENT_MESSAGE_COLUMNS} FROM messages m"  # noqa: S608 - constant columns
        " LEFT JOIN message_payloads p ON p.id = m.id"
        " WHERE m.webhook_id = ANY($1::bigint[]) ORDER BY m.id",
        ids,
    ):
        webhook, message = event_message(row, now)
        messages.setdefault(webhook, []).append(message)
    dead = {
        row[0]: DeadReason(row[1], row[2])
        for row in await conn.fetch(
            "SELECT webhook_id, reason, detail FROM dead_letters WHERE message_row IS NULL"
            " AND webhook_id = ANY($1::bigint[]) ORDER BY id",
            ids,
        )
    }
    unmapped = {
        row[0]: row[1]
        for row in await conn.fetch(
            "SELECT webhook_id, tries FROM unmapped WHERE webhook_id = ANY($1::bigint[])", ids
        )
    }
    return event_records(webhooks, messages, dead, unmapped)
