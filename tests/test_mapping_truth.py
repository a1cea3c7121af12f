"""What reaches Segment is the whole truth (issue 13, items 2-13, and issue 12 item 16).

Bodies are the documented-shape fixtures (``fixture_body``), changed only where an item needs
it. Each class names its item. Mapping is checked as pure functions; the sequences of items 2
and 3 also go through the real app, a real SQLite file and the strict fake Segment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge import config as config_module
from bridge.app import build_app
from bridge.config import Config
from bridge.mapping import intake
from bridge.mapping.draft import iso_or_none
from bridge.mapping.webhook import map_webhook
from bridge.messages import MAX_MESSAGE_BYTES
from bridge.store import DeadLetterFilter
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import basic_auth, fixture_body
from tests.fakes import FakeSegment
from tests.test_end_to_end import stored

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
RECEIVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
STUDENT = "usr_7f3a9c21"
ADMIN = "usr_admin_9"


def cfg(**mapping: Any) -> Config:
    return config_module.parse({"mapping": mapping} if mapping else {})


def messages(
    code: str,
    body: dict[str, Any],
    config: Config | None = None,
    received: datetime = RECEIVED,
    hint: str | None = None,
) -> list[dict[str, Any]]:
    mapped = map_webhook(code, body, received, config or cfg(), hint)
    for message in mapped.messages:
        assert len(message.payload) <= MAX_MESSAGE_BYTES
    return [orjson.loads(message.payload) for message in mapped.messages]


def track(code: str, body: dict[str, Any], config: Config | None = None) -> dict[str, Any]:
    [found] = [
        m
        for m in messages(code, body, config)
        if m["type"] == "track" and m["event"] != "Test Result Recorded"
    ]
    return found


async def post(client: Client, code: str, body: dict[str, Any]) -> int:
    """Post one webhook; once mapped, how many messages it stored."""
    response = await client.post(f"/webhooks/synap/{code}", json=body, headers=basic_auth())
    assert response.status == 200, await response.text()
    return await stored(client, (await response.json())["webhook_id"])


class TestUserUpdatedKeepsEveryChange:
    """Item 2: A→B, B→A, A→B are three identifies; only a replay of one stored webhook collapses."""

    def update(self, name: str, previous: str) -> dict[str, Any]:
        body = fixture_body("user.updated")
        body["name"], body["previousValues"]["name"] = name, previous
        return body

    def test_three_changes_are_three_events(self) -> None:
        a_to_b, b_to_a, a_to_b_again = (
            messages("user.updated", self.update(new, old), received=RECEIVED.replace(minute=m))
            for new, old, m in (("B", "A", 1), ("A", "B", 2), ("B", "A", 3))
        )
        ids = {a_to_b[0]["messageId"], b_to_a[0]["messageId"], a_to_b_again[0]["messageId"]}
        assert len(ids) == 3
        assert a_to_b_again[0]["traits"]["name"] == "B"

    def test_a_replay_of_the_stored_webhook_is_the_same_event(self) -> None:
        first = messages("user.updated", self.update("B", "A"))
        replayed = messages("user.updated", self.update("B", "A"))  # same receipt time
        assert first == replayed

    async def test_segment_ends_with_the_last_values(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        client = await aiohttp_client(build_app(config_factory(fake_segment.url)))
        for new, old in (("B", "A"), ("A", "B"), ("B", "A")):
            assert await post(client, "user.updated", self.update(new, old)) == 1
        await fake_segment.wait_for(3)
        names = [m["traits"]["name"] for m in fake_segment.messages]
        assert names == ["B", "A", "B"]
        assert fake_segment.unique == 3


#: code -> (the field that makes a second occurrence, its new value): the object's own
#: occurrence field (issue 22, item 4), never ``meta.timestamp`` where the body has one.
REPEATS: dict[str, tuple[tuple[str, ...], Any]] = {
    "user.addedToGroup": (("dateAdded",), "2024-09-02T08:00:00.000Z"),
    "user.registeredForExam": (("exam", "schedule", "openDate"), "2024-11-01T09:00:00.000Z"),
    "attemptCertificate.generated": (("attempt", "grade", "label"), "A"),
    "invite.sent": (("invite", "totalTries"), 2),
}
#: code -> a redelivery re-stamped by Synap (a later ``meta.timestamp``, same occurrence).
RESTAMPED = (*sorted(REPEATS), "assignment.completed", "attemptOverride.created")


def again(code: str) -> dict[str, Any]:
    body = fixture_body(code)
    path, value = REPEATS[code]
    holder = body
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return body


class TestRepeatableEvents:
    """Item 3: a second occurrence (new dateAdded, resit, resent invite...) is a new event."""

    @pytest.mark.parametrize("code", sorted(REPEATS))
    def test_a_second_occurrence_is_a_new_event(self, code: str) -> None:
        first = {m["messageId"] for m in messages(code, fixture_body(code))}
        second = {m["messageId"] for m in messages(code, again(code))}
        assert first.isdisjoint(second)

    @pytest.mark.parametrize("code", RESTAMPED)
    def test_a_restamped_redelivery_is_the_same_event(self, code: str) -> None:
        body = fixture_body(code)
        body["meta"]["timestamp"] = "2024-12-31T23:59:31.000Z"
        first = {m["messageId"] for m in messages(code, fixture_body(code))}
        assert {m["messageId"] for m in messages(code, body)} == first

    @pytest.mark.parametrize("code", sorted(REPEATS))
    def test_a_redelivery_is_the_same_event(self, code: str) -> None:
        later = RECEIVED.replace(year=2025)
        first = messages(code, fixture_body(code))
        redelivered = messages(code, fixture_body(code), received=later)
        assert [m["messageId"] for m in first] == [m["messageId"] for m in redelivered]

    async def test_segment_gets_both_occurrences_once(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        client = await aiohttp_client(build_app(config_factory(fake_segment.url)))
        sent = 0
        for code in sorted(REPEATS):
            sent += await post(client, code, fixture_body(code))
            sent += await post(client, code, again(code))
            assert await post(client, code, again(code)) == 0  # redelivery
        await fake_segment.wait_for(sent)
        events = [m.get("event") or m["type"] for m in fake_segment.messages]
        for event in ("User Added to Group", "Exam User Registered", "Invite Sent"):
            assert events.count(event) == 2
        assert fake_segment.unique == fake_segment.accepted == sent


class TestOverrideUser:
    """Item 4: an override is the candidate's event; the admin who made it is ``overriddenBy``."""

    def test_keyed_on_the_candidate(self) -> None:
        body = fixture_body("attemptOverride.created")
        body["user"] = {"id": ADMIN, "name": "Exam Officer", "email": "officer@example.org"}
        event = track("attemptOverride.created", body)
        assert event["userId"] == STUDENT
        assert event["properties"]["overriddenBy"] == {"id": ADMIN, "name": "Exam Officer"}
        assert event["context"]["traits"]["email"] == "amelia.hart@example.org"

    def test_no_overridden_by_when_the_user_is_the_candidate(self) -> None:
        event = track("attemptOverride.created", fixture_body("attemptOverride.created"))
        assert event["userId"] == STUDENT
        assert "overriddenBy" not in event["properties"]


