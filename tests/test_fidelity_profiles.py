"""Issue 22, item 5: profiles without invented values, through a real ``serve`` to the strict
fake Segment: an emptied group list is sent, group traits describe the group only, trait keys
that differ by case are one trait (the later key wins), a time more than a day in the future
falls back to the receipt time with a marker, no nulls in ``context.traits``, no bidi marks in
split names, no empty texts on tracks. Plus the pure mapping for each rule.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bridge import config as config_module
from bridge.mapping.traits import split_name
from bridge.mapping.webhook import map_webhook
from tests.conftest import fixture_body
from tests.fakes import FakeSegment
from tests.serving import Serve

RECEIVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
RLM = "\u200f"


def mapped(code: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    config = config_module.parse({})
    return [orjson.loads(m.payload) for m in map_webhook(code, body, RECEIVED, config).messages]


def updated(**changes: Any) -> dict[str, Any]:
    body = fixture_body("user.updated")
    body.update(changes)
    return body


class TestMapping:
    def test_an_emptied_group_list_is_sent_and_an_absent_one_is_not(self) -> None:
        [identify] = mapped("user.updated", updated(usergroups=[]))
        assert identify["traits"]["userGroups"] == []
        absent = fixture_body("user.updated")
        del absent["usergroups"]
        [identify] = mapped("user.updated", absent)
        assert "userGroups" not in identify["traits"]

    def test_keys_differing_by_case_are_one_trait_the_later_wins(self) -> None:
        body = updated(customAttributes={"Role": "learner", "cohort": "A", "role": "educator"})
        [identify] = mapped("user.updated", body)
        traits = identify["traits"]
        roles = {key: value for key, value in traits.items() if key.lower() == "ei-role"}
        assert roles == {"EI-role": "educator"}

    def test_a_native_trait_wins_over_a_custom_one_of_its_name(self) -> None:
        body = updated(customAttributes={"EMAIL": "spoof@example.org"})
        config = config_module.parse({"mapping": {"trait_prefix": ""}})
        [message] = map_webhook("user.updated", body, RECEIVED, config).messages
        traits = orjson.loads(message.payload)["traits"]
        assert traits["email"] == body["email"]
        assert "EMAIL" not in traits

    def test_bidi_marks_are_stripped_when_splitting(self) -> None:
        assert split_name(f"{RLM}Amelia {RLM}Hart{RLM}") == ("Amelia", "Hart")
        assert split_name("\u202bمحمد \u202cعلي") == ("محمد", "علي")

    def test_a_time_a_day_ahead_is_kept_a_time_further_is_not(self) -> None:
        body = fixture_body("assignment.completed")
        body["meta"]["timestamp"] = "2024-06-02T11:59:00.000Z"  # 23 h 59 min ahead: a clock
        [track] = mapped("assignment.completed", body)
        assert track["timestamp"] == "2024-06-02T11:59:00.000Z"
        assert "futureTimestamp" not in track["context"]
        body["meta"]["timestamp"] = "2099-01-01T00:00:00.000Z"
        [track] = mapped("assignment.completed", body)
        assert track["timestamp"] == "2024-06-01T12:00:00.000Z"
        assert track["context"]["futureTimestamp"] == "2099-01-01T00:00:00.000Z"


class TestThroughServe:
    async def test_profiles_without_invented_values(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        learner = fixture_body("user.addedToGroup")
        educator = fixture_body("user.addedToGroup")
        educator["userType"] = "educator"
        educator["user"]["id"] = "usr_teacher02"
        educator["dateAdded"] = "2024-01-10T08:30:00.000Z"
        update = updated(
            name=f"{RLM}Amelia Hart-Wilson",
            usergroups=[],
            customAttributes={"Role": "learner", "role": "educator", "tutor": None},
        )
        future = fixture_body("assignment.completed")
        future["meta"]["timestamp"] = "2099-01-01T00:00:00.000Z"
        future["assignment"]["name"] = ""  # an empty text is no value
        async with Serve(tmp_path, fake_segment) as bridge:
            await bridge.post("user.addedToGroup", learner)
            await bridge.post("user.addedToGroup", educator)
            await bridge.post("user.updated", update)
            await bridge.post("assignment.completed", future)
            await bridge.settle()
        groups = bridge.calls("group")
        assert len(groups) == 2
        assert all("userType" not in group["traits"] for group in groups)
        added = bridge.tracks("User Added to Group")
        assert sorted(m["properties"]["userType"] for m in added) == ["educator", "learner"]
        [identify] = bridge.calls("identify")
        traits = identify["traits"]
        assert traits["userGroups"] == []
        assert [key for key in traits if key.lower() == "ei-role"] == ["EI-role"]
        assert traits["EI-role"] == "educator"
        assert (traits["firstName"], traits["lastName"]) == ("Amelia", "Hart-Wilson")
        assert traits["EI-tutor"] is None  # on the identify a null is the new value
        [completed] = bridge.tracks("Assignment Completed")
        assert completed["context"]["futureTimestamp"] == "2099-01-01T00:00:00.000Z"
        assert completed["timestamp"] < "2099"
        assert "assignmentName" not in completed["properties"]
        for track in bridge.tracks():
            assert None not in track["context"].get("traits", {}).values()
            assert "" not in track["properties"].values()
        assert "EI-tutor" not in added[0]["context"]["traits"]
