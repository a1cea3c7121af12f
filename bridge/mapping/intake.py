"""From a kept webhook's raw bytes to what the store records: pure, no I/O, no clock.

The mapping stage (:mod:`bridge.mapper`), ``try --offline`` and the ``dead-letters replay``
command share this one path, so a replayed dead letter is mapped exactly as a fresh webhook
would be with the current configuration.

The webhook is already kept when this runs (the receiver commits the raw bytes and answers
before anything here looks at them), so every outcome is a verdict on a stored webhook:

- an :class:`Intake` with messages;
- an :class:`Intake` with a ``dead`` reason: not JSON or not an object (``invalid_json``,
  ``not_an_object``), unknown code, no user id, no destination, a ``meta.eventName`` that names
  another code than the URL... - a dead letter with its raw body, replayable.

Text that JSON allows but UTF-8 cannot carry (a lone surrogate escape such as ``"\ud83d"``,
what JavaScript writes when it cuts a string inside an emoji) and bytes that are not UTF-8
become U+FFFD, so the event still goes (:func:`decode`).

``event_name_mismatch`` is a dead letter, not a 400, because the code of "exam results released"
is not documented: a wrong guess in ``mapping.exam_results_released_code`` would otherwise lose
every such webhook once Synap gives up. On replay the body's own ``meta.eventName`` wins once
the configuration knows that code (e.g. after setting ``exam_results_released_code`` to it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.config import Config
from bridge.errors import InvalidPayloadError, UnmappableError
from bridge.mapping.exam_tests import NONE_KNOWN, ExamTest, KnownExamTests
from bridge.mapping.webhook import known_codes, map_webhook
from bridge.messages import OutgoingMessage
from bridge.store import DeadReason, Remapper, Webhook
from bridge.store.refs import refs_of
from bridge.synap import codes


@dataclass(frozen=True, slots=True)
class Intake:
    webhook: Webhook
    messages: list[OutgoingMessage]
    dead: DeadReason | None = None
    trimmed: list[str] = field(default_factory=list)
    #: ``(portal, test id)`` pairs this webhook named as exam tests: the caller stores them
    #: (``Store.learn_exam_tests``) and passes them back as ``exam_tests``
    #: (bridge.mapping.exam_tests).
    exam_tests: tuple[ExamTest, ...] = ()


def decode(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidPayloadError (``invalid_json`` / ``not_an_object``).

    orjson first (fast, strict); what it refuses is read again by the standard library, which
    accepts lone surrogate escapes, with bytes that are not UTF-8 replaced; every string that
    holds a lone surrogate then has it replaced by U+FFFD. Only text that is not JSON at all
    stays refused."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        payload = _lenient(raw, exc)
    if not isinstance(payload, dict):
        kind = type(payload).__name__ if payload is not None else "null"
        raise InvalidPayloadError("not_an_object", f"the body must be a JSON object, not {kind}")
    return payload


def _lenient(raw: bytes, refused: orjson.JSONDecodeError) -> Any:
    try:
        text = raw.decode("utf-8", "replace")
        return _replace_surrogates(json.loads(text))
    except (ValueError, RecursionError) as exc:
        detail = f"the body is not valid JSON ({refused})"
        raise InvalidPayloadError("invalid_json", detail) from exc


def _replace_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) as U+FFFD; valid pairs
    (which the standard library already joined) are untouched."""
    if isinstance(value, str):
        if not any("\ud800" <= char <= "\udfff" for char in value):
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    return value


def event_name(payload: Mapping[str, Any]) -> str | None:
    """``meta.eventName``, where Synap sends it."""
    meta = payload.get("meta")
    named = meta.get("eventName") if isinstance(meta, dict) else None
    return named if isinstance(named, str) and named else None


def check_event_name(code: str, payload: Mapping[str, Any]) -> DeadReason | None:
    """``meta.eventName``, where Synap sends it, must name the URL's code (aliases allowed)."""
    named = event_name(payload)
    if named is not None and _canonical(named) != _canonical(code):
        return DeadReason(
            "event_name_mismatch",
            f"the body's meta.eventName is {named[:100]!r} but it was posted to the URL for "
            f"{code!r}",
        )
    return None


