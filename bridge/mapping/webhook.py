"""Synap webhook -> Segment messages: the one entry point the receiver and the replay call.

Pure: no I/O, no clock (``received_at`` is passed in). The per-family mappers
(mapping_attempts, mapping_users, mapping_activity) turn a body into a :class:`Draft`; this
module applies everything generic once:

1. the code: known (else ``unknown_code``) and enabled (else ``code_disabled``: kept as a dead
   letter, replayable once re-enabled, rather than thrown away);
2. the portal: the body's ``portal.id``, else the URL's ``?portal=``, else
   ``mapping.default_portal_id``; the destination: bridge.mapping.routing;
3. per call: the per-code switches, the event rename, drops (global then per code), static
   additions (config wins over a mapped value of the same name);
4. the Segment envelope: ``userId``, a deterministic ``messageId`` (the body's own portal,
   family, natural id, call: never the URL's ``?portal=`` or the configured default, so a
   redelivery to a changed URL is still the same event), the event's own ``timestamp``, a copy
   of CONTEXT (plus ``groupId``, ``locale`` and, on tracks, the user's ``traits`` when known);
5. the size limit (bridge.mapping.sizing), with the reasons returned in ``Mapped.trimmed``;
6. the store hold and rank of the draft (exam attempts, bridge.mapping.attempts).

Any exception other than UnmappableError is a bug; it is still turned into a dead letter
(``mapping_failed``) so an authenticated webhook is never lost to it, and replay can map it again
once the bug is fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from bridge.config import CodeMapping, Config, MappingConfig
from bridge.errors import UnmappableError
from bridge.mapping.activity import (
    map_assignment,
    map_flag,
    map_invite,
    map_learning_record,
    map_purchase,
)
from bridge.mapping.attempts import map_attempt, map_certificate, map_override
from bridge.mapping.draft import Call, Draft
from bridge.mapping.exam_tests import NONE_KNOWN, ExamTest, KnownExamTests, is_exam_test, taught
from bridge.mapping.routing import route
from bridge.mapping.sizing import fitted
from bridge.mapping.traits import identify_call
from bridge.mapping.users import map_added_to_group, map_registered_for_exam, map_user
from bridge.messages import CONTEXT, OutgoingMessage, iso8601, message_id
from bridge.synap import codes
from bridge.synap.values import as_id, clean

Mapper = Callable[[str, Mapping[str, Any], datetime, MappingConfig], Draft]

MAPPERS: dict[str, Mapper] = {
    codes.ATTEMPT_STARTED: map_attempt,
    codes.EXAM_STARTED: map_attempt,
    codes.ATTEMPT_SUBMITTED: map_attempt,
    codes.EXAM_SUBMITTED: map_attempt,
    codes.ATTEMPT_COMPLETED: map_attempt,
    codes.EXAM_COMPLETED: map_attempt,
    codes.USER_REGISTERED: map_user,
    codes.USER_UPDATED: map_user,
    codes.USER_ADDED_TO_GROUP: map_added_to_group,
    codes.USER_REGISTERED_FOR_EXAM: map_registered_for_exam,
    codes.ASSIGNMENT_COMPLETED: map_assignment,
    codes.ASSIGNMENT_COMPLETE: map_assignment,
    codes.ATTEMPT_OVERRIDE_CREATED: map_override,
    codes.ATTEMPT_CERTIFICATE_GENERATED: map_certificate,
    codes.FLAG_PLANTED: map_flag,
    codes.STORE_PURCHASE: map_purchase,
    codes.INVITE_SENT: map_invite,
    codes.LEARNING_RECORD_CREATED: map_learning_record,
}
#: Where each call kind keeps its data in a Segment message.
FIELD = {"track": "properties", "identify": "traits", "group": "traits"}
#: The switches of a code with no ``mapping.codes`` entry (built once: a model is not free).
NO_SWITCHES = CodeMapping()
#: An event time further than this after its receipt is not believed: the receipt time is sent,
#: and the time the body gave is kept in ``context.futureTimestamp``.
FUTURE_SLACK = timedelta(days=1)
FUTURE_MARKER = "futureTimestamp"


class Mapped(NamedTuple):
    """What one webhook becomes. ``trimmed``: why something was cut to fit (caller logs it).

    A NamedTuple: immutable, and cheaper to build than a frozen dataclass (bridge.mapping.draft).
    """

    portal_id: str | None
    messages: list[OutgoingMessage]
    trimmed: list[str]
    #: ``(portal, test id)`` pairs this webhook says are exam tests (bridge.mapping.exam_tests):
    #: the caller stores them and passes them back as ``exam_tests`` for later webhooks.
    exam_tests: tuple[ExamTest, ...] = ()


def known_codes(config: Config) -> list[str]:
    """Every code the bridge accepts with this configuration (disabled ones included: they are
    accepted and kept as dead letters)."""
    return codes.all_codes(config.mapping.exam_results_released_code)


def map_webhook(
    code: str,
    payload: Mapping[str, Any],
    received_at: datetime,
    config: Config,
    portal_hint: str | None = None,
    *,
    exam_tests: KnownExamTests = NONE_KNOWN,
) -> Mapped:
    """The Segment messages for one Synap webhook; raises UnmappableError(code, detail).

    ``exam_tests``: the ``(portal, test id)`` pairs earlier ``exam.*`` webhooks named
    (``Mapped.exam_tests`` of those webhooks, as the store remembers them): an ``attempt.*``
    webhook of such a test is held for its ``exam.*`` twin whatever its ``isExam`` says.
    """
    try:
        return _map(code, payload, received_at, config, portal_hint, exam_tests)
    except UnmappableError:
        raise
    except Exception as exc:  # a bug must not lose the webhook: dead letter, replay after a fix
        detail = f"{type(exc).__name__} while mapping {code!r}: {exc}"
        raise UnmappableError("mapping_failed", detail[:500]) from exc


def _map(
    code: str,
    payload: Mapping[str, Any],
    received_at: datetime,
    config: Config,
    portal_hint: str | None,
    exam_tests: KnownExamTests,
) -> Mapped:
    settings = config.mapping
    if not isinstance(payload, Mapping):
        raise UnmappableError(
            "not_an_object", f"the body is a {type(payload).__name__}, not an object"
        )
    if code == settings.exam_results_released_code:
        mapper: Mapper = map_attempt
    elif code in MAPPERS:
        mapper = MAPPERS[code]
    else:
        raise UnmappableError(
            "unknown_code", f"{code!r} is not a Synap event code this bridge maps"
        )
    switches = settings.codes.get(code, NO_SWITCHES)
    if not switches.enabled:
        raise UnmappableError(
            "code_disabled", f"{code!r} is disabled by mapping.codes.{code}.enabled"
        )
    draft = mapper(code, payload, received_at, settings)
    portal = draft.portal_id or as_id(portal_hint) or settings.default_portal_id
    learned = taught(portal, draft.teaches)
    draft = _as_exam_attempt(draft, portal, exam_tests, settings)
    calls = [call for call in _calls(draft, settings) if getattr(switches, call.kind)]
    if not calls:
        return Mapped(portal, [], [], learned)
    destination = route(config.routing, portal, draft.sub_portal_id)
    future = _future(draft.timestamp, received_at)
    if future is not None:
        draft = draft._replace(timestamp=iso8601(received_at))
    messages, trimmed = [], []
    for call in calls:
        body = _message(call, draft, portal, switches, settings)
        if future is not None:
            body["context"][FUTURE_MARKER] = future
        serialised, cuts = fitted(
            body, FIELD[call.kind], call.essentials, expendable=call.expendable
        )
        trimmed.extend(cuts)
        messages.append(
            OutgoingMessage.build(
                destination, body, serialised, hold_secs=draft.hold_secs, rank=draft.rank
            )
        )
    return Mapped(portal, messages, trimmed, learned)


def _as_exam_attempt(
    draft: Draft, portal: str | None, exam_tests: KnownExamTests, settings: MappingConfig
) -> Draft:
    """An ``attempt.*`` draft of a test the portal's ``exam.*`` webhooks named is an exam
    attempt's, whatever its ``isExam`` says: held for its twin, or (``exam_attempts_from:
    exam_codes``) no call at all, the ``exam.*`` webhook making the event."""
    if not is_exam_test(exam_tests, portal, draft.exam_test_candidate):
        return draft
    if settings.exam_attempts_from == "exam_codes":
        return draft._replace(calls=[])
    return draft._replace(hold_secs=settings.exam_hold_secs)


def _future(timestamp: str, received_at: datetime) -> str | None:
    """The event's time when it is more than :data:`FUTURE_SLACK` after its receipt (a clock or
    a body gone wrong: a 2099 time would sort the event after everything else forever), else
    None. Both are canonical ISO-8601 UTC text, so they compare as text."""
    if timestamp <= iso8601(received_at + FUTURE_SLACK):
        return None
    return timestamp


def _calls(draft: Draft, settings: MappingConfig) -> list[Call]:
    """The draft's calls, plus the opt-in identify from an event body's user."""
    calls = list(draft.calls)
    traits = draft.user_traits
    if (
        settings.identify_from_events
        and traits
        and calls
        and not any(call.kind == "identify" for call in calls)
    ):
        calls.insert(0, identify_call(traits))
    return calls


def _message(
    call: Call, draft: Draft, portal: str | None, switches: CodeMapping, settings: MappingConfig
) -> dict[str, Any]:
    # A fresh two-level copy (the message is serialised at once and never shared); deepcopy
    # was a measurable share of intake in the profile.
    context: dict[str, Any] = {key: dict(value) for key, value in CONTEXT.items()}
    if draft.context_group_id is not None:
        context["groupId"] = draft.context_group_id
    if draft.locale is not None:
        context["locale"] = draft.locale
    if call.kind == "track" and settings.context_traits and draft.user_traits:
        # A copy for the destinations' benefit: no nulls (a null attribute would be copied onto
        # every track) and no empty texts. The identify keeps nulls: there a null is news.
        traits = _without(draft.user_traits, settings.drop_traits)
        context["traits"] = _sent(traits)
    body: dict[str, Any] = {
        "type": call.kind,
        "userId": draft.user_id,
        # The body's own portal only: the URL's ?portal= must not split one fact in two.
        "messageId": message_id(
            draft.portal_id or "", draft.family, *draft.natural, *call.natural, call.kind
        ),
        "timestamp": draft.timestamp,
        "context": context,
    }
    if call.kind == "track":
        body["event"] = (switches.event if call.renamable else None) or call.event
        body["properties"] = _properties(call.data, draft, portal, switches, settings)
    else:
        if call.kind == "group":
            body["groupId"] = call.group_id
        body["traits"] = _without(call.data, settings.drop_traits)
    return body


def _sent(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without None and blank texts, what a track sends. One comprehension with the
    test written out: a call per value was ~3 µs of an exam attempt's ~40 properties."""
    return {
        key: value
        for key, value in values.items()
        if value is not None and not (type(value) is str and not value.strip())
    }


def _without(traits: dict[str, Any], dropped: tuple[str, ...]) -> dict[str, Any]:
    if not dropped:
        return dict(traits)
    return {key: value for key, value in traits.items() if key not in dropped}


def _properties(
    data: dict[str, Any],
    draft: Draft,
    portal: str | None,
    switches: CodeMapping,
    settings: MappingConfig,
) -> dict[str, Any]:
    # No empty texts on a track: "" is no value (a body's blank field), not a fact.
    properties = _sent(data)
    if portal is not None:
        properties["portalId"] = portal
    if draft.sub_portal_id is not None:
        properties["subPortalId"] = draft.sub_portal_id
    if settings.drop_properties or switches.drop_properties:
        dropped = {*settings.drop_properties, *switches.drop_properties}
        properties = {key: value for key, value in properties.items() if key not in dropped}
    if settings.add_properties:
        properties.update(clean(settings.add_properties))
    if switches.add_properties:
        properties.update(clean(switches.add_properties))
    return properties
