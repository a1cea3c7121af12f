"""Issue 22, item 3: a redelivery is one event; a genuine second occurrence of a stage (a
re-mark, a re-release) reaches Segment too, with completions still counted once.

Per code (docs/mapping.md section 4): ``Completed Test`` is one per attempt (the first marking
that reaches the bridge); a marking after the submission (a manual marking, a re-mark) also sends
``Test Result Recorded``, one per distinct result, so an attempt's latest result is its newest
``Test Result Recorded`` (or its ``Completed Test`` when it has none). ``Exam Results Released``
is one per release (``audit.releasedAt``). Through a real ``serve`` to the strict fake Segment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge import config as config_module
from bridge.mapping.webhook import map_webhook
from tests.conftest import fixture_body
from tests.fakes import FakeSegment
from tests.serving import Serve

RECEIVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
RELEASED = "exam.resultsReleased"


def remarked(score: float, at: str) -> dict[str, Any]:
    """The fixture attempt's ``attempt.completed`` for a marking at ``at`` giving ``score``."""
    body = fixture_body("attempt.completed")
    body["score"] = body["attempt"]["score"] = score
    body["scoreFrac"] = body["attempt"]["scoreFrac"] = score / 100
    body["meta"]["timestamp"] = at
    return body


def released(grade: str, at: str) -> dict[str, Any]:
    body = fixture_body(RELEASED)
    body["attempt"]["grade"]["label"] = grade
    body["attempt"]["audit"]["releasedAt"] = at
    body["meta"]["timestamp"] = at
    return body


def events(code: str, body: dict[str, Any]) -> list[str]:
    config = config_module.parse({})
    return [m.message_id for m in map_webhook(code, body, RECEIVED, config).messages]


class TestMapping:
    def test_an_auto_marked_completion_is_one_event(self) -> None:
        assert len(events("attempt.completed", fixture_body("attempt.completed"))) == 1

    def test_a_later_marking_also_records_its_result(self) -> None:
        first, result = events("attempt.completed", remarked(70.8, "2024-05-16T10:00:00Z"))
        assert first == events("attempt.completed", fixture_body("attempt.completed"))[0]
        again = events("attempt.completed", remarked(83.3, "2024-05-20T10:00:00Z"))
        assert again[0] == first  # still one Completed Test per attempt
        assert again[1] != result  # a new result is a new event

    def test_the_exam_twin_of_a_marking_is_the_same_result(self) -> None:
        exam = fixture_body("exam.completed")
        exam["meta"]["timestamp"] = "2024-05-16T10:00:00Z"
        attempt = remarked(70.8, "2024-05-16T10:00:00.250Z")
        assert events("exam.completed", exam) == events("attempt.completed", attempt)

    def test_a_release_is_keyed_on_its_own_time(self) -> None:
        first = events(RELEASED, released("B", "2024-05-21T08:00:00Z"))
        redelivered = released("B", "2024-05-21T08:00:00Z")
        redelivered["meta"]["timestamp"] = "2024-05-21T08:00:31Z"  # re-stamped on a retry
        assert events(RELEASED, redelivered) == first
        assert events(RELEASED, released("A", "2024-05-28T08:00:00Z")) != first


class TestThroughServe:
    async def test_redelivery_once_second_occurrence_findable(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        async with Serve(tmp_path, fake_segment) as bridge:
            await bridge.post("attempt.completed", fixture_body("attempt.completed"))
            await bridge.post("attempt.completed", fixture_body("attempt.completed"))  # redelivery
            remark = remarked(83.3, "2024-05-20T10:00:00.000Z")
            await bridge.post("attempt.completed", remark)
            await bridge.post("attempt.completed", remark)  # redelivery of the re-mark
            await bridge.post(RELEASED, released("B", "2024-05-21T08:00:00.000Z"))
            await bridge.post(RELEASED, released("B", "2024-05-21T08:00:00.000Z"))
            await bridge.post(RELEASED, released("A", "2024-05-28T08:00:00.000Z"))
            await bridge.settle()
        [completed] = bridge.tracks("Completed Test")  # counted once
        assert completed["properties"]["score"] == 70.8
        [result] = bridge.tracks("Test Result Recorded")
        assert result["properties"]["score"] == 83.3  # the latest result is in Segment
        assert result["properties"]["attemptId"] == completed["properties"]["attemptId"]
        assert result["timestamp"] == "2024-05-20T10:00:00.000Z"
        releases = bridge.tracks("Exam Results Released")
        assert sorted(m["properties"]["grade"] for m in releases) == ["A", "B"]
        latest = max(releases, key=lambda m: m["timestamp"])
        assert latest["properties"]["grade"] == "A"
        assert fake_segment.accepted == fake_segment.unique  # nothing sent twice


#: Issue 22, item 4: code -> the object's own occurrence field and a second occurrence's value.
OWN_FIELDS: dict[str, tuple[tuple[str, ...], Any]] = {
    "user.registeredForExam": (("exam", "schedule", "openDate"), "2024-11-01T09:00:00.000Z"),
    "attemptCertificate.generated": (("attempt", "grade", "label"), "A"),
    "invite.sent": (("invite", "totalTries"), 2),
    "attemptOverride.created": (("score", "newValue"), 91),
}
EVENTS = {
    "user.registeredForExam": "Exam User Registered",
    "attemptCertificate.generated": "Certificate Generated",
    "invite.sent": "Invite Sent",
    "attemptOverride.created": "Test Result Overridden",
    "assignment.completed": "Assignment Completed",
}


def with_value(code: str, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    body = fixture_body(code)
    holder = body
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return body


async def test_ids_on_the_occurrence_field_not_meta_timestamp(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    """A retry re-stamped 31 s later is one event; the object's own new value is a second."""
    async with Serve(tmp_path, fake_segment) as bridge:
        for code in EVENTS:
            await bridge.post(code, fixture_body(code))
            restamped = fixture_body(code)
            restamped["meta"]["timestamp"] = "2024-12-31T23:59:31.000Z"
            await bridge.post(code, restamped)
            if code in OWN_FIELDS:
                await bridge.post(code, with_value(code, *OWN_FIELDS[code]))
        await bridge.settle()
    for code, event in EVENTS.items():
        assert len(bridge.tracks(event)) == (2 if code in OWN_FIELDS else 1), code
