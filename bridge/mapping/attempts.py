"""Attempts and exams: Began/Submitted/Completed Test, results released, overrides, certificates.

The one rule that shapes this module: ``attempt.*`` fires for every attempt, exams included, and
``exam.*`` fires again for exam attempts. Both webhooks of one attempt and stage map to the same
family (``test.<stage>``) and natural id (the attempt id), hence the same messageId, so the store
and Segment keep one event. Which one: the ``attempt.*`` message of an exam attempt
(``attempt.isExam``) is held in the store for ``mapping.exam_hold_secs`` at rank 0; the
``exam.*`` one has rank 1 and replaces it in place while it is still pending
(bridge.store.Store.enqueue), so the event carries the exam details whatever the order.
docs/mapping.md explains it, and the ``mapping.exam_attempts_from`` switch.

Times: each stage's own field first (``timeStarted`` for Began Test, ``timeCompleted`` - the
candidate's submission - for Submitted Test, ``audit.releasedAt`` for results released),
``meta.timestamp`` after it. Completed Test means "marking complete", which has no field of its
own: ``meta.timestamp`` first (for auto-marked attempts it equals the submission).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bridge.config import MappingConfig
from bridge.mapping.draft import (
    Call,
    Draft,
    compact,
    event_time,
    first,
    iso_or_none,
    need,
    occurrence,
    user_id,
)
from bridge.mapping.traits import event_user_traits
from bridge.synap import codes
from bridge.synap.payloads import (
    Attempt,
    AttemptPayload,
    CertificatePayload,
    Exam,
    Grade,
    GroupRef,
    Marks,
    OverridePayload,
    OverrideValue,
    State,
)
from bridge.synap.values import as_id, as_number, as_texts, clean, content_hash, safe_text

#: code -> (stage, default track event)
STAGES: dict[str, tuple[str, str]] = {
    codes.ATTEMPT_STARTED: ("started", "Began Test"),
    codes.EXAM_STARTED: ("started", "Began Test"),
    codes.ATTEMPT_SUBMITTED: ("submitted", "Submitted Test"),
    codes.EXAM_SUBMITTED: ("submitted", "Submitted Test"),
    codes.ATTEMPT_COMPLETED: ("completed", "Completed Test"),
    codes.EXAM_COMPLETED: ("completed", "Completed Test"),
}
ATTEMPT_CODES = (codes.ATTEMPT_STARTED, codes.ATTEMPT_SUBMITTED, codes.ATTEMPT_COMPLETED)
RESULTS_RELEASED = ("resultsReleased", "Exam Results Released")
ESSENTIALS = ("testId", "attemptId", "isExam", "examId")
RESULT_EVENT = "Test Result Recorded"
#: A completion this long after the submission is a marking of its own (bridge: _marked_later).
MARKING_GAP_SECS = 60.0
#: What a Test Result Recorded carries: which attempt, and its result.
RESULT_KEYS = (
    "testId",
    "attemptId",
    "isExam",
    "examId",
    "score",
    "scoreFrac",
    "points",
    "maxPoints",
    "credits",
    "penalties",
    "grade",
    "gradeMinScore",
    "isPass",
    "totalQuestions",
    "totalAnswered",
    "totalAnsweredCorrectly",
    "resultsStatus",
    "markingStatus",
    "pendingMarks",
    "resultsLocked",
    "timeCompletedAt",
)
#: The numbers that make a result distinct (both webhooks of one marking carry them).
RESULT_NUMBERS = (
    "score",
    "scoreFrac",
    "points",
    "maxPoints",
    "credits",
    "penalties",
    "pendingMarks",
)
#: Store ranks: the exam.* version of an attempt's event is the complete one.
ATTEMPT_RANK, EXAM_RANK = 0, 1
#: The documented numbers of a ``marks`` object (the fields of :class:`Marks`), in its order.
MARK_KEYS = tuple(Marks.model_fields)
#: ``state.results.status`` values that say pass / fail, for ``isPass`` when there is no grade.
PASS_STATUS = {"pass": True, "passed": True, "fail": False, "failed": False}


def map_attempt(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """attempt.* / exam.* / the exam results released code -> one track."""
    body = AttemptPayload.model_validate(payload)
    stage, event = STAGES.get(code, RESULTS_RELEASED)
    attempt = body.attempt
    state = attempt.state
    exam = body.exam
    who = user_id(body.user.id, attempt.user.id, where="user.id")
    attempt_id = need(
        first(attempt.id, body.id), "missing_natural_id", "no attempt id (attempt.id or id)"
    )
    from_exam_code = code not in ATTEMPT_CODES
    is_exam = first(attempt.isExam, True if from_exam_code else None)
    held = not from_exam_code and is_exam is True
    if settings.exam_attempts_from == "exam_codes" and is_exam is True and not from_exam_code:
        calls: list[Call] = []  # the exam.* webhook of this attempt makes the event
    else:
        data = _attempt_properties(body, attempt, state, exam, is_exam, settings)
        data.update(_stage_extras(stage, attempt, exam))
        calls = [Call("track", compact(data), event=event, essentials=ESSENTIALS)]
        if stage == "completed" and _marked_later(body, attempt, state):
            calls.append(_result_call(data))
    group = _group(body)
    test_id = first(body.test.id, body.test.objectId)
    return Draft(
        user_id=who,
        family=f"test.{stage}",
        natural=(attempt_id, *_release(stage, attempt, body, payload)),
        timestamp=event_time(received_at, *_time_candidates(stage, body, attempt, state)),
        calls=calls,
        portal_id=body.portal.id,
        sub_portal_id=body.user.subPortalId,
        context_group_id=first(group.id, group.objectId),
        user_traits=event_user_traits(body.user, settings.trait_prefix)
        if who == body.user.id
        else None,
        hold_secs=settings.exam_hold_secs if held else 0.0,
        rank=EXAM_RANK if from_exam_code else ATTEMPT_RANK,
        exam_test_candidate=test_id if not from_exam_code and not held and calls else None,
        teaches=_exam_tests(test_id, exam) if from_exam_code else (),
    )


def _exam_tests(test_id: str | None, exam: Exam) -> tuple[str, ...]:
    """The tests an ``exam.*`` webhook says are exam tests: its own and the exam's sources."""
    named = [test_id, *(as_id(item) for item in exam.sourceTests)]
    return tuple(item for item in named if item is not None)


