"""Operator commands: ``stats`` and ``dead-letters {list,show,replay,purge}``.

They open the same database as a running ``serve`` (SQLite WAL lets both work at once) and go
through the storage contract only. Replay maps the stored raw bodies again with the *current*
configuration, so fixing a mapping or routing setting and replaying recovers the dead letters;
replayed messages keep their deterministic messageIds, so Segment never counts one twice.

They never create a database (only ``serve`` and ``migrate`` do): a mistyped ``storage.path``
is an error (exit status 66), not a new empty database that shows nothing. ``dead-letters
purge`` deletes for good, so it says what it would delete (``--dry-run``) and asks first on a
terminal; off a terminal (a script, cron) it needs ``--yes``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TextIO

from tqdm import tqdm

from bridge import servicestate
from bridge.cli import ids
from bridge.config import Config
from bridge.errors import StorageUnavailableError
from bridge.mapping.intake import remapper
from bridge.store import DeadLetter, DeadLetterFilter, Store
from bridge.store.factory import DatabaseMissingError, describe, open_store

REPLAY_CHUNK = 200
#: EX_NOINPUT: the database the command should read does not exist.
EX_NOINPUT = 66
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30m, 12h, 7d)")
    return float(match.group(1)) * _UNIT_SECS[match.group(2)]


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    stats = commands.add_parser("stats", parents=[common], help="backlog, deliveries, dead letters")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    dead = commands.add_parser("dead-letters", parents=[common], help="inspect and replay")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="list dead letters")
    listing.add_argument("--code", help="only this Synap event code")
    listing.add_argument("--reason", help="only this reason (e.g. missing_user_id)")
    listing.add_argument("--user", dest="user_id", metavar="ID", help="only this Synap user's")
    listing.add_argument("--limit", type=int, default=None)
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", parents=[common], help="one dead letter with its raw body")
    show.add_argument("id", type=ids.any_id, help="e.g. dl_12 (from the list)")
    replay = actions.add_parser("replay", parents=[common], help="map again and resend")
    replay.add_argument("ids", type=ids.any_id, nargs="*", metavar="ID", help="e.g. dl_12")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--code", help="every dead letter of this event code")
    replay.add_argument("--reason", help="every dead letter with this reason")
    purge = actions.add_parser("purge", parents=[common], help="delete old dead letters")
    purge.add_argument("--older-than", type=duration, required=True, metavar="DURATION")
    purge.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted, delete nothing"
    )
    purge.add_argument(
        "--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)"
    )
    commands.add_parser(
        "migrate",
        parents=[common],
        help="create or upgrade the database schema (serve also does it at start) and exit",
    )


def run(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    handlers: dict[str, Callable[[Store, argparse.Namespace, Config, TextIO], Awaitable[int]]] = {
        "stats": _stats,
        "list": _list,
        "show": _show,
        "replay": _replay,
        "purge": _purge,
        "migrate": _migrate,
    }
    name = args.action if args.command == "dead-letters" else args.command
    return asyncio.run(with_store(config, handlers[name], args, out))


async def with_store(
    config: Config,
    handler: Callable[[Store, argparse.Namespace, Config, TextIO], Awaitable[int]],
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    """Open the configured store, run ``handler`` on it, close it; a storage error is one line
    and exit status 1. Shared by the operator command modules (ops, events, try)."""
    store = open_store(config.storage, create=args.command == "migrate")
    try:
        await store.open()
        try:
            return await handler(store, args, config, out)
        finally:
            await store.close()
    except DatabaseMissingError as exc:
        print(f"synap-bridge: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except StorageUnavailableError as exc:
        print(f"synap-bridge: storage unavailable: {exc}", file=sys.stderr)
        return 1


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


async def _stats(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:
    now = time.time()
    stats = await store.stats(now - 3600)
    oldest = stats.oldest_pending_at
    service = await service_report(store, config, now)
    dry = [d["name"] for d in service["destinations"] if d.get("mode") == "dry-run"]
    lag = stats.oldest_unmapped_at
    report: dict[str, Any] = {
        # kept by intake, not mapped yet; the lag is the oldest one's age
        "unmapped": stats.unmapped,
        "mapping_lag_secs": 0.0 if lag is None else round(max(0.0, now - lag), 3),
        "pending": stats.pending,
        # waiting because their destination has no write key (dry-run keeps them queued), as
        # the serving process says, not as this command's own environment would imply
        "dry_run_waiting": await store.count_open(dry) if dry else 0,
        "in_flight": stats.in_flight,
        "oldest_pending_age_secs": None if oldest is None else round(now - oldest, 3),
        "delivered_last_hour": stats.delivered_since,
        "delivered_total": stats.delivered_total,
        "last_delivered_at": _when(stats.last_delivered_at),
        "dead_letters": dict(sorted(stats.dead_letters.items())),
        "storage_bytes": stats.storage_bytes,
        "storage_path": describe(config.storage),
        **service,
    }
    for destination in report["destinations"]:
        destination["backlog"] = await store.count_open([destination["name"]])
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
        return 0
    _print_report(report, out)
    return 0


async def service_report(store: Store, config: Config, now: float) -> dict[str, Any]:
    """The serving processes and their destinations as ``serve`` recorded them; without a live
    one, the destinations as this command's configuration has them, and a note saying so."""
    states = await store.service_states(now)
    live = servicestate.alive(states)
    processes = [
        {
            "process": s.process,
            "version": s.state.get("version"),
            "alive": s in live,
            "ready": s.state.get("ready"),
            "problems": s.state.get("problems", []),
            "seen_secs_ago": round(s.age_secs, 1),
        }
        for s in states
    ]
    if live:
        destinations = [_shown(d) for d in live[0].state.get("destinations", [])]
        return {"service": processes, "destinations": destinations}
    dry = set(config.dry_run_destinations)
    names = ["default", *config.routing.destinations]
    return {
        "service": processes,
        "service_note": (
            f"no serving process recorded its state in the last {servicestate.ALIVE_SECS:.0f} s:"
            " destinations as this command's configuration has them"
        ),
        "destinations": [{"name": n, "mode": "dry-run" if n in dry else "live"} for n in names],
    }


