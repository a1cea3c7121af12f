"""Issue 22, item 2: the size cut shortens the largest leaf, keeps its siblings and names the
path it cut in ``context.truncated``; a trait that does not fit is left out, never shortened.

Through a real ``serve`` to the strict fake Segment (which refuses any message over 32 KB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bridge.mapping.sizing import fit
from tests.conftest import fixture_body
from tests.fakes import FakeSegment
from tests.serving import Serve

TAGS = {"subject": ["biology"], "skill": ["recall"], "difficulty": ["hard"], "module": ["unit-3"]}


async def test_a_long_tag_list_keeps_the_other_tags(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    body = fixture_body("exam.completed")
    body["attempt"]["tags"] = TAGS | {"topic": [f"topic {i:05d} of cells" for i in range(3000)]}
    sections = fixture_body("exam.completed")
    sections["id"] = sections["attempt"]["id"] = "att_sections"
    sections["attempt"]["state"]["sections"] = {
        "items": [
            {
                "sectionId": f"section-{i:04d}",
                "isCompleted": True,
                "score": 50.5,
                "scoreFrac": 0.505,
                "totalCorrect": 3,
                "totalQuestionsCompleted": 6,
                "timeStarted": "2024-05-14T09:00:03.120Z",
                "timeCompleted": "2024-05-14T09:10:03.120Z",
                "marks": {"points": 3, "maxPoints": 6, "credits": 0, "penalties": 0},
            }
            for i in range(400)
        ]
    }
    async with Serve(tmp_path, fake_segment) as bridge:
        await bridge.post("exam.completed", body)
        await bridge.post("exam.completed", sections)
        await bridge.settle()
    events = {m["properties"]["attemptId"]: m for m in bridge.tracks("Completed Test")}
    tagged = events["att_51c0e8"]
    tags = tagged["properties"]["tags"]
    assert {key: tags[key] for key in TAGS} == TAGS  # the siblings stay whole
    assert 500 < len(tags["topic"]) < 3000
    assert tags["topic"][0] == "topic 00000 of cells"  # cut from its end
    assert tagged["context"]["truncated"]["tags.topic"] == 3000
    assert "truncated" not in tagged["properties"]
    assert tagged["properties"]["sectionGrades"]  # the rest of the event is whole
    assert len(tagged["properties"]["sections"]) == 2
    cut = events["att_sections"]
    assert 50 < len(cut["properties"]["sections"]) < 400  # as many as fit, not none
    assert cut["context"]["truncated"]["sections"] == 400
    assert cut["properties"]["tags"]


async def test_a_trait_that_does_not_fit_is_left_out(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    body = fixture_body("user.registered")
    body["customAttributes"]["bio"] = "B" * 40_000
    async with Serve(tmp_path, fake_segment) as bridge:
        await bridge.post("user.registered", body)
        await bridge.settle()
    [identify] = bridge.calls("identify")
    traits = identify["traits"]
    assert "EI-bio" not in traits  # the profile keeps its previous value
    assert "truncated" not in traits  # no marker trait (no truncated_* column)
    assert traits["EI-cohort"] == body["customAttributes"]["cohort"]  # the others stay
    assert identify["context"]["truncated"] == {"EI-bio": 40_000}
    [registered] = bridge.tracks("User Registered")
    assert "truncated" not in registered["properties"]


class TestFit:
    """The cut itself, on a bare message (bridge.mapping.sizing.fit)."""

    def test_many_medium_properties_lose_only_what_the_limit_asks(self) -> None:
        medium = {f"p{i:03d}": "v" * 600 for i in range(150)}
        properties: dict[str, Any] = {"attemptId": "a"} | medium
        body: dict[str, Any] = {"type": "track", "event": "E", "properties": properties}
        reasons = fit(body, "properties", ("attemptId",), limit=32_000)
        assert len(orjson.dumps(body)) <= 32_000
        kept = [key for key in body["properties"] if key.startswith("p")]
        assert 45 <= len(kept) < 150  # as many as fit, whole (none shortened)
        assert all(body["properties"][key] == "v" * 600 for key in kept)
        assert len(body["context"]["truncated"]) + len(kept) >= 150 - 60  # named or counted
        assert not any("essential" in reason for reason in reasons)

    def test_a_large_string_inside_a_list_is_shortened_in_place(self) -> None:
        sources = ["tst_a", "x" * 40_000, "tst_c"]
        body: dict[str, Any] = {"type": "track", "properties": {"testId": "t", "sources": sources}}
        fit(body, "properties", ("testId",), limit=2_000)
        kept = body["properties"]["sources"]
        assert (kept[0], kept[2]) == ("tst_a", "tst_c")
        assert kept[1].endswith("…")
        assert body["context"]["truncated"] == {"sources.1": 40_000}

    def test_traits_are_left_out_whole(self) -> None:
        traits = {"email": "e@example.org", "EI-a": "a" * 3_000, "EI-b": "b" * 500}
        body: dict[str, Any] = {"type": "identify", "traits": traits}
        fit(body, "traits", ("email",), limit=2_000, expendable=("EI-a", "EI-b"))
        assert body["traits"] == {"email": "e@example.org", "EI-b": "b" * 500}
        assert body["context"]["truncated"] == {"EI-a": 3_000}