def _release(
    stage: str, attempt: Attempt, body: AttemptPayload, payload: Mapping[str, Any]
) -> tuple[str, ...]:
    """What tells two releases of one attempt's results apart: ``audit.releasedAt`` (a
    re-release has a new one), else ``meta.timestamp``, else the body. Other stages: nothing
    (one Began/Submitted/Completed Test per attempt)."""
    if stage != RESULTS_RELEASED[0]:
        return ()
    return (occurrence(attempt.audit.releasedAt, body.meta.timestamp) or content_hash(payload),)


def _marked_later(body: AttemptPayload, attempt: Attempt, state: State) -> bool:
    """Whether this completion is a marking after the submission (a manual marking, a re-mark):
    ``meta.timestamp`` more than :data:`MARKING_GAP_SECS` after ``timeCompleted``. An
    auto-marked attempt is marked as it is submitted, and may not be marked again without a
    person, so its one Completed Test is its result."""
    marked = _moment(body.meta.timestamp)
    if marked is None:
        return False
    submitted = _moment(first(attempt.timeCompleted, body.timeCompleted, state.timeCompleted))
    return submitted is None or (marked - submitted).total_seconds() > MARKING_GAP_SECS


def _moment(value: Any) -> datetime | None:
    text = iso_or_none(value)
    return None if text is None else datetime.fromisoformat(text)


def _result_call(data: dict[str, Any]) -> Call:
    """``Test Result Recorded``: one per distinct result a marking after the submission gave,
    so a re-marked attempt's latest result reaches Segment while ``Completed Test`` stays one
    per attempt (counted once).

    Its id adds the result's own numbers (score, marks, pending marks), the fields both the
    ``attempt.*`` and the ``exam.*`` webhook of one marking carry: a redelivery and the exam
    twin collapse into one event, a re-mark that changes the result is a new one.
    """
    properties = compact({key: data.get(key) for key in RESULT_KEYS})
    numbers = [data.get(key) for key in RESULT_NUMBERS]
    result = "|".join("" if value is None else repr(value) for value in numbers)
    return Call(
        "track",
        properties,
        RESULT_EVENT,
        essentials=("testId", "attemptId"),
        renamable=False,
        natural=("result", result),
    )


def _group(body: AttemptPayload) -> GroupRef:
    """exam.completed has ``userGroup`` at the top level, exam.submitted inside ``exam``."""
    return body.userGroup.or_else(body.exam.userGroup)


def _time_candidates(stage: str, body: AttemptPayload, attempt: Attempt, state: State) -> list[Any]:
    meta = body.meta.timestamp
    started = [attempt.timeStarted, body.timeStarted, state.timeStarted]
    completed = [attempt.timeCompleted, body.timeCompleted, state.timeCompleted]
    if stage == "started":
        return [*started, meta]
    if stage == "submitted":
        return [*completed, meta]
    if stage == "completed":
        return [meta, *completed]
    return [attempt.audit.releasedAt, meta, *completed]


