"""Issue 22, item 1: one complete Began/Submitted/Completed Test for an exam attempt whatever its
``attempt.*`` body says about ``isExam`` (true, false, absent); a plain attempt never waits.

The bridge learns which tests are exam tests from the ``exam.*`` webhooks it received (their
``test.id`` and ``exam.sourceTests``, per portal, kept in the store). Through a real ``serve``
to the strict fake Segment; plus the pure mapping with what is known passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge import config as config_module
from bridge.mapper.exam_tests import ExamTestCache
from bridge.mapping.exam_tests import MAX_TAUGHT
from bridge.mapping.webhook import map_webhook
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import fixture_body
from tests.fakes import FakeSegment
from tests.serving import Serve

EXAM_FIELDS = ("examId", "examName", "resitCount", "sourceTests", "userGroupId", "sectionGrades")
PORTAL = "portal_kings"
RECEIVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def exam_body(attempt: str, test: str = "tst_biology_u3") -> dict[str, Any]:
    body = fixture_body("exam.completed")
    body["id"] = body["attempt"]["id"] = attempt
    body["test"]["id"] = test
    return body


def attempt_body(attempt: str, is_exam: Any, test: str = "tst_biology_u3") -> dict[str, Any]:
    """The ``attempt.completed`` of an exam attempt as Synap documents it: no exam details, and
    ``isExam`` as given (``"absent"``: no key)."""
    body = exam_body(attempt, test)
    body.pop("exam", None)
    body.pop("userGroup", None)
    if is_exam == "absent":
        body["attempt"].pop("isExam", None)
    else:
        body["attempt"]["isExam"] = is_exam
    body["meta"]["eventName"] = "attempt.completed"
    return body


def portal_of(body: dict[str, Any]) -> str:
    return str(body["portal"]["id"])


class TestMapping:
    """The pure mapping: what is known is an argument, what is learned is in the result."""

    config = config_module.parse({"mapping": {"exam_hold_secs": 10}})

    def test_an_exam_webhook_teaches_its_tests(self) -> None:
        body = exam_body("att_1")
        mapped = map_webhook("exam.completed", body, RECEIVED, self.config)
        portal = portal_of(body)
        sources = body["exam"]["sourceTests"]
        assert mapped.exam_tests[0] == (portal, "tst_biology_u3")
        assert {(portal, test) for test in sources} <= set(mapped.exam_tests)

    @pytest.mark.parametrize("is_exam", [False, "absent"])
    def test_a_known_exam_test_is_held_whatever_is_exam_says(self, is_exam: Any) -> None:
        body = attempt_body("att_2", is_exam)
        known = {(portal_of(body), "tst_biology_u3")}
        held = map_webhook("attempt.completed", body, RECEIVED, self.config, exam_tests=known)
        assert [m.hold_secs for m in held.messages] == [10] * len(held.messages)
        plain = map_webhook("attempt.completed", body, RECEIVED, self.config)
        assert {m.hold_secs for m in plain.messages} == {0}

    def test_the_same_test_id_of_another_portal_is_not_an_exam_test(self) -> None:
        body = attempt_body("att_3", "absent")
        known = {("another_portal", "tst_biology_u3")}
        mapped = map_webhook("attempt.completed", body, RECEIVED, self.config, exam_tests=known)
        assert {m.hold_secs for m in mapped.messages} == {0}

    def test_is_exam_is_sent_as_the_body_says(self) -> None:
        body = attempt_body("att_4", False)
        known = {(portal_of(body), "tst_biology_u3")}
        mapped = map_webhook("attempt.completed", body, RECEIVED, self.config, exam_tests=known)
        [track] = [
            m
            for m in map(orjson.loads, (m.payload for m in mapped.messages))
            if m.get("event") == "Completed Test"
        ]
        assert track["properties"]["isExam"] is False


class TestStore:
    async def test_learned_tests_survive_a_reopen(self, tmp_path: Path) -> None:
        path = tmp_path / "bridge.db"
        store = SQLiteStore(path)
        await store.open()
        try:
            assert await store.known_exam_tests() == frozenset()
            assert await store.learn_exam_tests([("p", "t1"), ("p", "t2")], 1.0) == 2
            assert await store.learn_exam_tests([("p", "t1")], 2.0) == 0
        finally:
            await store.close()
        again = SQLiteStore(path)
        await again.open()
        try:
            assert await again.known_exam_tests() == {("p", "t1"), ("p", "t2")}
        finally:
            await again.close()


class TestThroughServe:
    async def test_exam_attempts_complete_whatever_is_exam_says(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        async with Serve(tmp_path, fake_segment, exam_hold_secs=60) as bridge:
            await bridge.post("exam.completed", exam_body("att_teach"))  # names the test
            await bridge.restart()  # what was learned is in the store, not only in memory
            for attempt, is_exam in (("att_false", False), ("att_absent", "absent")):
                await bridge.post("attempt.completed", attempt_body(attempt, is_exam))
                await bridge.post("exam.completed", exam_body(attempt))
            await bridge.settle()
        completed = {m["properties"]["attemptId"]: m for m in bridge.tracks("Completed Test")}
        assert set(completed) == {"att_teach", "att_false", "att_absent"}
        assert len(bridge.tracks("Completed Test")) == 3  # one each, no duplicate
        for event in completed.values():
            assert all(key in event["properties"] for key in EXAM_FIELDS), event["properties"]
            assert event["context"]["groupId"] == "grp_y11b"

    async def test_a_plain_attempt_never_waits(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        async with Serve(tmp_path, fake_segment, exam_hold_secs=600) as bridge:
            await bridge.post("exam.completed", exam_body("att_teach"))
            plain = fixture_body("attempt.completed")
            plain["test"]["id"], plain["attempt"]["id"] = "tst_practice", "att_plain"
            await bridge.post("attempt.completed", plain)
            # A 10-minute hold: arriving within the default bound means it was never held.
            await fake_segment.wait_until(
                lambda: any(
                    m.get("properties", {}).get("attemptId") == plain["attempt"]["id"]
                    for m in fake_segment.messages
                )
            )


def test_exam_codes_only_drops_the_attempt_of_a_known_exam_test() -> None:
    config = config_module.parse({"mapping": {"exam_attempts_from": "exam_codes"}})
    body = attempt_body("att_5", "absent")
    known = {(portal_of(body), "tst_biology_u3")}
    assert map_webhook("attempt.completed", body, RECEIVED, config, exam_tests=known).messages == []
    assert map_webhook("attempt.completed", body, RECEIVED, config).messages  # unknown: kept


class TestHostile:
    def test_a_webhook_teaches_a_bounded_number_of_tests(self) -> None:
        body = exam_body("att_6")
        body["exam"]["sourceTests"] = [f"tst_{i}" for i in range(10_000)] + ["t" * 300]
        config = config_module.parse({})
        learned = map_webhook("exam.completed", body, RECEIVED, config).exam_tests
        assert len(learned) == MAX_TAUGHT
        assert all(len(test) <= 256 for _, test in learned)

    async def test_an_unavailable_store_neither_refuses_nor_forgets(self, tmp_path: Path) -> None:
        cache = ExamTestCache()
        store = SQLiteStore(tmp_path / "never-opened.db")  # every call: StorageUnavailableError
        assert await cache.current(store) == set()
        assert cache.add([("p", "t")]) == [("p", "t")]
        await cache.store(store, [("p", "t")], 1.0)  # logged, never raised
        assert await cache.current(store) == {("p", "t")}  # kept in memory meanwhile