_ALIASES = {codes.ASSIGNMENT_COMPLETE: codes.ASSIGNMENT_COMPLETED}


def _canonical(code: str) -> str:
    return _ALIASES.get(code, code)


def judge(
    code: str,
    raw: bytes,
    received_at: float,
    config: Config,
    portal_hint: str | None = None,
    exam_tests: KnownExamTests = NONE_KNOWN,
) -> Intake:
    """The verdict on one kept webhook: its messages, or a dead letter with the reason. Never
    raises for what the body says (a mapping *bug* still raises: the mapping stage counts it as
    a failed try)."""
    try:
        return process(code, raw, received_at, config, portal_hint, exam_tests=exam_tests)
    except InvalidPayloadError as exc:
        webhook = Webhook(code, portal_hint or config.mapping.default_portal_id, received_at, raw)
        return Intake(webhook, [], DeadReason(exc.code, exc.detail))


def process(
    code: str,
    raw: bytes,
    received_at: float,
    config: Config,
    portal_hint: str | None = None,
    *,
    exam_tests: KnownExamTests = NONE_KNOWN,
) -> Intake:
    """Decode, check and map one webhook. Raises InvalidPayloadError (not a JSON object).

    ``exam_tests``: what the store remembers of earlier exam.* webhooks (bridge.mapping.exam_tests).
    """
    payload = decode(raw)
    mismatch = check_event_name(code, payload)
    if mismatch is not None:
        portal = _portal_of(payload, portal_hint, config)
        webhook = Webhook(code, portal, received_at, raw, refs_of(payload))
        return Intake(webhook, [], mismatch)
    return _mapped(code, payload, raw, received_at, config, portal_hint, exam_tests)


def _mapped(
    code: str,
    payload: Mapping[str, Any],
    raw: bytes,
    received_at: float,
    config: Config,
    portal_hint: str | None,
    exam_tests: KnownExamTests = NONE_KNOWN,
) -> Intake:
    moment = datetime.fromtimestamp(received_at, UTC)
    try:
        mapped = map_webhook(code, payload, moment, config, portal_hint, exam_tests=exam_tests)
    except UnmappableError as exc:
        portal = _portal_of(payload, portal_hint, config)
        webhook = Webhook(code, portal, received_at, raw, refs_of(payload))
        return Intake(webhook, [], DeadReason(exc.code, exc.detail))
    webhook = Webhook(code, mapped.portal_id, received_at, raw, refs_of(payload))
    return Intake(webhook, mapped.messages, None, mapped.trimmed, mapped.exam_tests)


def _portal_of(payload: Mapping[str, Any], hint: str | None, config: Config) -> str | None:
    """Best-effort portal for a dead letter (so operators can filter); mapping is not needed."""
    portal = payload.get("portal")
    found = portal.get("id") if isinstance(portal, dict) else None
    if isinstance(found, str | int) and not isinstance(found, bool):
        return str(found)
    return hint or config.mapping.default_portal_id


def remapper(config: Config, exam_tests: KnownExamTests = NONE_KNOWN) -> Remapper:
    """What ``replay`` uses: the stored webhook mapped again with ``config`` (and the exam
    tests the store remembers, when the caller passes them)."""

    def remap(webhook: Webhook) -> Sequence[OutgoingMessage] | DeadReason:
        try:
            payload = decode(webhook.raw_body)
        except InvalidPayloadError as exc:
            return DeadReason(exc.code, exc.detail)
        code = webhook.code
        mismatch = check_event_name(code, payload)
        if mismatch is not None:
            named = event_name(payload)
            if named is None or named not in known_codes(config):
                return mismatch
            code = named  # the body's own name, now that the configuration maps it
        intake = _mapped(
            code,
            payload,
            webhook.raw_body,
            webhook.received_at,
            config,
            webhook.portal_id,
            exam_tests,
        )
        return intake.dead if intake.dead is not None else intake.messages

    return remap