def _attempt_properties(
    body: AttemptPayload,
    attempt: Attempt,
    state: State,
    exam: Exam,
    is_exam: bool | None,
    settings: MappingConfig,
) -> dict[str, Any]:
    test = body.test
    group = _group(body)
    marks = attempt.marks
    grade = attempt.grade
    results = state.results
    status = (results.status or "").strip().lower()
    data: dict[str, Any] = {
        "testId": first(test.id, test.objectId),
        "testTitle": test.title,
        "attemptId": first(attempt.id, body.id),
        "isExam": is_exam,
        "examId": first(exam.id, exam.objectId),
        "examName": exam.name,
        "resitCount": first(attempt.resitCount, exam.resitCount),
        "sourceTests": exam.sourceTests,
        "examAttributes": clean(exam.attr),
        "userGroupId": first(group.id, group.objectId),
        "userGroupName": group.name,
        "score": first(attempt.score, body.score),
        "scoreFrac": first(attempt.scoreFrac, body.scoreFrac),
        "points": marks.points,
        "maxPoints": marks.maxPoints,
        "credits": marks.credits,
        "penalties": marks.penalties,
        "grade": grade.label,
        "gradeMinScore": grade.minScore,
        "isPass": first(grade.isPass, PASS_STATUS.get(status)),
        "gradeCriteria": [_grade(item) for item in attempt.gradeCriteria.grades],
        "totalQuestions": attempt.totalQuestions,
        "totalAnswered": attempt.totalAnswered,
        "totalAnsweredCorrectly": attempt.totalAnsweredCorrectly,
        "timeStartedAt": iso_or_none(
            first(attempt.timeStarted, body.timeStarted, state.timeStarted)
        ),
        "timeCompletedAt": iso_or_none(
            first(attempt.timeCompleted, body.timeCompleted, state.timeCompleted)
        ),
        "timeSpentInMs": first(attempt.timeSpentInMs, body.timeSpentInMs, state.timeSpentInMs),
        "isRevoked": state.isRevoked,
        "resultsLocked": state.deferred.locked,
        "resultsStatus": results.status,
        "markingStatus": results.markingStatus,
        "pendingMarks": results.pendingMarks,
        "certificateUrl": body.certificate.url,
        "tags": _tags(attempt.tags),
        "sections": [_section(section, settings) for section in state.sections],
        "sectionGrades": [_section_grade(item) for item in exam.sectionGrades],
    }
    if settings.include_question_data:
        data["responseQuestionMap"] = clean(state.responseQuestionMap)
    return data


def _tags(tags: dict[str, Any]) -> dict[str, list[str]]:
    """Each tag's texts; a tag with none is left out (one loop: what ``compact`` of a dict
    comprehension gave, without building the dict twice)."""
    found: dict[str, list[str]] = {}
    for key, value in tags.items():
        texts = as_texts(value)
        if texts:
            found[str(key)] = texts
    return found


def _section(section: Any, settings: MappingConfig) -> dict[str, Any]:
    marks = section.marks
    data = {
        "sectionId": section.sectionId,
        "isCompleted": section.isCompleted,
        "score": section.score,
        "scoreFrac": section.scoreFrac,
        "totalCorrect": section.totalCorrect,
        "totalQuestionsCompleted": section.totalQuestionsCompleted,
        "totalQuestionsSkipped": section.totalQuestionsSkipped,
        "timeStartedAt": iso_or_none(section.timeStarted),
        "timeCompletedAt": iso_or_none(section.timeCompleted),
        "timeSpentInMs": section.timeSpentInMs,
        "points": marks.points,
        "maxPoints": marks.maxPoints,
        "credits": marks.credits,
        "penalties": marks.penalties,
    }
    if settings.include_question_data:
        data["responseIds"] = clean(section.responseIds)
    return compact(data)


def _marks(value: object) -> dict[str, object]:
    """Marks with their documented numbers read as numbers (``"42"`` -> 42), like mapped fields:
    the reader of the :class:`Marks` model, applied to the four keys directly (building the model
    only to turn it back into a dict cost more than the reading)."""
    if not isinstance(value, dict):
        return {}
    marks: dict[str, object] = {}
    for key in MARK_KEYS:
        number = as_number(value.get(key))
        if number is not None:
            marks[key] = number
    return marks


def _section_grade(item: dict[str, object]) -> dict[str, object]:
    """``exam.sectionGrades[]`` ``{id, marks}``: the documented keys typed, others kept clean.

    One pass over the item, each key in its place (what ``clean(item)`` and then typing ``id``
    and ``marks`` over it gave, without cleaning the two typed values first). A cleaned key can
    never become ``id`` or ``marks``: cleaning only replaces lone surrogates, with ``?``.
    """
    typed: dict[str, object] = {}
    for key, value in item.items():
        if key == "marks":
            typed[key] = _marks(value)
        elif key == "id":
            typed[key] = as_id(value)
        else:
            typed[safe_text(str(key))] = clean(value, 1)
    return compact(typed)


