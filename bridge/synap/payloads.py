"""Lenient models of Synap's webhook bodies: reading that never fails.

Why lenient: Synap's documentation is inconsistent (undefined types, cut-off interfaces, a code
spelled two ways) and says nothing about nulls. A body is an authenticated fact we must not
throw away, so every field here is optional and read by a function that turns what it cannot
use into ``None`` (or an empty container) instead of an error: a number where text was
documented becomes text, text where a number was documented is parsed if it can be, an object
where a list was documented is ignored. Only the mapping decides what is truly missing (above
all: whose event it is), and says so with a precise reason.

Extra keys are ignored; free-form parts (custom attributes, ``attr``, ``tags``) are the body's
own dicts, cleaned by :func:`bridge.synap.values.clean` on the way out (the mapping only reads
them, so they are not copied).

The models are :class:`bridge.synap.lenient.Lenient` (one compiled reader per model), no longer
pydantic: every field was already read by a plain function, and pydantic's per-field call back
into Python was a quarter of an exam attempt's intake CPU (issue 16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from bridge.synap.lenient import Lenient, Reader, field
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

Text = Annotated[str | None, Reader(as_text, keep_ascii=True)]
Id = Annotated[str | None, Reader(as_id)]
Num = Annotated[int | float | None, Reader(as_number, keep_ints=True)]
Flag = Annotated[bool | None, Reader(as_flag, keep=(bool,))]
Obj = Annotated[dict[str, Any], Reader(as_object, keep=(dict,))]
Texts = Annotated[list[str], Reader(as_texts)]
Objs = Annotated[list[dict[str, Any]], Reader(as_objects)]
Raw = Annotated[Any, Reader(as_time, keep=(str, int, float))]
Anything = Annotated[list[Any] | None, Reader(as_list_or_none, keep=(list,))]

Model = TypeVar("Model", bound=Lenient)


def part(model: type[Model], shape: Callable[[Any], dict[str, Any]] = as_object) -> Reader:
    """A nested part: ``shape`` makes the value an object (by default anything but an object
    reads as the empty part, all fields None); it must pass a dict on unchanged, so a dict
    goes to the model's reader directly."""
    read = model.model_validate
    return Reader(lambda value: read(shape(value)), on_dict=read)


def parts(model: type[Model], items: Callable[[Any], list[dict[str, Any]]]) -> Reader:
    """A list of parts: ``items`` finds the list of objects (documented shapes vary)."""
    read = model.model_validate
    return Reader(lambda value: [read(item) for item in items(value)])


class User(Lenient):
    id: Id = None
    objectId: Id = None
    name: Text = None
    email: Text = None
    subPortalId: Id = None
    customAttributes: Obj = field(default_factory=dict)


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


def _grades(value: Any) -> list[dict[str, Any]]:
    """``gradeCriteria`` is documented as ``{grades: [grade]}``; a bare list is accepted too."""
    if isinstance(value, dict):
        value = value.get("grades")
    return [as_grade(item) for item in as_list_or_none(value) or []]


class GradeCriteria(Lenient):
    grades: Annotated[list[Grade], parts(Grade, _grades)] = field(default_factory=list)


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
    marks: Annotated[Marks, part(Marks)] = Marks()


def _sections(value: Any) -> list[dict[str, Any]]:
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
    results: Annotated[Results, part(Results)] = Results()
    deferred: Annotated[Deferred, part(Deferred)] = Deferred()
    sections: Annotated[list[Section], parts(Section, _sections)] = field(default_factory=list)


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
    sourceTests: Texts = field(default_factory=list)
    sectionGrades: Objs = field(default_factory=list)
    userGroup: Annotated[GroupRef, part(GroupRef)] = GroupRef()
    schedule: Annotated[Schedule, part(Schedule)] = Schedule()
    attr: Obj = field(default_factory=dict)


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
    state: Annotated[State, part(State)] = field(default_factory=State)
    marks: Annotated[Marks, part(Marks)] = Marks()
    tags: Obj = field(default_factory=dict)
    grade: Annotated[Grade, part(Grade, as_grade)] = Grade()
    gradeCriteria: Annotated[GradeCriteria, part(GradeCriteria, as_grade_criteria)] = field(
        default_factory=GradeCriteria
    )
    status: Text = None
    examStatus: Text = None
    proctorStatus: Text = None
    resitCount: Num = None
    audit: Annotated[Audit, part(Audit)] = Audit()
    user: Annotated[User, part(User)] = field(default_factory=User)


