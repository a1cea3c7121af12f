"""The Synap event codes the bridge knows, in one tiny module with no imports of its own.

Why a module of its own: the configuration (``mapping.codes`` keys are checked at load) and the
mapping both need the list, and the configuration must not import the mapping. The code for
"exam results released" is not documented by Synap, so it is configurable
(``mapping.exam_results_released_code``) and not part of :data:`STATIC_CODES`.
"""

from __future__ import annotations

import re

ATTEMPT_STARTED = "attempt.started"
EXAM_STARTED = "exam.started"
ATTEMPT_SUBMITTED = "attempt.submitted"
EXAM_SUBMITTED = "exam.submitted"
ATTEMPT_COMPLETED = "attempt.completed"
EXAM_COMPLETED = "exam.completed"
ATTEMPT_OVERRIDE_CREATED = "attemptOverride.created"
ATTEMPT_CERTIFICATE_GENERATED = "attemptCertificate.generated"
USER_REGISTERED = "user.registered"
USER_UPDATED = "user.updated"
USER_ADDED_TO_GROUP = "user.addedToGroup"
USER_REGISTERED_FOR_EXAM = "user.registeredForExam"
ASSIGNMENT_COMPLETED = "assignment.completed"
#: The spelling used by Synap's API sample; accepted as a synonym of ``assignment.completed``.
ASSIGNMENT_COMPLETE = "assignment.complete"
FLAG_PLANTED = "flag.planted"
STORE_PURCHASE = "store.purchase"
INVITE_SENT = "invite.sent"
LEARNING_RECORD_CREATED = "learningRecord.created"

#: Every documented code, in the order of the mapping table (docs/mapping.md).
STATIC_CODES: tuple[str, ...] = (
    ATTEMPT_STARTED,
    EXAM_STARTED,
    ATTEMPT_SUBMITTED,
    EXAM_SUBMITTED,
    ATTEMPT_COMPLETED,
    EXAM_COMPLETED,
    USER_REGISTERED,
    USER_UPDATED,
    USER_ADDED_TO_GROUP,
    USER_REGISTERED_FOR_EXAM,
    ASSIGNMENT_COMPLETED,
    ASSIGNMENT_COMPLETE,
    ATTEMPT_OVERRIDE_CREATED,
    ATTEMPT_CERTIFICATE_GENERATED,
    FLAG_PLANTED,
    STORE_PURCHASE,
    INVITE_SENT,
    LEARNING_RECORD_CREATED,
)

DEFAULT_EXAM_RESULTS_RELEASED = "exam.resultsReleased"

#: What an event code looks like, the one rule for both places a code appears: the webhook
#: route's ``{code}`` segment (receive) and a configured code (config), which becomes such a
#: segment, so the two can never disagree. At most 100 characters.
CODE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
CODE_RE = re.compile(CODE_PATTERN)


def all_codes(exam_results_released_code: str) -> list[str]:
    """The documented codes plus the configured "exam results released" code."""
    return [*STATIC_CODES, exam_results_released_code]
