"""What both SQL backends share about rows: the public webhook id, the enqueue receipt and the
dead-letter read.

The schemas of SQLite and PostgreSQL have the same shape (webhooks, messages, message_payloads,
dead_letters), so the dead-letter columns and joins are one text; only placeholders and
drivers differ, and those stay in each backend's ``queries``. Pure: no driver is imported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bridge.store import (
    DeadLetter,
    DeadReason,
    EnqueueReceipt,
    EventMessage,
    EventRecord,
    Judged,
)

#: The longest row id a webhook reference may name (a bigint has 19 digits; 18 always fits).
MAX_ROW_DIGITS = 18

#: A webhook's portal as operators see it: the one its mapping read from the body
#: (``webhook_portals``, both schemas), else the one intake kept (the ``?portal=`` hint). Used
#: with :data:`PORTAL_JOIN` on a query of ``webhooks w``.
PORTAL = "CASE WHEN wp.webhook_id IS NULL THEN w.portal_id ELSE wp.portal_id END"
PORTAL_JOIN = "LEFT JOIN webhook_portals wp ON wp.webhook_id = w.id"

LETTER_COLUMNS = (
    f"d.id, d.webhook_id, w.code, {PORTAL}, m.message_id, d.reason, d.detail, d.attempts,"
    " d.created_at"
)
LETTER_FROM = (
    f"FROM dead_letters d JOIN webhooks w ON w.id = d.webhook_id {PORTAL_JOIN}"
    " LEFT JOIN messages m ON m.id = d.message_row"
    " LEFT JOIN message_payloads p ON p.id = d.message_row"
)


def portal_moves(judged: Sequence[Judged]) -> list[tuple[int, str | None]]:
    """``(webhook row id, portal)`` of the verdicts whose mapped portal is not the one intake
    kept: the rows ``webhook_portals`` gets (read back through :data:`PORTAL`)."""
    return [
        (one.taken.row_id, one.portal_id)
        for one in judged
        if one.portal_id != one.taken.webhook.portal_id
    ]


def json_string(value: str) -> str:
    """``value`` as it appears in a JSON body (quoted, escaped): what a body search looks for,
    so ``usr_1`` does not match ``usr_12``."""
    return json.dumps(value, ensure_ascii=False)


def webhook_ref(row_id: int) -> str:
    """The webhook id operators see (answers, logs, ``events``): ``wh_<row id>``."""
    return f"wh_{row_id}"


def receipt(row_id: int, offered: int, stored: int = 0, superseded: int = 0) -> EnqueueReceipt:
    """What became of the ``offered`` messages of webhook ``row_id``: each was stored new, or
    superseded a stored one in place, or else was a duplicate of one already stored."""
    return EnqueueReceipt(webhook_ref(row_id), stored, offered - stored - superseded, superseded)


def webhook_row(ref: str) -> int | None:
    """The row id behind a ``webhook_ref`` (``wh_12`` -> 12; a bare ``12`` is accepted too)."""
    digits = ref.removeprefix("wh_")
    return int(digits) if digits.isdigit() and len(digits) <= MAX_ROW_DIGITS else None


def dead_letter_of(row: Sequence[Any]) -> DeadLetter:
    """A dead letter from a row of :data:`LETTER_COLUMNS`."""
    letter_id, webhook, *rest = row
    return DeadLetter(letter_id, webhook_ref(webhook), *rest)


#: The columns ``events`` reads per message (with ``FROM messages m LEFT JOIN message_payloads p
#: ON p.id = m.id``): the webhook's row id first, then :class:`EventMessage`'s fields in order.
EVENT_MESSAGE_COLUMNS = (
    "m.webhook_id, m.id, m.message_id, m.destination, m.user_id, m.state, m.attempts,"
    " m.last_error, m.enqueued_at, m.due_at, m.delivered_at,"
    " (SELECT d.reason FROM dead_letters d WHERE d.message_row = m.id ORDER BY d.id DESC LIMIT 1),"
    " p.payload"
)


def event_message(row: Sequence[Any], now: float) -> tuple[int, EventMessage]:
    """The webhook's row id and the message of a row of :data:`EVENT_MESSAGE_COLUMNS`; a
    never-tried pending message not due yet reads as ``held``."""
    webhook, row_id, message_id, destination, user, state, attempts, error = row[:8]
    enqueued, due, delivered, reason, payload = row[8:]
    if state == "pending" and attempts == 0 and due is not None and due > now:
        state = "held"
    return webhook, EventMessage(
        row_id, message_id, destination, user, state, attempts, error, enqueued, due,
        delivered, reason, bytes(payload) if payload is not None else b"",
    )  # fmt: skip


def event_records(
    webhooks: Sequence[Sequence[Any]],
    messages: dict[int, list[EventMessage]],
    dead: dict[int, DeadReason],
    unmapped: dict[int, int] | None = None,
) -> list[EventRecord]:
    """One record per webhook row ``(id, code, portal, received)``, with its messages, its
    whole-webhook dead letter, and its mapping tries while it waits to be mapped."""
    waiting = unmapped or {}
    return [
        EventRecord(
            webhook_ref(row_id),
            code,
            portal,
            received,
            tuple(messages.get(row_id, ())),
            dead.get(row_id),
            waiting.get(row_id),
        )
        for row_id, code, portal, received in webhooks
    ]