class Certificate(Lenient):
    id: Id = None
    url: Text = None
    certificatePdfPath: Text = None


class Envelope(Lenient):
    """The common parts: whose event, on which portal, when."""

    user: Annotated[User, part(User)] = field(default_factory=User)
    portal: Annotated[Portal, part(Portal)] = Portal()
    meta: Annotated[Meta, part(Meta)] = Meta()


class AttemptPayload(Envelope):
    """attempt.* / exam.* / exam results released, one model for all (the shapes overlap)."""

    id: Id = None
    score: Num = None
    scoreFrac: Num = None
    timeStarted: Raw = None
    timeCompleted: Raw = None
    timeSpentInMs: Num = None
    test: Annotated[Test, part(Test)] = Test()
    attempt: Annotated[Attempt, part(Attempt)] = field(default_factory=Attempt)
    exam: Annotated[Exam, part(Exam)] = field(default_factory=Exam)
    userGroup: Annotated[GroupRef, part(GroupRef)] = GroupRef()
    certificate: Annotated[Certificate, part(Certificate)] = Certificate()


class OverrideValue(Lenient):
    oldValue: Num = None
    newValue: Num = None
    isOriginal: Flag = None


class OverridePayload(Envelope):
    actionType: Text = None
    score: Annotated[OverrideValue, part(OverrideValue)] = OverrideValue()
    points: Annotated[OverrideValue, part(OverrideValue)] = OverrideValue()
    credits: Annotated[OverrideValue, part(OverrideValue)] = OverrideValue()
    penalties: Annotated[OverrideValue, part(OverrideValue)] = OverrideValue()
    exam: Annotated[Exam, part(Exam)] = field(default_factory=Exam)
    attempt: Annotated[Attempt, part(Attempt)] = field(default_factory=Attempt)


class CertificatePayload(Envelope):
    id: Id = None
    exam: Annotated[Exam, part(Exam)] = field(default_factory=Exam)
    attempt: Annotated[Attempt, part(Attempt)] = field(default_factory=Attempt)
    test: Annotated[Test, part(Test)] = Test()
    certificate: Annotated[Certificate, part(Certificate)] = Certificate()


class FlatUserPayload(Envelope):
    """user.registered / user.updated: the user's own fields at the top level."""

    objectId: Id = None
    id: Id = None
    name: Text = None
    email: Text = None
    subPortalId: Id = None
    usergroups: Texts = field(default_factory=list)
    timeRegistered: Raw = None
    customAttributes: Obj = field(default_factory=dict)
    preferences: Obj = field(default_factory=dict)


class GroupPayload(Envelope):
    """user.addedToGroup: the top-level keys describe the group."""

    objectId: Id = None
    name: Text = None
    description: Text = None
    totalUsers: Num = None
    isDefaultGroup: Flag = None
    userType: Text = None
    dateAdded: Raw = None
    moderators: Objs = field(default_factory=list)


class ExamRegistrationPayload(Envelope):
    exam: Annotated[Exam, part(Exam)] = field(default_factory=Exam)
    userGroup: Annotated[GroupRef, part(GroupRef)] = GroupRef()


class Named(Lenient):
    objectId: Id = None
    id: Id = None
    name: Text = None
    status: Text = None


class AssignmentPayload(Envelope):
    assignment: Annotated[Named, part(Named)] = Named()
    assignmentGroup: Annotated[Named, part(Named)] = Named()


class Question(Lenient):
    objectId: Id = None
    stem: Text = None
    url: Text = None


class FlagPayload(Envelope):
    objectId: Id = None
    planter: Annotated[User, part(User)] = field(default_factory=User)
    comment: Text = None
    createdAt: Raw = None
    question: Annotated[Question, part(Question)] = Question()
    test: Annotated[Test, part(Test)] = Test()


class PurchasePayload(Envelope):
    objectId: Id = None
    title: Text = None
    shortDescription: Text = None
    purchaseMethod: Text = None
    purchasedAt: Raw = None
    unlockActions: Objs = field(default_factory=list)
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
    invite: Annotated[Invite, part(Invite)] = Invite()


class LearningRecord(Lenient):
    objectId: Id = None
    name: Text = None
    score: Num = None
    visibleToStudent: Flag = None
    achievedOn: Raw = None
    attr: Obj = field(default_factory=dict)


class LearningRecordPayload(Envelope):
    learningRecord: Annotated[LearningRecord, part(LearningRecord)] = field(
        default_factory=LearningRecord
    )
