"""What the per-family mappers return, and the small helpers they share.

Why an intermediate "draft": the family mappers (mapping_attempts, mapping_users,
mapping_activity) only know Synap. They say *what happened* (whose event, which fact, when, which
calls with which data); bridge.mapping.webhook then applies everything generic in one place: the
configuration (renames, switches, drops, additions), the portal and routing, message ids, the
Segment envelope and the size limit. So a new event never re-implements any of that.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NamedTuple

from bridge.errors import UnmappableError
from bridge.messages import as_iso8601, iso8601

Kind = Literal["identify", "track", "group"]


class Call(NamedTuple):
    """One Segment call of a webhook, before configuration and envelope.

    A NamedTuple rather than a frozen dataclass (as for :class:`Draft`): as immutable, and built
    in about a third of the time, which counts once per webhook on the intake's thread (a frozen
    dataclass sets each field through ``object.__setattr__``).

    ``data`` is the track's properties or the identify/group traits. ``essentials`` are the keys
    that survive the last-resort trim (the ids that make the event useful).
    """

    kind: Kind
    data: dict[str, Any]
    event: str | None = None
    group_id: str | None = None
    essentials: tuple[str, ...] = ()
    #: Keys cut first when the message is too large (an identify's custom attributes).
    expendable: tuple[str, ...] = ()
    #: Whether ``mapping.codes.<code>.event`` renames this track (the code's main event only).
    renamable: bool = True
    #: Added to the draft's natural id for this call's messageId (a second event of one fact).
    natural: tuple[str, ...] = ()


class Draft(NamedTuple):
    """A webhook understood: whose fact it is, which fact (family + natural id), when, and calls.

    ``family`` and ``natural`` feed the messageId, so two webhooks describing the same fact must
    give the same pair (attempt.* and exam.* for one attempt and stage do).
    """

    user_id: str
    family: str
    natural: tuple[str, ...]
    timestamp: str
    calls: list[Call]
    portal_id: str | None = None
    sub_portal_id: str | None = None
    context_group_id: str | None = None
    #: The acting user's traits as the body describes them (``context.traits`` on tracks, and
    #: the opt-in identify from event bodies); None when the body has none for ``user_id``.
    user_traits: dict[str, Any] | None = None
    #: ``context.locale`` (the user's ``preferences.locale``), when the body says.
    locale: str | None = None
    #: Store hold and rank (bridge.messages.OutgoingMessage): an exam attempt's ``attempt.*``
    #: message waits for its richer ``exam.*`` twin.
    hold_secs: float = 0.0
    rank: int = 0
    #: The test id of an ``attempt.*`` webhook not held by its own ``isExam``: held after all
    #: when the ``exam.*`` webhooks of its portal named that test (bridge.mapping.exam_tests).
    exam_test_candidate: str | None = None
    #: The test ids an ``exam.*`` webhook names (``test.id``, ``exam.sourceTests``): exam tests.
    teaches: tuple[str, ...] = ()


def need(value: str | None, reason: str, detail: str) -> str:
    """The value, or the UnmappableError that says precisely what was missing."""
    if value is None:
        raise UnmappableError(reason, detail)
    return value


def user_id(*candidates: str | None, where: str) -> str:
    for candidate in candidates:
        if candidate is not None:
            return candidate
    raise UnmappableError("missing_user_id", f"no usable Synap user id in {where}")


def event_time(received_at: datetime, *candidates: Any) -> str:
    """The first candidate that parses as a time, else the receipt time (ISO-8601, UTC, ms)."""
    for candidate in candidates:
        text = as_iso8601(candidate)  # None also for e.g. year 9999 with a negative offset
        if text is not None:
            return text
    return iso8601(received_at)


def occurrence(*candidates: Any) -> str | None:
    """The occurrence's own time for a natural id, normalised (``…00Z`` and ``…00.000Z`` and
    ``+00:00`` are one instant, one id); None when no candidate parses.

    Why: deterministic ids must collapse redeliveries, never two occurrences of a repeatable
    event (a second group add, a resit, a resent invite), and the time Synap gives the
    occurrence is what tells them apart.
    """
    for candidate in candidates:
        moment = iso_or_none(candidate)
        if moment is not None:
            return moment
    return None


#: A payload time as ISO-8601 for a property, or None when it does not parse: the function
#: itself, not a wrapper (an exam attempt reads a dozen times, each a call more).
iso_or_none = as_iso8601


def first(*values: Any) -> Any:
    """The first value that is not None (Synap repeats some fields at two levels)."""
    for value in values:
        if value is not None:
            return value
    return None


def compact(data: dict[str, Any]) -> dict[str, Any]:
    """Without None values and empty lists/dicts: a missing optional part sends no key.

    A copy with those keys deleted rather than a comprehension that re-inserts every kept key:
    nearly every key is kept, and the copy is one C call where the comprehension spent about
    1,000 CPU instructions per key (callgrind); a dozen dicts per webhook made that a tenth of
    the mapping. The test is written out rather than ``value in (None, [], {})``, which compares
    every value with an empty list and dict: texts and numbers are settled by the cheap tests.
    """
    kept = data.copy()
    for key, value in data.items():
        if value is None or (not value and isinstance(value, (list, dict))):
            del kept[key]
    return kept