class TestTruncationMarker:
    """Item 5: a cut event says what was cut and how many items it had."""

    def test_section_grades_cut_are_counted(self) -> None:
        body = fixture_body("exam.completed")
        body["exam"]["sectionGrades"] = [
            {"id": f"sec_{i:04d}", "marks": {"points": i, "maxPoints": 100}, "note": "n" * 60}
            for i in range(400)
        ]
        event = track("exam.completed", body)
        assert event["context"]["truncated"]["sectionGrades"] == 400
        assert 0 < len(event["properties"]["sectionGrades"]) < 400

    def test_an_uncut_event_has_no_marker(self) -> None:
        event = track("exam.completed", fixture_body("exam.completed"))
        assert "truncated" not in event["properties"]
        assert "truncated" not in event["context"]


class TestIdentifyKeepsNativeTraits:
    """Item 6: 150 custom attributes of 400 characters no longer leave ``traits: {}``."""

    def test_native_traits_survive_and_the_cut_is_marked(self) -> None:
        body = fixture_body("user.registered")
        body["customAttributes"] = {f"attr{i:03d}": "v" * 400 for i in range(150)}
        identify = messages("user.registered", body)[0]
        traits = identify["traits"]
        assert traits["email"] == "amelia.hart@example.org"
        assert (traits["firstName"], traits["lastName"]) == ("Amelia", "Hart")
        assert traits["createdAt"] == "2024-01-08T16:20:11.000Z"
        kept = [key for key in traits if key.startswith("EI-")]
        assert 40 < len(kept) < 150  # as many attributes as fit, not none
        assert "truncated" not in traits
        marker = identify["context"]["truncated"]
        named = {key for key in marker if key != "otherKeys"}
        assert not named & set(kept)  # a trait cut is left out whole, never shortened
        assert len(named) + marker["otherKeys"] + len(kept) == 150