def _shown(destination: dict[str, Any]) -> dict[str, Any]:
    shown = dict(destination)
    for key in ("paused_until", "last_attempt_at"):
        if key in shown:
            shown[key] = _when(shown[key])
    return shown


def _print_report(report: dict[str, Any], out: TextIO) -> None:
    for key, value in report.items():
        if key in ("service", "destinations"):
            out.write(f"{key}:\n")
            for item in value:
                fields = ", ".join(f"{k}={v}" for k, v in item.items() if v not in (None, []))
                out.write(f"  {fields}\n")
            if not value:
                out.write("  -\n")
        elif isinstance(value, dict):
            out.write(f"{key}: {sum(value.values())}\n")
            for reason, count in value.items():
                out.write(f"  {reason}: {count}\n")
        else:
            out.write(f"{key}: {value if value is not None else '-'}\n")


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    return DeadLetterFilter(
        code=getattr(args, "code", None),
        reason=getattr(args, "reason", None),
        ids=tuple(n for _, n in getattr(args, "ids", ()) or ()),
        limit=getattr(args, "limit", None),
        user_id=getattr(args, "user_id", None),
    )


async def _list(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:  # noqa: ARG001 - one signature for every command
    letters = await store.dead_letters(_filter(args))
    if args.json:
        rows = [
            {
                "ref": ids.letter_ref(letter.id),
                **asdict(letter),
                "created_at": _when(letter.created_at),
            }
            for letter in letters
        ]
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    _table(letters, out)
    out.write(f"{len(letters)} dead letter(s)\n")
    return 0


def _table(letters: Sequence[DeadLetter], out: TextIO) -> None:
    out.write(
        f"{'ID':>9}  {'WEBHOOK':>9}  {'CREATED (UTC)':19}  {'CODE':28}  {'REASON':24}  DETAIL\n"
    )
    for letter in letters:
        created = datetime.fromtimestamp(letter.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        out.write(
            f"{ids.letter_ref(letter.id):>9}  {letter.webhook_id:>9}  {created:19}  "
            f"{letter.code[:28]:28}  {letter.reason[:24]:24}  "
            f"{letter.detail}\n"
        )


async def _show(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:  # noqa: ARG001 - one signature for every command
    kind, number = args.id
    if kind == "wh":
        out.write(f"wh_{number} is a webhook: `synap-bridge events show wh_{number}`\n")
        return 1
    found = await store.dead_letter(number)
    if found is None:
        out.write(f"no dead letter with id {number} ({ids.letter_ref(number)})\n")
        return 1
    report = {
        "ref": ids.letter_ref(found.letter.id),
        **asdict(found.letter),
        "created_at": _when(found.letter.created_at),
        "last_error": found.last_error,
        "raw_body": _text(found.raw_body),
        "segment_message": None if found.payload is None else _text(found.payload),
    }
    out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


def _text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


async def _replay(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:
    if not (args.ids or args.all or args.code or args.reason):
        out.write("name dead letter ids, or --all, --code CODE or --reason REASON\n")
        return 2
    chosen = await store.dead_letters(_filter(args))
    remap = remapper(config)
    replayed = still_dead = messages = 0
    with tqdm(total=len(chosen), unit="letter", disable=None, file=None) as bar:
        for start in range(0, len(chosen), REPLAY_CHUNK):
            chunk: Sequence[int] = [letter.id for letter in chosen[start : start + REPLAY_CHUNK]]
            outcome = await store.replay(DeadLetterFilter(ids=chunk), remap, time.time())
            replayed += outcome.replayed
            still_dead += outcome.still_dead
            messages += outcome.messages
            bar.update(len(chunk))
    out.write(
        f"replayed {replayed} dead letter(s) as {messages} message(s); "
        f"{still_dead} still cannot be mapped\n"
    )
    return 0


async def _purge(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:  # noqa: ARG001 - one signature for every command
    cutoff = time.time() - args.older_than
    if not (args.dry_run or args.yes or sys.stdin.isatty()):
        print(
            "synap-bridge: refusing to purge without confirmation: stdin is not a terminal. "
            "Pass --yes to delete, or --dry-run to see what would go.",
            file=sys.stderr,
        )
        return 2
    # The same selection as purge_dead: every dead letter created before the cutoff.
    every = await store.dead_letters(DeadLetterFilter())
    going = [letter for letter in every if letter.created_at < cutoff]
    before = _when(cutoff)
    if args.dry_run:
        _table(going, out)
        out.write(f"would purge {len(going)} dead letter(s) created before {before}\n")
        return 0
    if not going:
        out.write("purged 0 dead letter(s)\n")
        return 0
    question = f"Delete {len(going)} dead letter(s) created before {before}?"
    if not args.yes and not _confirm(question):
        out.write("nothing purged\n")
        return 1
    removed = await store.purge_dead(cutoff)
    out.write(f"purged {removed} dead letter(s)\n")
    return 0


def _confirm(question: str) -> bool:
    """Ask on the terminal (the question on stderr, so stdout stays the command's output)."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


async def _migrate(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:  # noqa: ARG001 - one signature for every command
    """Opening the store migrates it (under PostgreSQL's advisory lock, or SQLite's write
    lock); this command is for operators who apply schema changes before rolling out replicas."""
    versions = getattr(store, "schema_versions", None)
    where = describe(config.storage)
    if versions is None:
        out.write(f"schema of {where} is current\n")
    else:
        before, after = versions
        done = "already current" if before == after else f"migrated from version {before}"
        out.write(f"schema of {where} at version {after} ({done})\n")
    return 0
