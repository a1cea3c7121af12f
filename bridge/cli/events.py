"""``synap-bridge events``: find any webhook and see where each of its Segment messages went.

The operator's first question is "this student's result is not in Segment: where did it go?".
``events`` searches the stored webhooks by user id, an id inside the body (attempt, test, exam,
assignment), messageId, code, message state and receipt time, newest first, and shows for each
webhook the messages it produced with their state, attempts, last error and delivery time.
``events show ID`` prints the raw webhook exactly as received and each message exactly as it is
sent to Segment (the stored bytes are the bytes of the batch, see :mod:`bridge.delivery.wire`).

Read-only, through the :class:`bridge.store.Store` protocol (``find_events`` / ``event``), so it
runs beside a live ``serve`` and against any backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from bridge import explain
from bridge.cli import ids, ops
from bridge.config import Config
from bridge.messages import parse_time
from bridge.store import EVENT_STATES, EventMessage, EventQuery, EventRecord, Store

DEFAULT_LIMIT = 20


def moment(text: str) -> float:
    """``--since`` / ``--until``: a duration ago (``15m``, ``2h``, ``7d``) or an ISO-8601 time."""
    try:
        return time.time() - ops.duration(text)
    except argparse.ArgumentTypeError:
        pass
    parsed = parse_time(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (a duration ago such as 2h or 7d, or 2026-11-01T10:00:00Z)"
        )
    return parsed.timestamp()


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    events = commands.add_parser(
        "events",
        parents=[common],
        help="find webhooks and see their Segment messages",
        description="Search stored webhooks, newest first; every option given must match.",
    )
    events.add_argument("--user", dest="user_id", metavar="ID", help="Synap user id")
    events.add_argument(
        "--ref",
        "--attempt",
        "--test",
        "--exam",
        dest="ref",
        metavar="ID",
        help="an id in the body: attempt, test, exam or assignment id, or the body's own id",
    )
    events.add_argument("--message-id", metavar="ID", help="a Segment messageId")
    events.add_argument("--code", help="Synap event code, e.g. exam.completed")
    events.add_argument(
        "--state",
        "--outcome",
        dest="state",
        choices=EVENT_STATES,
        help="webhooks with a message in this state (dead: also webhooks that did not map; "
        "unmapped: kept, waiting for the mapping stage)",
    )
    when_help = "2h, 7d or an ISO time (UTC unless it names a zone); times print in UTC (Z)"
    events.add_argument("--since", type=moment, metavar="WHEN", help=when_help)
    events.add_argument("--until", type=moment, metavar="WHEN", help=when_help)
    events.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N")
    events.add_argument("--json", action="store_true", help="machine-readable output")
    actions = events.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser(
        "show", parents=[common], help="one webhook: raw body and the exact JSON sent to Segment"
    )
    show.add_argument(
        "id", metavar="ID", help="e.g. wh_42 (from the list or an answer), or a dead letter's dl_7"
    )
    show.add_argument("--json", action="store_true", help="one JSON document")


def run(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    handler = _show if args.action == "show" else _find
    return asyncio.run(ops.with_store(config, handler, args, out))


def when(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def message_dict(message: EventMessage) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "call": explain.call(message.payload),
        "destination": message.destination,
        "user_id": message.user_id,
        "state": message.state,
        "attempts": message.attempts,
        "last_error": message.last_error,
        "dead_reason": message.dead_reason,
        "enqueued_at": when(message.enqueued_at),
        "due_at": when(message.due_at),
        "delivered_at": when(message.delivered_at),
        "sent": _json_or_text(message.payload),
    }


def record_dict(record: EventRecord) -> dict[str, Any]:
    return {
        "webhook_id": record.webhook_id,
        "code": record.code,
        "portal_id": record.portal_id,
        "received_at": when(record.received_at),
        "dead_letter": None
        if record.dead is None
        else {"reason": record.dead.reason, "detail": record.dead.detail},
        "messages": [message_dict(message) for message in record.messages],
        "unmapped": record.unmapped_tries is not None,
        "mapping_tries": record.unmapped_tries,
    }


def message_line(message: EventMessage) -> str:
    """One line per message: what, whose, where it is, and the detail that state needs."""
    parts = [explain.call(message.payload), f"user {message.user_id}", message.state]
    detail = explain.state_detail(message)
    if detail is not None:
        parts.append(detail)
    if message.dead_reason:
        parts.append(f"reason {message.dead_reason}")
    parts.append(f"attempts {message.attempts}")
    if message.destination != "default":
        parts.append(f"to {message.destination}")
    line = "  ".join(parts) + f"\n      messageId {message.message_id}"
    if message.last_error:
        line += f"\n      last error: {message.last_error}"
    return line


def write_record(record: EventRecord, out: TextIO) -> None:
    out.write(
        f"{record.webhook_id}  {explain.short_time(record.received_at)}  {record.code}  "
        f"portal {record.portal_id or '-'}\n"
    )
    if record.unmapped_tries is not None:
        tries = record.unmapped_tries
        out.write(
            "    kept, not mapped yet"
            + (
                f" (mapping tried {tries} time(s); see the mapping_failed log lines)"
                if tries
                else ""
            )
            + "\n"
        )
    elif record.dead is not None:
        out.write(f"    {explain.not_mapped(record.dead)}\n")
    elif not record.messages:
        out.write(f"    {explain.NO_MESSAGE}\n")
    for message in record.messages:
        out.write(f"    {message_line(message)}\n")


async def _find(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:  # noqa: ARG001 - one signature for every command
    query = EventQuery(
        user_id=args.user_id,
        ref=args.ref,
        message_id=args.message_id,
        code=args.code,
        state=args.state,
        since=args.since,
        until=args.until,
        limit=max(0, args.limit),
    )
    records = await store.find_events(query, time.time())
    if args.json:
        out.write(json.dumps([record_dict(r) for r in records], indent=2, ensure_ascii=False))
        out.write("\n")
        return 0
    for record in records:
        write_record(record, out)
    more = " (the newest; raise --limit for more)" if len(records) == query.limit else ""
    out.write(f"{len(records)} webhook(s){more}\n")
    return 0


async def _show(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:  # noqa: ARG001 - one signature for every command
    ref = args.id
    if ref.startswith(ids.LETTER_PREFIX):  # a dead letter's webhook
        try:
            _, number = ids.parse(ref)
        except argparse.ArgumentTypeError as exc:
            out.write(f"{exc}\n")
            return 2
        letter = await store.dead_letter(number)
        if letter is None:
            out.write(f"no dead letter with id {ref}\n")
            return 1
        ref = letter.letter.webhook_id
    found = await store.event(ref, time.time())
    if found is None:
        out.write(f"no stored webhook with id {ref}\n")
        return 1
    if args.json:
        report = {**record_dict(found.event), "raw_body": _json_or_text(found.raw_body)}
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return 0
    write_record(found.event, out)
    out.write("\n--- raw webhook body, as received ---\n")
    out.write(found.raw_body.decode("utf-8", errors="replace") + "\n")
    for n, message in enumerate(found.event.messages, 1):
        total = len(found.event.messages)
        out.write(f"\n--- message {n} of {total}, exactly as sent to Segment ---\n")
        out.write(message.payload.decode("utf-8", errors="replace") + "\n")
    return 0