class TestEventTimes:
    """Item 7: each event's own time field, not when Synap stamped the webhook."""

    @pytest.mark.parametrize(
        ("code", "field", "expected"),
        [
            ("attempt.started", ("attempt", "timeStarted"), "2024-05-14T09:00:03.120Z"),
            ("exam.started", ("attempt", "timeStarted"), "2024-05-14T09:00:03.120Z"),
            ("attempt.submitted", ("attempt", "timeCompleted"), "2024-05-14T09:41:27.880Z"),
            (
                "exam.resultsReleased",
                ("attempt", "audit", "releasedAt"),
                "2024-05-21T08:00:00.000Z",
            ),
            ("user.addedToGroup", ("dateAdded",), "2024-01-09T08:30:00.000Z"),
            ("user.registered", ("timeRegistered",), "2024-01-08T16:20:11.000Z"),
        ],
    )
    def test_own_time_field_first(self, code: str, field: tuple[str, ...], expected: str) -> None:
        body = fixture_body(code)
        node: Any = body
        for part in field:
            node = node[part]
        assert iso_or_none(node) == expected  # the field named is the one that gives the time
        if isinstance(body.get("meta"), dict):
            body["meta"]["timestamp"] = "2030-01-01T00:00:00Z"  # never the webhook's stamp
        assert messages(code, body)[-1]["timestamp"] == expected


class TestEventNameMismatch:
    """Item 8: kept (200), a dead letter, and replayed once the configuration maps the code."""

    async def test_dead_letter_then_replay(self, tmp_path: Path) -> None:
        body = fixture_body("exam.resultsReleased")
        body["meta"]["eventName"] = "exam.released"  # Synap's real code, unknown to our guess
        raw = json.dumps(body).encode()
        result = intake.process("exam.resultsReleased", raw, 1000.0, cfg())
        assert result.dead is not None
        assert result.dead.reason == "event_name_mismatch"
        store = SQLiteStore(tmp_path / "bridge.db")
        await store.open()
        try:
            await store.enqueue(result.webhook, result.messages, result.dead)
            which = DeadLetterFilter(reason="event_name_mismatch")
            still = await store.replay(which, intake.remapper(cfg()), now=1001.0)
            assert (still.replayed, still.still_dead) == (0, 1)
            fixed = cfg(exam_results_released_code="exam.released")
            outcome = await store.replay(which, intake.remapper(fixed), now=1002.0)
            assert (outcome.replayed, outcome.messages) == (1, 1)
            [claimed] = await store.claim(now=1003.0, limit=10, lease_secs=30)
            assert orjson.loads(claimed.payload)["event"] == "Exam Results Released"
        finally:
            await store.close()


