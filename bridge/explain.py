"""What a stored webhook and its messages mean, in words: shared by ``synap-bridge events`` and
the console's webhook page, so the terminal and the browser tell an operator the same story.

Pure: records in (:mod:`bridge.store`), text out. Times are shown in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from bridge.store import DeadReason, EventMessage

#: A webhook stored without a message of its own, and why that is not a loss.
NO_MESSAGE = (
    "no message of its own: each messageId it maps to is held by another webhook, an earlier"
    " one (a redelivery) or a later one that replaced it (exam.* replaces the attempt.* of the"
    " same attempt), or it maps to none"
)
#: The same webhook on a page, where there is room for the exam hold's side of the story.
NO_MESSAGE_LONG = (
    f"{NO_MESSAGE}. An attempt.* message of an exam attempt can also have been superseded: the"
    " exam.* webhook of the same attempt replaced it while it was held, and the message now"
    " belongs to that webhook."
)
#: Per message state, what it means for the operator.
STATE_MEANING = {
    "pending": "waiting to be sent (due now, or after a retry's backoff)",
    "held": (
        "held: an exam attempt's message waits for the exam.* webhook of the same attempt, which"
        " supersedes it with the exam's details (mapping.exam_hold_secs); it goes out as it is"
        " when the hold ends"
    ),
    "inflight": "being sent now (claimed; back in the queue if the lease runs out)",
    "delivered": "accepted by Segment",
    "dead": "a dead letter: not sent; replay it once its cause is fixed",
}


def short_time(epoch: float | None) -> str:
    """``2026-11-01 10:00:00Z`` (the Z says UTC), ``-`` for none."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def call(payload: bytes) -> str:
    """``track Completed Test`` / ``identify`` / ``group g-1``: what the message is, in brief."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "?"
    if not isinstance(body, dict):
        return "?"
    kind = str(body.get("type", "?"))
    if kind == "track":
        return f"track {body.get('event', '?')}"
    if kind == "group":
        return f"group {body.get('groupId', '?')}"
    return kind


def state_detail(message: EventMessage) -> str | None:
    """The time the message's state needs: delivered at, due at, lease until (or None)."""
    if message.state == "delivered":
        return f"at {short_time(message.delivered_at)}"
    if message.state in ("pending", "held") and message.due_at is not None:
        return f"due {short_time(message.due_at)}"
    if message.state == "inflight" and message.due_at is not None:
        return f"lease until {short_time(message.due_at)}"
    return None


def not_mapped(dead: DeadReason) -> str:
    """A webhook that produced no message because it could not be mapped."""
    return f"not mapped: {dead.reason}: {dead.detail}"
