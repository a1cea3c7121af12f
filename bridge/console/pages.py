"""What each page shows, read from the store's operator methods and the running delivery.

No HTML here (the templates), no request handling (``views``): plain values a template can
print, each value from a webhook left as it is so that Jinja2's autoescape escapes it.
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge import explain
from bridge.cli import events as events_cli
from bridge.config import DEFAULT_DESTINATION
from bridge.console.chart import Chart, draw
from bridge.console.traffic import Traffic
from bridge.receive.runtime import Runtime
from bridge.store import MESSAGE_STATES, DeadLetter, EventQuery, StoreStats
from bridge.store.rows import webhook_row

HOUR = 3600.0
SEARCH_LIMIT = 50
LETTERS_SHOWN = 500
#: The search form's fields (the options of ``synap-bridge events``).
SEARCH_FIELDS = ("user", "ref", "message_id", "code", "state", "since", "until")


@dataclass(frozen=True, slots=True)
class DestinationView:
    name: str
    state: str  # live, dry-run, paused
    paused_until: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Overview:
    stats: StoreStats
    received: int  # webhooks this process stored since it started
    now: float
    destinations: tuple[DestinationView, ...]
    chart: Chart
    intake: str  # "accepting" or why it refuses

    @property
    def dead(self) -> int:
        return sum(self.stats.dead_letters.values())

    @property
    def mapping_lag(self) -> float | None:
        oldest = self.stats.oldest_unmapped_at
        return None if oldest is None else max(0.0, self.now - oldest)


def destinations(runtime: Runtime, now: float) -> tuple[DestinationView, ...]:
    config = runtime.config
    names = [DEFAULT_DESTINATION, *config.routing.destinations]
    dry = set(config.dry_run_destinations)
    delivery = runtime.delivery
    errors = delivery.last_errors() if delivery is not None else {}
    views = []
    for name in names:
        until = delivery.paused_until(name) if delivery is not None and name in errors else None
        paused = until is not None and until > now
        state = "dry-run" if name in dry else "paused" if paused else "live"
        views.append(DestinationView(name, state, until if paused else None, errors.get(name)))
    return tuple(views)


async def overview(runtime: Runtime, traffic: Traffic) -> Overview:
    now = runtime.clock()
    stats = await runtime.store.stats(now - HOUR)
    minutes = traffic.last_hour()
    return Overview(
        stats=stats,
        received=traffic.received_total,
        now=now,
        destinations=destinations(runtime, now),
        chart=draw(minutes),
        intake=runtime.refusal() or "accepting",
    )


class SearchError(ValueError):
    """A search field the console cannot read (the message says which and why)."""


def search_query(form: Mapping[str, str]) -> EventQuery | None:
    """The search form as an :class:`EventQuery` (None when no field is filled: no search).

    ``since`` / ``until`` read as ``synap-bridge events`` reads them: a duration ago (``15m``,
    ``2h``, ``7d``) or an ISO-8601 time; anything else raises :class:`SearchError`.
    """

    def field(name: str) -> str | None:
        value = form.get(name, "").strip()
        return value[:500] or None

    def moment(name: str) -> float | None:
        text = field(name)
        if text is None:
            return None
        try:
            return events_cli.moment(text)
        except ArgumentTypeError as exc:
            raise SearchError(f"{name}: {exc}") from None

    state = field("state")
    query = EventQuery(
        user_id=field("user"),
        ref=field("ref"),
        message_id=field("message_id"),
        code=field("code"),
        state=state if state in MESSAGE_STATES else None,
        since=moment("since"),
        until=moment("until"),
        limit=SEARCH_LIMIT,
    )
    if query == EventQuery(limit=SEARCH_LIMIT):
        return None
    return query


def valid_webhook_id(text: str) -> bool:
    return webhook_row(text) is not None


def when(epoch: float | None) -> str:
    return explain.short_time(epoch)


def iso(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def age(seconds: float | None) -> str:
    """``4 s``, ``3 min``, ``2 h``: how long, for people."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def pretty(raw: bytes) -> str:
    """A JSON body indented for reading, or the bytes as text when it is not JSON."""
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def by_reason(letters: list[DeadLetter]) -> list[tuple[str, list[DeadLetter]]]:
    """Dead letters grouped by reason, the largest group first."""
    groups: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault(letter.reason, []).append(letter)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
