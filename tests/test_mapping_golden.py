"""The mapping's output stays byte for byte what it was (issue 16: faster, nothing distorted).

tests/golden_cases.py builds the cases (every sample, variants of each, bodies the size limit
cuts, odd bodies, the bench body, and a sweep replacing each part of each sample) and records
what ``bridge.mapping.intake.process`` returns for them; tests/golden/ holds the recording made
before the mapping was tuned. A difference is a change of output: a bug, or (if intended) a
change to regenerate deliberately (``.venv/bin/python -m tests.golden_cases``) and explain.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import orjson
import pytest

from tests import golden_cases


def _diff(expected: Any, got: Any) -> str:
    lines = difflib.unified_diff(
        json.dumps(expected, indent=1, sort_keys=True).splitlines(),
        json.dumps(got, indent=1, sort_keys=True).splitlines(),
        lineterm="",
        n=1,
    )
    return "\n".join(list(lines)[:60])


def test_every_case_maps_to_its_recorded_outcome() -> None:
    expected: dict[str, Any] = orjson.loads(golden_cases.OUTCOMES.read_bytes())
    got = golden_cases.all_outcomes()
    assert sorted(got) == sorted(expected)
    wrong = [key for key in expected if got[key] != expected[key]]
    assert not wrong, f"{len(wrong)} cases differ, e.g. {wrong[:5]}\n" + _diff(
        expected[wrong[0]], got[wrong[0]]
    )


@pytest.mark.parametrize("code", golden_cases.CODES)
def test_every_part_replaced_maps_to_its_recorded_outcome(code: str) -> None:
    expected: dict[str, dict[str, str]] = orjson.loads(golden_cases.MUTATIONS.read_bytes())
    got = golden_cases.mutation_digests(code)
    assert sorted(got) == sorted(expected[code])
    wrong = [key for key in expected[code] if got[key] != expected[code][key]]
    assert not wrong, f"{len(wrong)} parts of {code} map differently: {wrong[:10]}"


def test_the_recording_covers_what_it_claims() -> None:
    """Guards against a recording that checks little: real messages, cuts and dead letters."""
    recorded: dict[str, Any] = orjson.loads(golden_cases.OUTCOMES.read_bytes())
    outcomes = list(recorded.values())
    assert len(outcomes) > 1000
    assert sum(len(item.get("messages", [])) for item in outcomes) > 1000
    assert any(item.get("trimmed") for item in outcomes)
    assert any(item.get("dead") for item in outcomes)
    assert any("invalid" in item for item in outcomes)
    assert any(
        message["hold_secs"] > 0 for item in outcomes for message in item.get("messages", [])
    )
