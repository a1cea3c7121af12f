"""Lenient pydantic models of Synap's webhook bodies: validation that never fails.

Why lenient: Synap's documentation is inconsistent (undefined types, cut-off interfaces, a code
spelled two ways) and says nothing about nulls. A body is an authenticated fact we must not
throw away, so every field here is optional and every field type is wrapped in a validator
that turns what it cannot use into ``None`` (or an empty container) instead of an error: a
number where text was documented becomes text, text where a number was documented is parsed if
it can be, an object where a list was documented is ignored. Only the mapping decides
what is truly missing (above all: whose event it is), and says so with a precise reason.

Extra keys are ignored (``extra="ignore"``); free-form parts (custom attributes, ``attr``,
``tags``) are kept as plain dicts and cleaned by :func:`bridge.synap.values.clean` on the way out.

Scalars (and the lists of texts or raw items) use a "plain" validator: the ``as_*`` function's
result is the value, already of the declared type, so checking it again was pure cost. Free-form
objects keep a "before" validator, so pydantic still copies them and checks their keys.

Defaults that hold a container (a dict, a list, or a part that has one) are ``default_factory``
rather than a literal: pydantic deep-copies an unhashable literal default on every validation,
which was a measurable share of intake (and most of the cost of a sparse body).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator

from bridge.synap.values import (
    as_flag,
    as_id,
    as_list_or_none,
    as_number,
    as_object,
    as_objects,
    as_text,
    as_texts,
    as_time,
)

Text = Annotated[str | None, PlainValidator(as_text)]
Id = Annotated[str | None, PlainValidator(as_id)]
Num = Annotated[int | float | None, PlainValidator(as_number)]
Flag = Annotated[bool | None, PlainValidator(as_flag)]
Obj = Annotated[dict[str, Any], BeforeValidator(as_object)]
Texts = Annotated[list[str], PlainValidator(as_texts)]
Objs = Annotated[list[dict[str, Any]], BeforeValidator(as_objects)]
Raw = Annotated[Any, PlainValidator(as_time)]
Anything = Annotated[list[Any] | None, PlainValidator(as_list_or_none)]
#: A nested part: anything but an object validates as the empty part (all fields None).
_SUB = BeforeValidator(as_object)


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class User(Lenient):
    id: Id = None
    objectId: Id = None
    name: Text = None
    email: Text = None
    subPortalId: Id = None
    customAttributes: Obj = Field(default_factory=dict)


class Portal(Lenient):
    id: Id = None


class Meta(Lenient):
    timestamp: Raw = None
    eventName: Text = None


class Marks(Lenient):
    points: Num = None
    maxPoints: Num = None
    credits: Num = None
    penalties: Num = None


def as_grade(value: Any) -> dict[str, Any]:
    """A grade is documented as ``{label, minScore, isPass}``; a bare label is accepted too."""
    if isinstance(value, dict):
        return value
    text = as_text(value)
    return {"label": text} if text is not None else {}


def as_grade_criteria(value: Any) -> dict[str, Any]:
    return {"grades": value} if isinstance(value, list) else as_object(value)


class Grade(Lenient):
    label: Text = None
    minScore: Num = None
    isPass: Flag = None


def _grades(value: Any) -> list[Any]:
    """``gradeCriteria`` is documented as ``{grades: [grade]}``; a bare list is accepted too."""
    if isinstance(value, dict):
        value = value.get("grades")
    return [as_grade(item) for item in as_list_or_none(value) or []]


class GradeCriteria(Lenient):
    grades: Annotated[list[Grade], BeforeValidator(_grades)] = Field(default_factory=list)


class Results(Lenient):
    markingStatus: Text = None
    pendingMarks: Num = None
    status: Text = None


class Section(Lenient):
    sectionId: Id = None
    responseIds: Anything = None
    isCompleted: Flag = None
    totalQuestionsCompleted: Num = None
    totalQuestionsSkipped: Num = None
    timeSpentInMs: Num = None
    score: Num = None
    scoreFrac: Num = None
    totalCorrect: Num = None
    timeStarted: Raw = None
    timeCompleted: Raw = None
    marks: Annotated[Marks, _SUB] = Marks()


def _sections(value: Any) -> list[Any]:
    """``sections`` is documented as ``{items: [...]}``; a bare list is accepted too."""
    if isinstance(value, dict):
        value = value.get("items")
    return as_objects(value)


class Deferred(Lenient):
    locked: Flag = None


class State(Lenient):
    responseQuestionMap: Anything = None
    isRevoked: Flag = None
    isStarted: Flag = None
    timeStarted: Raw = None
    timeCompleted: Raw = None
    timeSpentInMs: Num = None
    results: Annotated[Results, _SUB] = Results()
    deferred: Annotated[Deferred, _SUB] = Deferred()
    sections: Annotated[list[Section], BeforeValidator(_sections)] = Field(default_factory=list)


class Test(Lenient):
    id: Id = None
    objectId: Id = None
    title: Text = None


class GroupRef(Lenient):
    id: Id = None
    objectId: Id = None
    name: Text = None

    def or_else(self, other: GroupRef) -> GroupRef:
        """This group when the body says anything about it, else ``other``: the one fallback for
        ``userGroup``, which Synap's docs put beside ``exam`` for some events and inside it for
        others (and leave unclear for some)."""
        return self if (self.id or self.objectId or self.name) else other


class Schedule(Lenient):
    openDate: Raw = None
    closeDate: Raw = None


class Exam(Lenient):
    id: Id = None
    objectId: Id = None
    name: Text = None
    url: Text = None
    resitCount: Num = None
    sourceTests: Texts = Field(default_factory=list)
    sectionGrades: Objs = Field(default_factory=list)
    userGroup: Annotated[GroupRef, _SUB] = GroupRef()
    schedule: Annotated[Schedule, _SUB] = Schedule()
    attr: Obj = Field(default_factory=dict)


class Audit(Lenient):
    finalisedBy: Text = None
    finalisedAt: Raw = None
    releasedBy: Text = None
    releasedAt: Raw = None


class Attempt(Lenient):
    id: Id = None
    isExam: Flag = None
    score: Num = None
    scoreFrac: Num = None
    totalQuestions: Num = None
    totalAnswered: Num = None
    totalAnsweredCorrectly: Num = None
    timeStarted: Raw = None
    timeCompleted: Raw = None
    timeSpentInMs: Num = None
    state: Annotated[State, _SUB] = Field(default_factory=State)
    marks: Annotated[Marks, _SUB] = Marks()
    tags: Obj = Field(default_factory=dict)
    grade: Annotated[Grade, BeforeValidator(as_grade)] = Grade()
    gradeCriteria: Annotated[GradeCriteria, BeforeValidator(as_grade_criteria)] = Field(
        default_factory=GradeCriteria
    )
    status: Text = None
    examStatus: Text = None
    proctorStatus: Text = None
    resitCount: Num = None
    audit: Annotated[Audit, _SUB] = Audit()
    user: Annotated[User, _SUB] = Field(default_factory=User)


class Certificate(Lenient):
    id: Id = None
    url: Text = None
    certificatePdfPath: Text = None


class Envelope(Lenient):
    """The common parts: whose event, on which portal, when."""

    user: Annotated[User, _SUB] = Field(default_factory=User)
    portal: Annotated[Portal, _SUB] = Portal()
    meta: Annotated[Meta, _SUB] = Meta()


class AttemptPayload(Envelope):
    """attempt.* / exam.* / exam results released, one model for all (the shapes overlap)."""

    id: Id = None
    score: Num = None
    scoreFrac: Num = None
    timeStarted: Raw = None
    timeCompleted: Raw = None
    timeSpentInMs: Num = None
    test: Annotated[Test, _SUB] = Test()
    attempt: Annotated[Attempt, _SUB] = Field(default_factory=Attempt)
    exam: Annotated[Exam, _SUB] = Field(default_factory=Exam)
    userGroup: Annotated[GroupRef, _SUB] = GroupRef()
    certificate: Annotated[Certificate, _SUB] = Certificate()


class OverrideValue(Lenient):
    oldValue: Num = None
    newValue: Num = None
    isOriginal: Flag = None


class OverridePayload(Envelope):
    actionType: Text = None
    score: Annotated[OverrideValue, _SUB] = OverrideValue()
    points: Annotated[OverrideValue, _SUB] = OverrideValue()
    credits: Annotated[OverrideValue, _SUB] = OverrideValue()
    penalties: Annotated[OverrideValue, _SUB] = OverrideValue()
    exam: Annotated[Exam, _SUB] = Field(default_factory=Exam)
    attempt: Annotated[Attempt, _SUB] = Field(default_factory=Attempt)


class CertificatePayload(Envelope):
    id: Id = None
    exam: Annotated[Exam, _SUB] = Field(default_factory=Exam)
    attempt: Annotated[Attempt, _SUB] = Field(default_factory=Attempt)
    test: Annotated[Test, _SUB] = Test()
    certificate: Annotated[Certificate, _SUB] = Certificate()


class FlatUserPayload(Envelope):
    """user.registered / user.updated: the user's own fields at the top level."""

    objectId: Id = None
    id: Id = None
    name: Text = None
    email: Text = None
    subPortalId: Id = None
    usergroups: Texts = Field(default_factory=list)
    timeRegistered: Raw = None
    customAttributes: Obj = Field(default_factory=dict)
    preferences: Obj = Field(default_factory=dict)