class TestMissingFields:
    """Item 9: the fields a report needs."""

    def test_attempt_fields(self) -> None:
        body = fixture_body("exam.completed")
        body["attempt"]["state"]["deferred"]["locked"] = True
        body["exam"]["attr"] = {"board": "AQA"}
        properties = track("exam.completed", body)["properties"]
        assert properties["resultsLocked"] is True
        assert properties["gradeMinScore"] == 70
        assert properties["gradeCriteria"][0] == {"label": "A*", "minScore": 90, "isPass": True}
        assert properties["examAttributes"] == {"board": "AQA"}
        section = properties["sections"][0]
        assert (section["credits"], section["penalties"]) == (0, 0)
        assert section["timeStartedAt"] == "2024-05-14T09:00:03.120Z"

    @pytest.mark.parametrize(
        "code",
        [
            "exam.started",
            "exam.submitted",
            "user.registeredForExam",
            "attemptOverride.created",
            "attemptCertificate.generated",
        ],
    )
    def test_exam_attributes_on_every_exam_event(self, code: str) -> None:
        body = fixture_body(code)
        body["exam"]["attr"] = {"board": "AQA", "room": "Hall B"}
        event = track(code, body)
        assert event["properties"]["examAttributes"] == {"board": "AQA", "room": "Hall B"}

    @pytest.mark.parametrize(("status", "passed"), [("passed", True), ("FAIL", False)])
    def test_is_pass_from_results_status_without_a_grade(self, status: str, passed: bool) -> None:
        body = fixture_body("attempt.completed")
        body["attempt"].pop("grade", None)
        body["attempt"]["state"]["results"]["status"] = status
        assert track("attempt.completed", body)["properties"]["isPass"] is passed

    def test_moderators_on_the_group_call(self) -> None:
        [group] = [
            m
            for m in messages("user.addedToGroup", fixture_body("user.addedToGroup"))
            if m["type"] == "group"
        ]
        assert group["traits"]["moderators"] == [{"id": "usr_teacher01", "name": "Priya Patel"}]

    def test_locale_in_context(self) -> None:
        for message in messages("user.registered", fixture_body("user.registered")):
            assert message["context"]["locale"] == "en-GB"


class TestTraitsOnEvents:
    """Item 10: ``context.traits`` on tracks by default; an opt-in identify from event bodies."""

    def test_context_traits_by_default(self) -> None:
        traits = track("exam.completed", fixture_body("exam.completed"))["context"]["traits"]
        assert traits["email"] == "amelia.hart@example.org"
        assert traits["EI-cohort"] == "2024-A"

    def test_switched_off(self) -> None:
        event = track("exam.completed", fixture_body("exam.completed"), cfg(context_traits=False))
        assert "traits" not in event["context"]

    def test_opt_in_identify(self) -> None:
        sent = messages(
            "exam.completed", fixture_body("exam.completed"), cfg(identify_from_events=True)
        )
        assert [m["type"] for m in sent] == ["identify", "track"]
        assert sent[0]["traits"]["name"] == "Amelia Hart"
        assert sent[0]["messageId"] != sent[1]["messageId"]


class TestTypes:
    """Item 11: numbers as text inside passed-through objects, and more time forms."""

    def test_section_grade_numbers(self) -> None:
        body = fixture_body("exam.completed")
        body["exam"]["sectionGrades"][0]["marks"] = {"points": "42", "maxPoints": "50.5"}
        body["attempt"]["gradeCriteria"]["grades"][0]["minScore"] = "90"
        properties = track("exam.completed", body)["properties"]
        assert properties["sectionGrades"][0]["marks"] == {"points": 42, "maxPoints": 50.5}
        assert properties["gradeCriteria"][0]["minScore"] == 90

    @pytest.mark.parametrize(
        "value",
        [
            "1715679688",
            "1715679688000",
            "new Date('2024-05-14T09:41:28.000Z')",
            "2024-05-14T09:41:28",
        ],
    )
    def test_time_forms(self, value: str) -> None:
        body = fixture_body("attempt.completed")
        body["meta"]["timestamp"] = value
        assert track("attempt.completed", body)["timestamp"] == "2024-05-14T09:41:28.000Z"


