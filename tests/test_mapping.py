"""The mapping of every documented Synap webhook, checked call by call against the table.

Bodies are the fixtures in bridge/synap/samples (one per code, shaped after Synap's documented
bodies). Expected values are written out literally, so a change in naming shows up here.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge import config as config_module
from bridge.config import Config
from bridge.errors import ConfigError, UnmappableError
from bridge.mapping.webhook import Mapped, known_codes, map_webhook
from bridge.messages import MAX_MESSAGE_BYTES, MAX_MESSAGE_ID_CHARS
from bridge.synap import samples
from bridge.synap.codes import STATIC_CODES
from bridge.synap.payloads import GroupRef
from tests.conftest import fixture_body

FIXTURES = Path(samples.__file__).parent
RECEIVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
RECEIVED_ISO = "2024-06-01T12:00:00.000Z"
RELEASED = "exam.resultsReleased"
ALL_CODES = [*STATIC_CODES, RELEASED]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STUDENT = "usr_7f3a9c21"


def load(code: str) -> dict[str, Any]:
    return fixture_body(code)


def cfg(**mapping: Any) -> Config:
    return config_module.parse({"mapping": mapping} if mapping else {})


def run(
    code: str, payload: Any, config: Config | None = None, hint: str | None = None
) -> list[dict[str, Any]]:
    mapped = map_webhook(code, payload, RECEIVED, config or cfg(), hint)
    return [check_message(message.payload) for message in mapped.messages]


def check_message(payload: bytes) -> dict[str, Any]:
    """Everything Segment requires of one message (segment-facts.md), asserted."""
    assert len(payload) <= MAX_MESSAGE_BYTES
    body: dict[str, Any] = orjson.loads(payload)
    assert body["type"] in ("identify", "track", "group")
    assert isinstance(body["userId"], str)
    assert body["userId"]
    assert isinstance(body["messageId"], str)
    assert 0 < len(body["messageId"]) <= MAX_MESSAGE_ID_CHARS
    assert ISO.match(body["timestamp"])
    assert body["context"]["library"]["name"] == "synap-segment-bridge"
    assert body["context"]["integration"]["name"] == "synap-segment-bridge"
    if body["type"] == "track":
        assert isinstance(body["event"], str)
        assert body["event"]
        assert isinstance(body["properties"], dict)
    else:
        assert isinstance(body["traits"], dict)
    if body["type"] == "group":
        assert isinstance(body["groupId"], str)
        assert body["groupId"]
    return body


ATTEMPT_KEYS = {"testId": "tst_biology_u3", "attemptId": "att_51c0e8", "portalId": "portal_kings"}
SCORES = {"score": 70.8, "scoreFrac": 0.708, "points": 17, "maxPoints": 24, "totalAnswered": 12}
EXAM = {"isExam": True, "examId": "exm_summer24", "examName": "Summer Mock Exams 2024 - Biology"}
GROUP = {"userGroupId": "grp_y11b", "userGroupName": "Year 11 Biology B"}
SUBMITTED_AT = "2024-05-14T09:41:27.880Z"  # attempt.timeCompleted: the submission itself
COMPLETED_AT = "2024-05-14T09:41:28.020Z"

#: code -> (userId, timestamp, [(type, event or groupId, expected subset of properties/traits)])
TABLE: dict[str, tuple[str, str, list[tuple[str, str | None, dict[str, Any]]]]] = {
    "attempt.started": (
        STUDENT,
        "2024-05-14T09:00:03.120Z",  # attempt.timeStarted, not meta.timestamp
        [
            (
                "track",
                "Began Test",
                {
                    **ATTEMPT_KEYS,
                    "isExam": False,
                    "totalQuestions": 12,
                    "timeStartedAt": "2024-05-14T09:00:03.120Z",
                    "subPortalId": "sub_north",
                    "tags": {
                        "nonFacetTags": ["revision"],
                        "skill": ["analysis"],
                        "difficulty": ["medium"],
                        "subtopic": ["osmosis", "diffusion"],
                        "topic": ["cell transport"],
                        "subject": ["biology"],
                        "module": ["unit-3"],
                        "exam": ["gcse"],
                    },
                },
            )
        ],
    ),
    "exam.started": (
        STUDENT,
        "2024-05-14T09:00:03.120Z",  # attempt.timeStarted, not meta.timestamp
        [("track", "Began Test", {**ATTEMPT_KEYS, **EXAM, **GROUP})],
    ),
    "attempt.submitted": (
        STUDENT,
        SUBMITTED_AT,
        [
            (
                "track",
                "Submitted Test",
                {
                    **ATTEMPT_KEYS,
                    **SCORES,
                    "isExam": False,
                    "totalAnsweredCorrectly": 9,
                    "timeSpentInMs": 2484760,
                    "timeCompletedAt": "2024-05-14T09:41:27.880Z",
                },
            )
        ],
    ),
    "attempt.completed": (
        STUDENT,
        COMPLETED_AT,
        [
            (
                "track",
                "Completed Test",
                {
                    **ATTEMPT_KEYS,
                    **SCORES,
                    "certificateUrl": "https://kings.synap.ac/certificates/crt_88e1",
                },
            )
        ],
    ),
    "exam.submitted": (
        STUDENT,
        SUBMITTED_AT,
        [("track", "Submitted Test", {**ATTEMPT_KEYS, **SCORES, **EXAM, **GROUP})],
    ),
    "exam.completed": (
        STUDENT,
        COMPLETED_AT,
        [
            (
                "track",
                "Completed Test",
                {**ATTEMPT_KEYS, **SCORES, **EXAM, **GROUP, "grade": "B", "isPass": True},
            )
        ],
    ),
    RELEASED: (
        STUDENT,
        "2024-05-21T08:00:00.000Z",
        [
            (
                "track",
                "Exam Results Released",
                {
                    **ATTEMPT_KEYS,
                    **EXAM,
                    "examStatus": "released",
                    "releasedAt": "2024-05-21T08:00:00.000Z",
                    "releasedBy": "usr_teacher01",
                    "examAttributes": {"room": "Hall B", "board": "AQA"},
                },
            )
        ],
    ),
    "attemptOverride.created": (
        STUDENT,
        "2024-05-16T13:12:45.000Z",
        [
            (
                "track",
                "Test Result Overridden",
                {
                    "attemptId": "att_51c0e8",
                    "examId": "exm_summer24",
                    "actionType": "manualOverride",
                    "oldScore": 70.8,
                    "newScore": 79.2,
                    "oldPoints": 17,
                    "newPoints": 19,
                    "oldCredits": 0,
                    "newCredits": 2,
                    "oldPenalties": 1,
                    "newPenalties": 0,
                },
            )
        ],
    ),
    "attemptCertificate.generated": (
        STUDENT,
        "2024-05-14T09:41:30.000Z",
        [
            (
                "track",
                "Certificate Generated",
                {"certificateId": "crt_88e1", "attemptId": "att_51c0e8", "grade": "B"},
            )
        ],
    ),
    "user.registered": (
        STUDENT,
        "2024-01-08T16:20:11.000Z",
        [
            (
                "identify",
                None,
                {
                    "name": "Amelia Hart",
                    "firstName": "Amelia",
                    "lastName": "Hart",
                    "email": "amelia.hart@example.org",
                    "createdAt": "2024-01-08T16:20:11.000Z",
                    "userGroups": ["grp_y11b", "grp_all_students"],
                    "EI-studentNumber": "S-104233",
                    "EI-yearGroup": 11,
                    "EI-tutor": None,
                },
            ),
            ("track", "User Registered", {"userGroups": ["grp_y11b", "grp_all_students"]}),
        ],
    ),
    "user.updated": (
        STUDENT,
        RECEIVED_ISO,
        [
            (
                "identify",
                None,
                {
                    "name": "Amelia Hart-Wilson",
                    "firstName": "Amelia",
                    "lastName": "Hart-Wilson",
                    "email": "amelia.hartwilson@example.org",
                    "EI-tutor": "Ms Reid",
                },
            )
        ],
    ),
    "user.addedToGroup": (
        STUDENT,
        "2024-01-09T08:30:00.000Z",
        [
            (
                "group",
                "grp_y11b",
                {
                    "name": "Year 11 Biology B",
                    "description": "Mrs Patel's Year 11 biology set",
                    "totalUsers": 28,
                    "userType": "<missing>",  # the member's type, not the group's
                    "isDefaultGroup": False,
                },
            ),
            (
                "track",
                "User Added to Group",
                {**GROUP, "portalId": "portal_kings", "userType": "learner"},
            ),
        ],
    ),
    "user.registeredForExam": (
        STUDENT,
        "2024-04-30T12:00:00.000Z",
        [
            (
                "track",
                "Exam User Registered",
                {
                    "examId": "exm_summer24",
                    "examName": "Summer Mock Exams 2024 - Biology",
                    "examOpenDate": "2024-05-14T09:00:00.000Z",
                    **GROUP,
                },
            )
        ],
    ),
    "assignment.completed": (
        STUDENT,
        "2024-03-02T18:45:10.000Z",
        [
            (
                "track",
                "Assignment Completed",
                {"assignmentId": "asg_homework12", "assignmentGroupId": "asgg_spring"},
            )
        ],
    ),
    "flag.planted": (
        STUDENT,
        "2024-05-14T09:12:40.000Z",
        [
            (
                "track",
                "Flag Planted",
                {"flagId": "flg_0c9d", "questionId": "q_0007", "testId": "tst_biology_u3"},
            )
        ],
    ),
    "store.purchase": (
        STUDENT,
        "2024-04-02T19:05:00.000Z",
        [
            (
                "track",
                "Order Completed",
                {
                    "products": [
                        {
                            "product_id": "prd_revision_pack",
                            "name": "GCSE Biology Revision Pack",
                            "description": "120 extra practice questions with worked answers",
                            "quantity": 1,
                        }
                    ],
                    "purchaseMethod": "credits",
                },
            )
        ],
    ),
    "invite.sent": (
        "usr_teacher01",
        "2024-05-01T07:59:00.000Z",
        [
            (
                "track",
                "Invite Sent",
                {"inviteId": "inv_31aa", "invitee_email": "new.student@example.org"},
            )
        ],
    ),
    "learningRecord.created": (
        STUDENT,
        "2024-04-21T10:00:00.000Z",
        [
            (
                "track",
                "Learning Record Created",
                {
                    "learningRecordId": "lr_5521",
                    "score": 92,
                    "hasFile": True,
                    "attributes": {"issuer": "St John Ambulance", "level": "Emergency"},
                },
            )
        ],
    ),
}
TABLE["assignment.complete"] = TABLE["assignment.completed"]


class TestTable:
    def test_every_known_code_has_a_fixture_and_a_row(self) -> None:
        assert sorted(known_codes(cfg())) == sorted(ALL_CODES)
        assert sorted(TABLE) == sorted(ALL_CODES)
        assert sorted(path.stem for path in FIXTURES.glob("*.json")) == sorted(ALL_CODES)

    @pytest.mark.parametrize("code", ALL_CODES)
    def test_expected_calls(self, code: str) -> None:
        user_id, timestamp, calls = TABLE[code]
        bodies = run(code, load(code))
        assert [body["type"] for body in bodies] == [call[0] for call in calls]
        for body, (kind, name, subset) in zip(bodies, calls, strict=True):
            assert body["userId"] == user_id
            assert body["timestamp"] == timestamp
            if kind == "track":
                assert body["event"] == name
            if kind == "group":
                assert body["groupId"] == name
            data = body["properties" if kind == "track" else "traits"]
            assert {key: data.get(key, "<missing>") for key in subset} == subset

    def test_exam_completed_fixture_is_realistic_in_size(self) -> None:
        assert 5_000 < (FIXTURES / "exam.completed.json").stat().st_size < 8_000

    def test_attempt_properties_are_compact_and_without_question_data(self) -> None:
        (body,) = run("exam.completed", load("exam.completed"))
        properties = body["properties"]
        assert "responseQuestionMap" not in properties
        assert all("responseIds" not in section for section in properties["sections"])
        assert properties["sections"][0] == {
            "sectionId": "sec_a",
            "isCompleted": True,
            "score": 75,
            "scoreFrac": 0.75,
            "totalCorrect": 5,
            "totalQuestionsCompleted": 15,
            "totalQuestionsSkipped": 0,
            "timeStartedAt": "2024-05-14T09:00:03.120Z",
            "timeCompletedAt": "2024-05-14T09:41:27.880Z",
            "timeSpentInMs": 1242380,
            "points": 9,
            "maxPoints": 12,
            "credits": 0,
            "penalties": 0,
        }
        assert "context" not in properties["tags"]  # empty tag lists are not sent
        assert body["context"]["groupId"] == "grp_y11b"

    def test_question_data_on_request(self) -> None:
        (body,) = run("exam.completed", load("exam.completed"), cfg(include_question_data=True))
        assert len(body["properties"]["responseQuestionMap"]) == 30
        assert len(body["properties"]["sections"][0]["responseIds"]) == 15

    def test_no_signed_file_url_leaves_a_learning_record(self) -> None:
        (body,) = run("learningRecord.created", load("learningRecord.created"))
        assert b"X-Amz-Signature" not in orjson.dumps(body)

    def test_purchase_has_a_stable_order_id_and_no_invented_revenue(self) -> None:
        (first,) = run("store.purchase", load("store.purchase"))
        (again,) = run("store.purchase", load("store.purchase"))
        assert first["properties"]["order_id"] == again["properties"]["order_id"]
        assert first["properties"]["order_id"].startswith("synap-")
        assert "revenue" not in first["properties"]
        assert "currency" not in first["properties"]
        priced = load("store.purchase") | {"price": 4.99, "currency": "GBP"}
        (body,) = run("store.purchase", priced)
        assert body["properties"]["revenue"] == 4.99
        assert body["properties"]["currency"] == "GBP"
        assert body["properties"]["products"][0]["price"] == 4.99


class TestIdempotency:
    @pytest.mark.parametrize("code", ALL_CODES)
    def test_redelivery_gives_the_same_messages(self, code: str) -> None:
        first = map_webhook(code, load(code), RECEIVED, cfg())
        again = map_webhook(code, load(code), RECEIVED, cfg())  # a replay of the stored webhook
        later = map_webhook(code, load(code), datetime(2025, 1, 1, tzinfo=UTC), cfg())
        assert [m.payload for m in first.messages] == [m.payload for m in again.messages]
        if code != "user.updated":  # the only code timed and identified by its receipt
            assert [m.payload for m in first.messages] == [m.payload for m in later.messages]

    @pytest.mark.parametrize("stage", ["started", "submitted", "completed"])
    def test_attempt_and_exam_webhooks_of_one_stage_are_one_event(self, stage: str) -> None:
        from_exam = run(f"exam.{stage}", load(f"exam.{stage}"))
        as_attempt = load(f"exam.{stage}")
        as_attempt["attempt"]["isExam"] = True
        from_attempt = run(f"attempt.{stage}", as_attempt)
        assert from_exam[0]["messageId"] == from_attempt[0]["messageId"]
        assert from_attempt[0]["properties"]["isExam"] is True

    def test_stages_of_one_attempt_are_distinct_events(self) -> None:
        ids = {
            run(f"attempt.{stage}", load(f"attempt.{stage}"))[0]["messageId"]
            for stage in ("started", "submitted", "completed")
        }
        ids.add(run(RELEASED, load(RELEASED))[0]["messageId"])
        assert len(ids) == 4

    def test_both_assignment_spellings_are_one_event(self) -> None:
        (a,) = run("assignment.completed", load("assignment.completed"))
        (b,) = run("assignment.complete", load("assignment.complete"))
        assert a["messageId"] == b["messageId"]

    def test_two_different_user_updates_are_two_events(self) -> None:
        first = load("user.updated")
        second = copy.deepcopy(first)
        second["name"] = "Amelia Wilson"
        (a,) = run("user.updated", first)
        (b,) = run("user.updated", second)
        (a_again,) = run("user.updated", dict(reversed(list(first.items()))))
        assert a["messageId"] != b["messageId"]
        assert a["messageId"] == a_again["messageId"]  # key order does not matter

    def test_an_invite_sent_again_is_a_new_event(self) -> None:
        again = load("invite.sent")
        again["invite"]["totalTries"] = 2
        assert (
            run("invite.sent", again)[0]["messageId"]
            != run("invite.sent", load("invite.sent"))[0]["messageId"]
        )

    def test_message_ids_differ_across_facts(self) -> None:
        ids = [body["messageId"] for code in ALL_CODES for body in run(code, load(code))]
        # The fixtures describe one attempt: attempt.X and exam.X of a stage are one fact (3),
        # and so are assignment.completed and assignment.complete (1).
        overlaps = 4
        assert len(set(ids)) == len(ids) - overlaps

    def test_exam_codes_only_leaves_exam_attempts_to_exam_webhooks(self) -> None:
        config = cfg(exam_attempts_from="exam_codes")
        exam_attempt = load("exam.completed")
        assert map_webhook("attempt.completed", exam_attempt, RECEIVED, config).messages == []
        (body,) = run("exam.completed", exam_attempt, config)
        assert body["properties"]["examName"] == "Summer Mock Exams 2024 - Biology"
        (plain,) = run("attempt.completed", load("attempt.completed"), config)
        assert plain["properties"]["isExam"] is False


class TestConfiguration:
    def test_rename_an_event(self) -> None:
        config = cfg(codes={"attempt.completed": {"event": "Test Finished"}})
        (body,) = run("attempt.completed", load("attempt.completed"), config)
        (default,) = run("attempt.completed", load("attempt.completed"))
        assert body["event"] == "Test Finished"
        assert body["messageId"] == default["messageId"]  # a rename is not a new fact

    def test_switch_off_a_code_keeps_it_as_a_dead_letter(self) -> None:
        config = cfg(codes={"flag.planted": {"enabled": False}})
        with pytest.raises(UnmappableError) as caught:
            map_webhook("flag.planted", load("flag.planted"), RECEIVED, config)
        assert caught.value.code == "code_disabled"

    @pytest.mark.parametrize(
        ("code", "switch", "left"),
        [
            ("user.registered", "track", ["identify"]),
            ("user.registered", "identify", ["track"]),
            ("user.addedToGroup", "group", ["track"]),
            ("user.addedToGroup", "track", ["group"]),
            ("attempt.started", "track", []),
        ],
    )
    def test_switch_off_one_call(self, code: str, switch: str, left: list[str]) -> None:
        config = cfg(codes={code: {switch: False}})
        assert [body["type"] for body in run(code, load(code), config)] == left

    def test_drop_and_add_properties(self) -> None:
        config = cfg(
            drop_properties=["testTitle"],
            add_properties={"source": "synap", "school": "Kings"},
            codes={
                "attempt.completed": {
                    "drop_properties": ["tags", "sections"],
                    "add_properties": {"school": "King's College"},
                }
            },
        )
        (body,) = run("attempt.completed", load("attempt.completed"), config)
        properties = body["properties"]
        assert not {"testTitle", "tags", "sections"} & set(properties)
        assert properties["source"] == "synap"
        assert properties["school"] == "King's College"  # per code wins over global
        (other,) = run("attempt.started", load("attempt.started"), config)
        assert "tags" in other["properties"]
        assert "testTitle" not in other["properties"]

    def test_drop_traits_for_privacy(self) -> None:
        config = cfg(drop_traits=["email", "EI-studentNumber", "description"])
        identify, _ = run("user.registered", load("user.registered"), config)
        assert "email" not in identify["traits"]
        assert "EI-studentNumber" not in identify["traits"]
        assert identify["traits"]["EI-cohort"] == "2024-A"
        group, _ = run("user.addedToGroup", load("user.addedToGroup"), config)
        assert "description" not in group["traits"]

    @pytest.mark.parametrize(("prefix", "name"), [("", "cohort"), ("synap_", "synap_cohort")])
    def test_trait_prefix(self, prefix: str, name: str) -> None:
        identify, _ = run("user.registered", load("user.registered"), cfg(trait_prefix=prefix))
        assert identify["traits"][name] == "2024-A"

    def test_empty_prefix_never_lets_an_attribute_override_a_native_trait(self) -> None:
        body = load("user.registered")
        body["customAttributes"]["email"] = "other@example.org"
        identify, _ = run("user.registered", body, cfg(trait_prefix=""))
        assert identify["traits"]["email"] == "amelia.hart@example.org"

    def test_exam_results_released_code_is_configurable(self) -> None:
        config = cfg(exam_results_released_code="exam.released")
        assert "exam.released" in known_codes(config)
        assert RELEASED not in known_codes(config)
        (body,) = run("exam.released", load(RELEASED), config)
        assert body["event"] == "Exam Results Released"
        with pytest.raises(UnmappableError) as caught:
            map_webhook(RELEASED, load(RELEASED), RECEIVED, config)
        assert caught.value.code == "unknown_code"

    @pytest.mark.parametrize(
        ("mapping", "key"),
        [
            ({"codes": {"attempt.complet": {}}}, "mapping.codes"),
            ({"codes": {"attempt.completed": {"evnet": "x"}}}, "mapping.codes.attempt.completed"),
            ({"codes": {"attempt.completed": {"event": ""}}}, "mapping.codes.attempt.completed"),
            ({"exam_results_released_code": "exam.completed"}, "exam_results_released_code"),
            ({"exam_results_released_code": "has space"}, "exam_results_released_code"),
            ({"exam_attempts_from": "sometimes"}, "exam_attempts_from"),
        ],
    )
    def test_bad_mapping_config_names_the_key(self, mapping: dict[str, Any], key: str) -> None:
        with pytest.raises(ConfigError) as caught:
            config_module.parse({"mapping": mapping})
        assert any(key in problem for problem in caught.value.problems), caught.value.problems

    def test_a_code_mapping_under_the_configured_released_code_is_accepted(self) -> None:
        config = cfg(exam_results_released_code="exam.released", codes={"exam.released": {}})
        assert "exam.released" in config.mapping.codes


class TestPortalAndReasons:
    def test_portal_precedence(self) -> None:
        config = cfg(default_portal_id="portal_default")
        assert map_webhook(
            "user.registered", load("user.registered"), RECEIVED, config
        ).portal_id == ("portal_default")
        hinted = map_webhook("user.registered", load("user.registered"), RECEIVED, config, "p_url")
        assert hinted.portal_id == "p_url"
        assert (
            run("user.registered", load("user.registered"), config, "p_url")[1]["properties"][
                "portalId"
            ]
            == "p_url"
        )
        own = map_webhook("attempt.started", load("attempt.started"), RECEIVED, config, "p_url")
        assert own.portal_id == "portal_kings"

    @pytest.mark.parametrize(
        ("code", "payload", "reason"),
        [
            ("no.such.code", {}, "unknown_code"),
            ("attempt.completed", ["not", "an", "object"], "not_an_object"),
            ("attempt.completed", {"attempt": {"id": "a"}}, "missing_user_id"),
            ("attempt.completed", {"user": {"id": "u"}}, "missing_natural_id"),
            ("user.registered", {"name": "No Id"}, "missing_user_id"),
            ("flag.planted", {"planter": {"name": "n"}, "objectId": "f"}, "missing_user_id"),
            ("user.addedToGroup", {"user": {"id": "u"}}, "missing_natural_id"),
        ],
    )
    def test_dead_letter_reasons(self, code: str, payload: Any, reason: str) -> None:
        with pytest.raises(UnmappableError) as caught:
            map_webhook(code, payload, RECEIVED, cfg())
        assert caught.value.code == reason
        assert caught.value.detail

    def test_mapped_shape(self) -> None:
        mapped = map_webhook("user.registered", load("user.registered"), RECEIVED, cfg())
        assert isinstance(mapped, Mapped)
        assert mapped.trimmed == []
        assert {message.destination for message in mapped.messages} == {"default"}
        assert {message.user_id for message in mapped.messages} == {STUDENT}


class TestUserGroupFallback:
    def test_the_top_level_group_wins_when_it_says_anything(self) -> None:
        top, nested = GroupRef(name="Year 11"), GroupRef(objectId="grp_nested")
        assert top.or_else(nested) is top
        assert GroupRef(id="grp_top").or_else(nested).id == "grp_top"
        assert GroupRef().or_else(nested) is nested
