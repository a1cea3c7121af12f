"""Bodies Synap's docs do not promise: parts missing or null, wrong types, odd names, huge arrays.

The rule under test: nothing crashes the mapping. A body either maps to valid Segment messages
(each under the size limit) or is a dead letter with a precise reason, and only the parts that
say *whose* event and *which* fact may cause the latter.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from bridge.errors import UnmappableError
from bridge.mapping.sizing import fit
from bridge.mapping.webhook import map_webhook
from bridge.messages import MAX_MESSAGE_BYTES
from tests.test_mapping import ALL_CODES, RECEIVED, RECEIVED_ISO, cfg, check_message, load, run

Path = tuple[str | int, ...]
#: The reasons a mutilated but authenticated body may legitimately get.
IDENTITY_REASONS = {"missing_user_id", "missing_natural_id"}
FREE_FORM = {"customAttributes", "attr", "sectionGrades", "previousValues", "preferences"}


def paths(node: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every key path in a JSON tree (only the first two items of each list: same shape)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:2]):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def mutated(body: dict[str, Any], path: Path, value: Any, delete: bool = False) -> dict[str, Any]:
    copied = copy.deepcopy(body)
    node: Any = copied
    for part in path[:-1]:
        node = node[part]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copied


def outcome(code: str, body: Any) -> str:
    try:
        mapped = map_webhook(code, body, RECEIVED, cfg(include_question_data=True))
    except UnmappableError as exc:
        return exc.code
    for message in mapped.messages:
        check_message(message.payload)
    return "mapped"


REPLACEMENTS: list[tuple[str, Any]] = [
    ("deleted", None),
    ("null", None),
    ("number", 12345),
    ("text", "surprise"),
    ("list", ["x", 1, None]),
    ("object", {"unexpected": {"deeper": [1, 2]}}),
    ("bool", True),
]


class TestEveryPartMutilated:
    @pytest.mark.parametrize("code", ALL_CODES)
    def test_any_part_missing_or_of_any_type_never_crashes(self, code: str) -> None:
        body = load(code)
        seen: set[str] = set()
        for path in paths(body):
            for kind, value in REPLACEMENTS:
                result = outcome(code, mutated(body, path, value, delete=kind == "deleted"))
                assert result in {"mapped", *IDENTITY_REASONS}, (path, kind, result)
                seen.add(result)
        assert "mapped" in seen
        assert seen & IDENTITY_REASONS  # some part really is essential, and is reported as such

    @pytest.mark.parametrize("code", ALL_CODES)
    def test_extra_keys_everywhere_change_nothing(self, code: str) -> None:
        body = load(code)
        noisy = copy.deepcopy(body)

        def add_noise(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in list(node.items()):
                    if key not in FREE_FORM:  # free-form parts are passed on as they are
                        add_noise(value)
                node["__extra__"] = {"surprise": [1, "two", None]}
            elif isinstance(node, list):
                for item in node:
                    add_noise(item)

        add_noise(noisy)
        expected, got = run(code, body), run(code, noisy)
        if code == "user.updated":  # its id is a digest of the content: new content, new id
            for message in (*expected, *got):
                del message["messageId"]
        assert got == expected

    @pytest.mark.parametrize("code", ALL_CODES)
    def test_ids_as_numbers_become_strings(self, code: str) -> None:
        body = json.loads(
            json.dumps(load(code))
            .replace('"usr_7f3a9c21"', "7321")
            .replace('"usr_teacher01"', "1001")
            .replace('"att_51c0e8"', "510")
        )
        for message in run(code, body):
            assert message["userId"] in ("7321", "1001")
            if "attemptId" in message.get("properties", {}):
                assert message["properties"]["attemptId"] == "510"

    def test_numbers_as_strings_are_read_as_numbers(self) -> None:
        body = load("attempt.completed")
        body["attempt"].update(score="82.5", totalQuestions="12", isExam="false")
        (message,) = run("attempt.completed", body)
        assert message["properties"]["score"] == 82.5
        assert message["properties"]["totalQuestions"] == 12
        assert message["properties"]["isExam"] is False

    def test_empty_object_for_every_code(self) -> None:
        for code in ALL_CODES:
            assert outcome(code, {}) == "missing_user_id"


class TestNames:
    @pytest.mark.parametrize(
        ("name", "first", "last"),
        [
            ("José Ñúñez", "José", "Ñúñez"),
            ("José Ñúñez García", "José", "Ñúñez García"),
            ("李小龙", "李小龙", None),
            ("Madonna", "Madonna", None),
            ("  Amelia   Hart  ", "Amelia", "Hart"),
            ("山田\u3000太郎", "山田", "太郎"),
            ("Zoë\tO'Brien-Smith", "Zoë", "O'Brien-Smith"),
        ],
    )
    def test_first_and_last_name(self, name: str, first: str, last: str | None) -> None:
        body = load("user.registered") | {"name": name}
        identify, _ = run("user.registered", body)
        assert identify["traits"]["firstName"] == first
        assert identify["traits"].get("lastName") == last
        assert identify["traits"]["name"] == name.strip()

    @pytest.mark.parametrize("name", ["", "   ", None, 42, ["A", "B"]])
    def test_no_usable_name_sends_no_name_traits(self, name: Any) -> None:
        identify, _ = run("user.registered", load("user.registered") | {"name": name})
        traits = identify["traits"]
        assert traits.get("firstName") in (None, "42")
        assert "lastName" not in traits

    def test_lone_surrogates_and_big_numbers_still_serialise(self) -> None:
        body = json.loads(
            '{"objectId": "u1", "name": "Bad \\ud800 Name", "email": null, '
            '"customAttributes": {"huge": 123456789012345678901234567890, "nan": NaN, '
            '"\\udfff": "key with a surrogate"}}'
        )
        identify, _ = run("user.registered", body)
        assert identify["traits"]["EI-huge"] == "123456789012345678901234567890"
        assert identify["traits"]["EI-nan"] is None
        assert identify["traits"]["firstName"] == "Bad"

    def test_deep_custom_attributes_are_cut(self) -> None:
        deep: Any = "bottom"
        for _ in range(200):
            deep = {"d": deep}
        identify, _ = run("user.registered", load("user.registered") | {"customAttributes": deep})
        assert len(orjson.dumps(identify)) < 2_000


class TestSize:
    def test_a_2000_question_attempt_fits_without_question_data(self) -> None:
        body = load("exam.completed")
        body["attempt"]["state"]["responseQuestionMap"] = [[f"q{i}"] for i in range(2000)]
        mapped = map_webhook("exam.completed", body, RECEIVED, cfg())
        assert mapped.trimmed == []
        assert b"responseQuestionMap" not in mapped.messages[0].payload

    def test_a_2000_question_attempt_with_question_data_is_trimmed_to_fit(self) -> None:
        body = load("exam.completed")
        body["attempt"]["state"]["responseQuestionMap"] = [
            [f"question_{i:05d}", f"response_{i:05d}"] for i in range(2000)
        ]
        body["attempt"]["state"]["sections"]["items"] = [
            {"sectionId": f"s{k}", "responseIds": [f"rsp_{k}_{i:05d}" for i in range(400)]}
            for k in range(5)
        ]
        mapped = map_webhook("exam.completed", body, RECEIVED, cfg(include_question_data=True))
        (message,) = mapped.messages
        properties = check_message(message.payload)["properties"]
        assert len(message.payload) <= MAX_MESSAGE_BYTES
        assert mapped.trimmed
        assert any("responseQuestionMap" in reason for reason in mapped.trimmed)
        assert properties["attemptId"] == "att_51c0e8"
        assert properties["examName"] == "Summer Mock Exams 2024 - Biology"  # small ones kept

    def test_huge_text_is_shortened_not_dropped(self) -> None:
        body = load("flag.planted")
        body["question"]["stem"] = "<p>" + "Ω" * 40_000 + "</p>"
        mapped = map_webhook("flag.planted", body, RECEIVED, cfg())
        properties = check_message(mapped.messages[0].payload)["properties"]
        assert properties["questionStem"].endswith("…")
        assert 5_000 < len(properties["questionStem"]) < 16_000
        assert any("questionStem" in reason for reason in mapped.trimmed)
        marker = check_message(mapped.messages[0].payload)["context"]["truncated"]
        assert marker["questionStem"] == 40_007

    def test_huge_custom_attributes_are_trimmed_from_traits(self) -> None:
        body = load("user.registered")
        body["customAttributes"] = {f"attr{i}": "x" * 2_000 for i in range(40)}
        mapped = map_webhook("user.registered", body, RECEIVED, cfg())
        identify = check_message(mapped.messages[0].payload)
        assert identify["traits"]["email"] == "amelia.hart@example.org"
        assert len(mapped.trimmed) > 1

    def test_thousands_of_keys_are_cut_with_a_bounded_marker(self) -> None:
        properties: dict[str, Any] = {"attemptId": "a"} | {f"k{i}": i for i in range(8_000)}
        body: dict[str, Any] = {"type": "track", "event": "E", "properties": properties}
        reasons = fit(body, "properties", ("attemptId",), limit=2_000)
        assert len(orjson.dumps(body)) <= 2_000
        assert body["properties"]["attemptId"] == "a"
        marker = body["context"]["truncated"]
        assert len(marker) == 41  # 40 keys named, the rest counted under otherKeys
        kept = len(body["properties"]) - 1
        assert len(marker) - 1 + marker["otherKeys"] + kept == 8_000
        assert reasons

    def test_last_resort_keeps_the_essentials(self) -> None:
        properties: dict[str, Any] = {"attemptId": "a" * 5_000, "k": "v"}
        body: dict[str, Any] = {"type": "track", "event": "E", "properties": properties}
        reasons = fit(body, "properties", ("attemptId",), limit=2_000)
        assert body["properties"] == {"attemptId": "a" * 1_000 + "…"}
        assert body["context"]["truncated"] == {"k": 1}
        assert "essential" in reasons[-1]

    def test_config_additions_cannot_overflow(self) -> None:
        config = cfg(add_properties={"blob": "y" * 50_000})
        mapped = map_webhook("attempt.started", load("attempt.started"), RECEIVED, config)
        check_message(mapped.messages[0].payload)
        assert any("blob" in reason for reason in mapped.trimmed)


class TestTimes:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2024-05-14T11:41:28+02:00", "2024-05-14T09:41:28.000Z"),
            (1715679688000, "2024-05-14T09:41:28.000Z"),
            (1715679688, "2024-05-14T09:41:28.000Z"),
            ("not a time", "2024-05-14T09:41:27.880Z"),  # falls back to timeCompleted
            ("9999-12-31T23:59:59-05:00", "2024-05-14T09:41:27.880Z"),
        ],
    )
    def test_event_time_sources(self, value: Any, expected: str) -> None:
        """Completed Test is timed by meta.timestamp first (marking has no field of its own)."""
        body = load("attempt.completed")
        body["meta"]["timestamp"] = value
        assert run("attempt.completed", body)[0]["timestamp"] == expected

    def test_receipt_time_only_when_nothing_parses(self) -> None:
        body = load("attempt.submitted")
        body["meta"] = None
        for holder in (body, body["attempt"], body["attempt"]["state"]):
            holder["timeCompleted"] = "garbage"
        assert run("attempt.submitted", body)[0]["timestamp"] == RECEIVED_ISO

    def test_started_prefers_meta_then_time_started(self) -> None:
        body = load("attempt.started")
        del body["meta"]
        assert run("attempt.started", body)[0]["timestamp"] == "2024-05-14T09:00:03.120Z"


class TestShapesTheDocsLeaveOpen:
    def test_user_group_inside_exam_for_exam_registration(self) -> None:
        body = load("user.registeredForExam")
        body["exam"]["userGroup"] = body.pop("userGroup")
        (message,) = run("user.registeredForExam", body)
        assert message["properties"]["userGroupId"] == "grp_y11b"

    def test_sections_as_a_bare_list_and_grade_as_a_label(self) -> None:
        body = load("exam.completed")
        body["attempt"]["state"]["sections"] = body["attempt"]["state"]["sections"]["items"]
        body["attempt"]["grade"] = "B"
        (message,) = run("exam.completed", body)
        assert message["properties"]["sections"][1]["sectionId"] == "sec_b"
        assert message["properties"]["grade"] == "B"

    def test_over_long_ids_are_not_ids(self) -> None:
        body = load("attempt.started")
        body["user"]["id"] = "u" * 300
        assert outcome("attempt.started", body) == "missing_user_id"

    def test_override_without_time_still_has_a_stable_id(self) -> None:
        body = load("attemptOverride.created")
        del body["meta"]
        first, again = run("attemptOverride.created", body), run("attemptOverride.created", body)
        assert first[0]["messageId"] == again[0]["messageId"]
        assert first[0]["timestamp"] == RECEIVED_ISO


class TestOutOfRangeIntegers:
    """Found by the property test: a number past 64 bits in a nested part of store.purchase
    reached orjson raw. Every such value must come out as text, never as a mapping_failed."""

    def test_unlock_action_values(self) -> None:
        import json
        from datetime import UTC, datetime

        from bridge.config import Config
        from bridge.mapping.webhook import map_webhook
        from bridge.synap import samples
        from bridge.synap.values import as_number

        body = json.loads(samples.raw("store.purchase"))
        body["unlockActions"] = [{"type": -(2**63) - 1, "targetId": 2**70}]
        mapped = map_webhook("store.purchase", body, datetime.now(UTC), Config())
        (unlock,) = mapped.messages[0].body()["properties"]["unlockActions"]
        assert unlock == {"type": str(-(2**63) - 1), "targetId": str(2**70)}
        assert as_number("1e30") == 1e30


class TestFastPathsAgreeWithTheGeneralRules:
    """The hot helpers check exact JSON types first; each shortcut must give what the general
    rule gives, including at the edges (64-bit bounds, lone surrogates, years before 1000)."""

    @pytest.mark.parametrize(
        "value",
        [0, 2**63 - 1, 2**63, -(2**63) + 1, -(2**63), 1.5, float("nan"), float("inf"), True,
         "7", " 7 ", "7.0", "x", None, [1]],
    )  # fmt: skip
    def test_as_number(self, value: Any) -> None:
        from bridge.synap.values import as_number

        expected: Any = None
        if isinstance(value, int) and not isinstance(value, bool):
            expected = value if abs(value) < 2**63 else None
        elif isinstance(value, float):
            expected = value if value == value and abs(value) != float("inf") else None
        elif value == "7" or value == " 7 ":
            expected = 7
        elif value == "7.0":
            expected = 7.0
        assert as_number(value) == expected
        assert type(as_number(value)) is type(expected)

    def test_texts_ids_and_clean(self) -> None:
        from bridge.synap.values import as_id, as_text, as_texts, clean

        assert as_text("a\ud800b") == "a?b"
        assert as_id(" a\ud800 ") == "a?"
        assert as_id("  ") is None
        assert as_texts(["a", "é", "\ud800", 3, None, True]) == ["a", "é", "?", "3"]
        edges = [2**64, -(2**63), -(2**63) + 1, float("nan"), "\ud800", {"x": 1}]
        assert clean({"k\ud800": edges}) == {
            "k?": [str(2**64), str(-(2**63)), -(2**63) + 1, None, "?", {"x": 1}]
        }
        deep: Any = 1
        for _ in range(20):
            deep = {"k": deep}
        cut = clean(deep)
        for _ in range(15):
            cut = cut["k"]
        assert cut == {"k": None}

    def test_compact(self) -> None:
        from bridge.mapping.draft import compact

        kept: dict[str, Any] = {"d": 0, "e": "", "f": False, "g": (), "h": [0]}
        assert compact({"a": None, "b": [], "c": {}, **kept}) == kept

    @pytest.mark.parametrize(
        "moment",
        [
            datetime(2024, 5, 14, 9, 41, 28, 999999, tzinfo=UTC),
            datetime(2024, 5, 14, 9, 41, 28),
            datetime(2024, 5, 14, 1, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            datetime(385, 7, 25, 7, 6, 40, 1000, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999999),
        ],
    )
    def test_iso8601(self, moment: datetime) -> None:
        from bridge.messages import iso8601

        utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        expected = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
        assert iso8601(moment) == expected

    def test_a_canonical_looking_midnight_24_is_not_kept(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Python 3.14's ``fromisoformat`` accepts ``T24:00`` (the next day's midnight); the
        fast path for canonical times must then not keep that text, which the slow path writes
        as the next day's ``T00:00``. The newer parser is reproduced here on this interpreter."""
        from bridge import messages

        class Newer(datetime):
            @classmethod
            def fromisoformat(cls, text: str) -> Newer:
                rest = text[19:].removeprefix(".000")  # then nothing, or the zone
                midnight = text[11:19] == "24:00:00" and rest[:1] in ("", "Z", "+", "-")
                if not midnight:
                    return super().fromisoformat(text)
                day = super().fromisoformat(text[:11] + "00" + text[13:])
                return day + timedelta(days=1)

        monkeypatch.setattr(messages, "datetime", Newer)
        assert messages.as_iso8601("2024-02-28T24:00:00.000Z") == "2024-02-29T00:00:00.000Z"
        assert messages.as_iso8601("2024-02-28T24:00:00Z") == "2024-02-29T00:00:00.000Z"
        assert messages.as_iso8601("2024-02-28T23:00:00.000Z") == "2024-02-28T23:00:00.000Z"

    def test_fitted_serialises_once_or_after_the_cut(self) -> None:
        from bridge.mapping.sizing import fitted

        small = {"type": "track", "properties": {"attemptId": "a", "x": "y"}}
        assert fitted(small, "properties", ("attemptId",)) == (orjson.dumps(small), [])
        big = {"type": "track", "properties": {"attemptId": "a", "x": "y" * 5_000}}
        payload, reasons = fitted(big, "properties", ("attemptId",), limit=2_000)
        assert len(payload) <= 2_000
        assert payload == orjson.dumps(big)
        assert reasons
