"""Property: no JSON body makes the mapping fail.

For any JSON object posted to any code (known or not), map_webhook either returns messages that
Segment accepts (type, userId, messageId <= 100 chars, ISO timestamp, event / groupId, object
properties / traits, <= 32,000 bytes serialised) or raises UnmappableError with a reason - never
anything else, and never the safety net's ``mapping_failed`` (that would be a bug caught late).

Two generators: free JSON with keys drawn partly from Synap's vocabulary (so the mappers get
past "whose event is it" often enough), and the real fixtures with one random part replaced.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import UnmappableError
from bridge.mapping.webhook import map_webhook
from tests.test_mapping import ALL_CODES, RECEIVED, cfg, check_message, load
from tests.test_mapping_hostile import paths

SYNAP_KEYS = [
    "user", "id", "objectId", "portal", "meta", "timestamp", "eventName", "attempt", "exam",
    "test", "title", "name", "email", "customAttributes", "subPortalId", "state", "sections",
    "items", "responseIds", "responseQuestionMap", "results", "marks", "points", "grade",
    "isExam", "score", "scoreFrac", "timeStarted", "timeCompleted", "userGroup", "planter",
    "invite", "totalTries", "learningRecord", "attr", "file", "assignment", "question",
    "createdAt", "dateAdded", "purchasedAt", "timeRegistered", "usergroups", "tags", "audit",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["2024-05-14T09:00:00Z", "u1", "", "  ", "1715679688000"])
)
keys = st.sampled_from(SYNAP_KEYS) | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
    max_leaves=25,
)
small_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=6,
)
ids = st.text(min_size=1, max_size=12) | st.integers() | scalars
times = st.sampled_from(["2024-05-14T09:00:00+02:00", "9999-12-31T23:59:59-05:00"]) | scalars
TOP_PARTS = ["user", "planter", "attempt", "exam", "test", "invite", "learningRecord"]
TOP_PARTS += ["assignment", "portal", "meta", "question", "userGroup", "certificate"]
#: A part shaped like Synap's (an object with an id), or anything at all.
part = (
    st.fixed_dictionaries(
        {"id": ids, "objectId": ids},
        optional={
            "name": scalars,
            "timestamp": times,
            "timeStarted": times,
            "totalTries": scalars,
            "isExam": scalars,
            "customAttributes": small_values,
            "state": small_values,
            "grade": small_values,
            "userGroup": small_values,
            "user": small_values,
            "subPortalId": ids,
            "attr": small_values,
        },
    )
    | small_values
)
shaped = st.fixed_dictionaries(
    {"user": part, "objectId": ids},
    optional={name: part for name in TOP_PARTS[1:]}
    | {"id": ids, "name": scalars, "timeRegistered": times, "createdAt": times},
)
json_objects = st.builds(
    lambda free, synap: {**free, **synap}, st.dictionaries(keys, small_values, max_size=4), shaped
)
codes = st.sampled_from(ALL_CODES) | st.text(max_size=30)
CONFIGS = [cfg(), cfg(include_question_data=True, trait_prefix="", default_portal_id="p0")]
FIXTURES = {code: load(code) for code in ALL_CODES}
FIXTURE_PATHS = {code: list(paths(body)) for code, body in FIXTURES.items()}


def assert_named_dead_letter(exc: UnmappableError) -> None:
    """A dead letter says which rule the body broke, never the catch-all "mapping_failed"."""
    assert exc.code != "mapping_failed", exc.detail
    assert exc.code
    assert exc.detail


def assert_maps_or_dead_letters(code: str, payload: Any, config_index: int) -> None:
    try:
        mapped = map_webhook(code, payload, RECEIVED, CONFIGS[config_index], "hint")
    except UnmappableError as exc:
        assert_named_dead_letter(exc)
        return
    marked = False
    for message in mapped.messages:
        body = check_message(message.payload)
        assert message.message_id == body["messageId"]
        assert message.user_id == body["userId"]
        marked = marked or "truncated" in body["context"]
        assert "truncated" not in body.get("properties", body.get("traits", {}))
    assert all(isinstance(reason, str) for reason in mapped.trimmed)
    assert marked == bool(mapped.trimmed)  # a cut message says so in itself, an uncut one not


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(code=codes, payload=json_objects, config_index=st.integers(0, 1))
def test_any_json_object_to_any_code(code: str, payload: dict[str, Any], config_index: int) -> None:
    assert_maps_or_dead_letters(code, payload, config_index)


@FAST
@given(
    code=st.sampled_from(ALL_CODES),
    choice=st.integers(min_value=0),
    replacement=json_values,
    config_index=st.integers(0, 1),
)
def test_a_fixture_with_one_part_replaced_by_any_json(
    code: str, choice: int, replacement: Any, config_index: int
) -> None:
    body = copy.deepcopy(FIXTURES[code])
    path = FIXTURE_PATHS[code][choice % len(FIXTURE_PATHS[code])]
    node: Any = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = replacement
    assert_maps_or_dead_letters(code, body, config_index)


@settings(max_examples=100, deadline=None)
@given(payload=json_values.filter(lambda value: not isinstance(value, dict)))
def test_anything_but_an_object_is_not_an_object(payload: Any) -> None:
    with pytest.raises(UnmappableError) as caught:
        map_webhook("attempt.completed", payload, RECEIVED, CONFIGS[0])
    assert caught.value.code == "not_an_object"