class GroupPayload(Envelope):
    """user.addedToGroup: the top-level keys describe the group."""

    objectId: Id = None
    name: Text = None
    description: Text = None
    totalUsers: Num = None
    isDefaultGroup: Flag = None
    userType: Text = None
    dateAdded: Raw = None
    moderators: Objs = Field(default_factory=list)


class ExamRegistrationPayload(Envelope):
    exam: Annotated[Exam, _SUB] = Field(default_factory=Exam)
    userGroup: Annotated[GroupRef, _SUB] = GroupRef()


class Named(Lenient):
    objectId: Id = None
    id: Id = None
    name: Text = None
    status: Text = None


class AssignmentPayload(Envelope):
    assignment: Annotated[Named, _SUB] = Named()
    assignmentGroup: Annotated[Named, _SUB] = Named()


class Question(Lenient):
    objectId: Id = None
    stem: Text = None
    url: Text = None


class FlagPayload(Envelope):
    objectId: Id = None
    planter: Annotated[User, _SUB] = Field(default_factory=User)
    comment: Text = None
    createdAt: Raw = None
    question: Annotated[Question, _SUB] = Question()
    test: Annotated[Test, _SUB] = Test()


class PurchasePayload(Envelope):
    objectId: Id = None
    title: Text = None
    shortDescription: Text = None
    purchaseMethod: Text = None
    purchasedAt: Raw = None
    unlockActions: Objs = Field(default_factory=list)
    price: Num = None
    revenue: Num = None
    currency: Text = None


class Invite(Lenient):
    objectId: Id = None
    expiryDate: Raw = None
    inviteEmail: Text = None
    targetId: Id = None
    personalMessage: Text = None
    totalTries: Num = None


class InvitePayload(Envelope):
    invite: Annotated[Invite, _SUB] = Invite()


class LearningRecord(Lenient):
    objectId: Id = None
    name: Text = None
    score: Num = None
    visibleToStudent: Flag = None
    achievedOn: Raw = None
    attr: Obj = Field(default_factory=dict)


class LearningRecordPayload(Envelope):
    learningRecord: Annotated[LearningRecord, _SUB] = Field(default_factory=LearningRecord)