class TestIdsDoNotSplitOneFact:
    """Item 12: neither the URL's ?portal= nor a time's spelling changes an id."""

    @pytest.mark.parametrize(
        "code", ["user.registered", "user.updated", "flag.planted", "store.purchase"]
    )
    def test_portal_hint_is_not_in_the_id(self, code: str) -> None:
        first = messages(code, fixture_body(code), hint="portal_a")
        moved = messages(code, fixture_body(code), hint="portal_b")
        assert [m["messageId"] for m in first] == [m["messageId"] for m in moved]
        if "portal" not in fixture_body(code) and first[-1]["type"] == "track":
            assert first[-1]["properties"]["portalId"] == "portal_a"  # still sent, not in the id

    def test_purchase_time_spelling_is_normalised(self) -> None:
        ids = set()
        for spelling in ("2024-04-02T15:04:05Z", "2024-04-02T15:04:05.000Z", "1712070245"):
            body = fixture_body("store.purchase")
            body["purchasedAt"] = spelling
            ids.add(messages("store.purchase", body)[0]["messageId"])
        assert len(ids) == 1

    def test_time_spelling_is_normalised(self) -> None:
        spellings = [
            "2024-01-09T08:30:00.000Z",
            "2024-01-09T08:30:00Z",
            "2024-01-09T09:30:00+01:00",
        ]
        ids = set()
        for spelling in spellings:
            body = fixture_body("user.addedToGroup")
            body["dateAdded"] = spelling
            ids.add(messages("user.addedToGroup", body)[0]["messageId"])
        assert len(ids) == 1


#: Segment spec fields keep the spec's names (docs/mapping.md, "Naming").
SPEC_NAMES = {"order_id", "product_id", "invitee_email"}
CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in (key, *keys(value))]
    if isinstance(node, list):
        return [k for item in node for k in keys(item)]
    return []


class TestNaming:
    """Item 13: camelCase everywhere except the fields a Segment spec event defines."""

    @pytest.mark.parametrize(
        "code",
        [
            "attempt.completed",
            "exam.completed",
            "exam.resultsReleased",
            "user.addedToGroup",
            "user.registeredForExam",
            "assignment.completed",
            "attemptOverride.created",
            "attemptCertificate.generated",
            "flag.planted",
            "store.purchase",
            "invite.sent",
            "learningRecord.created",
        ],
    )
    def test_property_names(self, code: str) -> None:
        event = track(code, fixture_body(code))
        bad = [
            key
            for key in keys(event["properties"])
            if not CAMEL.match(key) and key not in SPEC_NAMES
        ]
        free_form = ("examAttributes", "attributes")  # Synap's own keys, passed through
        bad = [
            key
            for key in bad
            if not any(key in keys(event["properties"].get(f, {})) for f in free_form)
        ]
        assert bad == []


class TestSizeAsSegmentMeasures:
    """Issue 12 item 16: the bytes Segment receives count, not the Python library's json.dumps."""

    async def test_6000_cjk_characters_go_out_whole(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        body = fixture_body("attempt.completed")
        body["test"]["title"] = "汉" * 6_000
        [message] = map_webhook("attempt.completed", body, RECEIVED, cfg()).messages
        as_library = len(json.dumps(orjson.loads(message.payload)).encode())
        assert len(message.payload) < 32_000 < 32 * 1024 < as_library  # 18.x KB vs 36.x KB
        client = await aiohttp_client(build_app(config_factory(fake_segment.url)))
        await post(client, "attempt.completed", body)
        await fake_segment.wait_for(1)
        properties = fake_segment.messages[0]["properties"]
        assert properties["testTitle"] == "汉" * 6_000
        assert "truncated" not in properties
        assert "truncated" not in fake_segment.messages[0]["context"]
        assert fake_segment.rejected == []
