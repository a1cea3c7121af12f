"""Which tests are exam tests, as the bridge has learned it from ``exam.*`` webhooks.

Why: Synap documents ``attempt.isExam`` as the literal ``false`` on ``attempt.submitted`` and
``attempt.completed``, so an ``attempt.*`` body cannot be trusted to say it belongs to an exam.
What the bridge can know is which test ids the ``exam.*`` webhooks of a portal named (their
``test.id`` and ``exam.sourceTests``): an ``attempt.*`` webhook for one of those tests is held
for its ``exam.*`` twin whatever its ``isExam`` says (bridge.mapping.webhook), and a plain
attempt of any other test is never held.

Pure: the caller (the mapping stage) loads what the store remembers
(``Store.known_exam_tests``), passes it to the mapping, and stores what each mapped webhook
taught (``Intake.exam_tests``, ``Store.learn_exam_tests``). Keys are ``(portal, test id)``; the
portal is the webhook's resolved portal, ``""`` when it has none.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

#: A webhook names at most this many tests (``exam.sourceTests`` is the exam's list of tests):
#: an oversized list from a hostile body cannot grow the store without bound.
MAX_TAUGHT = 200

ExamTest = tuple[str, str]
#: What the mapping is given: any container of ``(portal, test id)`` (a set, a frozenset).
KnownExamTests = Collection[ExamTest]
NONE_KNOWN: frozenset[ExamTest] = frozenset()


def taught(portal: str | None, test_ids: Iterable[str | None]) -> tuple[ExamTest, ...]:
    """The ``(portal, test id)`` pairs an ``exam.*`` webhook teaches, in order, once each."""
    seen: dict[ExamTest, None] = {}
    for test_id in test_ids:
        if test_id:
            seen[(portal or "", test_id)] = None
            if len(seen) >= MAX_TAUGHT:
                break
    return tuple(seen)


def is_exam_test(known: KnownExamTests, portal: str | None, test_id: str | None) -> bool:
    return test_id is not None and (portal or "", test_id) in known