def _grade(grade: Grade) -> dict[str, object]:
    return compact({"label": grade.label, "minScore": grade.minScore, "isPass": grade.isPass})


def _stage_extras(stage: str, attempt: Attempt, exam: Exam) -> dict[str, Any]:
    if stage != RESULTS_RELEASED[0]:
        return {}
    audit = attempt.audit
    return {
        "status": attempt.status,
        "examStatus": attempt.examStatus,
        "proctorStatus": attempt.proctorStatus,
        "finalisedBy": audit.finalisedBy,
        "finalisedAt": iso_or_none(audit.finalisedAt),
        "releasedBy": audit.releasedBy,
        "releasedAt": iso_or_none(audit.releasedAt),
    }


def map_override(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """attemptOverride.created -> track Test Result Overridden (old and new values).

    The attempt belongs to ``attempt.user``, the candidate: the event is theirs. The top-level
    ``user`` may be the admin who overrode; when it is someone else it is sent as
    ``overriddenBy`` ``{id, name}``.
    """
    body = OverridePayload.model_validate(payload)
    attempt = body.attempt
    candidate = attempt.user
    who = user_id(candidate.id, candidate.objectId, body.user.id, where="attempt.user.id")
    attempt_id = need(attempt.id, "missing_natural_id", "no attempt.id")
    meta_time = body.meta.timestamp
    moment = _override_values(body) or occurrence(meta_time) or content_hash(payload)
    actor = body.user
    by = compact({"id": actor.id, "name": actor.name}) if actor.id not in (None, who) else {}
    data: dict[str, Any] = {
        "attemptId": attempt_id,
        "examId": first(body.exam.id, body.exam.objectId),
        "examAttributes": clean(body.exam.attr),
        "actionType": body.actionType,
        "overriddenBy": by,
    }
    for name in ("score", "points", "credits", "penalties"):
        value: OverrideValue = getattr(body, name)
        title = name[0].upper() + name[1:]
        data[f"old{title}"] = value.oldValue
        data[f"new{title}"] = value.newValue
        data[f"{name}IsOriginal"] = value.isOriginal
    return Draft(
        user_id=who,
        family="test.overridden",
        natural=(attempt_id, moment),
        timestamp=event_time(received_at, meta_time),
        calls=[Call("track", compact(data), "Test Result Overridden", essentials=("attemptId",))],
        portal_id=body.portal.id,
        sub_portal_id=first(candidate.subPortalId, body.user.subPortalId if not by else None),
        user_traits=event_user_traits(
            candidate if who == candidate.id else actor, settings.trait_prefix
        ),
    )


def _override_values(body: OverridePayload) -> str | None:
    """What tells two overrides of one attempt apart: the override itself (its action and the
    old and new values: a second override starts from the first one's new values). None when
    the body has none of them (then ``meta.timestamp``, then the body)."""
    parts: list[object] = [body.actionType]
    for name in ("score", "points", "credits", "penalties"):
        value: OverrideValue = getattr(body, name)
        parts += [value.oldValue, value.newValue, value.isOriginal]
    if all(part is None for part in parts):
        return None
    return "|".join("" if part is None else repr(part) for part in parts)


def map_certificate(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """attemptCertificate.generated -> track Certificate Generated."""
    body = CertificatePayload.model_validate(payload)
    attempt = body.attempt
    who = user_id(body.user.id, attempt.user.id, where="user.id")
    certificate_id = need(
        first(body.id, body.certificate.id), "missing_natural_id", "no certificate id (id)"
    )
    grade = attempt.grade
    data: dict[str, Any] = {
        "certificateId": certificate_id,
        "attemptId": attempt.id,
        "examId": first(body.exam.id, body.exam.objectId),
        "examAttributes": clean(body.exam.attr),
        "testId": first(body.test.id, body.test.objectId),
        "grade": grade.label,
        "gradeMinScore": grade.minScore,
        "isPass": grade.isPass,
        "certificateUrl": body.certificate.url,
    }
    return Draft(
        user_id=who,
        family="certificate.generated",
        # The certificate's own id, and what it certifies (a certificate generated again
        # after a re-grade is a new event); meta.timestamp may be re-stamped on a retry.
        natural=(certificate_id, attempt.id or "-", grade.label or "-"),
        timestamp=event_time(received_at, body.meta.timestamp),
        calls=[
            Call("track", compact(data), "Certificate Generated", essentials=("certificateId",))
        ],
        portal_id=body.portal.id,
        sub_portal_id=body.user.subPortalId,
        user_traits=event_user_traits(body.user, settings.trait_prefix)
        if who == body.user.id
        else None,
    )
