"""The lenient model base (bridge/synap/lenient.py): the rules the payload models rely on."""

from __future__ import annotations

import math
from typing import Annotated, Any

import pytest

from bridge.synap import payloads
from bridge.synap.lenient import Lenient, Reader, field
from bridge.synap.payloads import Attempt, AttemptPayload, GroupRef, Marks, Num, Text, part
from bridge.synap.values import as_object


class Part(Lenient):
    label: Text = None


class Whole(Lenient):
    count: Num = None
    part: Annotated[Part, part(Part)] = Part()
    extra: Annotated[dict[str, Any], Reader(as_object)] = field(default_factory=dict)


def test_present_values_are_read_and_missing_or_null_ones_are_the_default() -> None:
    read = Whole.model_validate({"count": "42", "part": {"label": 7}, "unknown": 1})
    assert (read.count, read.part.label, read.extra) == (42, "7", {})
    assert Whole.model_validate({}) == Whole.model_validate({"count": None, "part": None})
    assert Whole.model_validate({"part": "not an object"}).part == Part()
    assert not hasattr(read, "unknown")


def test_factory_defaults_are_not_shared() -> None:
    first, second = Whole.model_validate({}), Whole.model_validate({})
    assert first.extra == second.extra
    assert first.extra is not second.extra


def test_keyword_construction_reads_like_model_validate() -> None:
    assert GroupRef(id=" g1 ", name=3) == GroupRef.model_validate(  # type: ignore[arg-type]
        {"id": " g1 ", "name": 3}
    )
    assert GroupRef(id=" g1 ").id == "g1"


def test_models_are_immutable_and_compare_by_type_and_fields() -> None:
    marks = Marks(points=1)
    with pytest.raises(AttributeError):
        marks.points = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del marks.points
    assert marks == Marks(points="1")  # type: ignore[arg-type]
    assert marks != Marks(points=2)
    assert Part() != Marks()
    assert "points=1" in repr(marks)


def test_nested_parts_and_lists_of_parts() -> None:
    body = AttemptPayload.model_validate(
        {
            "attempt": {
                "state": {"sections": {"items": [{"sectionId": 5}, "x"]}},
                "gradeCriteria": ["Merit", {"label": "Pass", "minScore": "50"}, 3],
                "grade": "Merit",
            }
        }
    )
    attempt = body.attempt
    assert [section.sectionId for section in attempt.state.sections] == ["5"]
    assert [(g.label, g.minScore) for g in attempt.gradeCriteria.grades] == [
        ("Merit", None),
        ("Pass", 50),
        ("3", None),
    ]
    assert attempt.grade.label == "Merit"
    assert AttemptPayload.model_validate({"attempt": None}).attempt == Attempt()


def test_a_reader_must_map_none_to_the_default() -> None:
    with pytest.raises(TypeError, match="must map None to its default"):

        class Wrong(Lenient):
            count: Annotated[int, Reader(lambda value: 0 if value is None else value)] = 1


def test_a_field_needs_one_reader_and_a_default() -> None:
    with pytest.raises(TypeError, match="exactly one Reader"):

        class NoReader(Lenient):
            count: int = 0

    with pytest.raises(TypeError, match="needs a default"):

        class NoDefault(Lenient):
            count: Num


def _models() -> list[type[Lenient]]:
    found = [
        value
        for value in vars(payloads).values()
        if isinstance(value, type) and issubclass(value, Lenient) and value is not Lenient
    ]
    assert len(found) > 20
    return found


SAMPLES: dict[type, list[Any]] = {
    str: ["", "a", " id ", "é", "\ud800", "x" * 300],
    int: [0, 7, -1, 2**63, 2**70],
    float: [0.5, -0.0, math.nan, math.inf],
    bool: [True, False],
    dict: [{}, {"a": 1}, {"id": "g", "label": "L"}],
    list: [[], [1, "a"], [{"id": 1}]],
}


def _kept(reader: Reader) -> list[Any]:
    """The values ``reader``'s shortcuts claim it returns unchanged."""
    kept = [value for kind in reader.keep for value in SAMPLES[kind]]
    if reader.keep_ints:
        kept += [0, 1, -1, 2**63 - 1, -(2**63) + 1, 12345]
    if reader.keep_ascii:
        kept += ["", "a", " id ", "x" * 300]
    return kept


@pytest.mark.parametrize("model", _models(), ids=lambda model: model.__name__)
def test_the_shortcuts_of_every_payload_field_give_what_its_reader_gives(
    model: type[Lenient],
) -> None:
    """``keep``, ``keep_ints`` and ``keep_ascii``: the reader returns such values unchanged
    (and only those ints); ``on_dict``: it reads a dict so."""
    for name, reader in model.model_readers.items():
        for value in _kept(reader):
            assert reader.read(value) is value, (model.__name__, name, value)
        if reader.keep_ints:
            for value in [2**63, -(2**63)]:
                assert reader.read(value) is not value, (model.__name__, name, value)
        if reader.on_dict is not None:
            for value in SAMPLES[dict]:
                assert reader.on_dict(value) == reader.read(value), (model.__name__, name)
