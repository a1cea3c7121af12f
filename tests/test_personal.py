"""Dry-run log lines mask personal data unless ``logging.dry_run_full`` (issue 23)."""

from __future__ import annotations

import io
import json

from bridge import logs, personal


def dry_run_line(*, full: bool) -> dict[str, object]:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    personal.configure(full=full)
    try:
        logs.get("test").info(
            "dry_run_message",
            message={
                "userId": "u-1",
                "traits": {"email": "ada@example.org", "firstName": "Ada", "cohort": "A"},
                "context": {"traits": [{"Name": "Ada Lovelace"}]},
            },
        )
    finally:
        personal.configure(full=False)
        logs.configure("info", "json")  # as tests/conftest.py leaves it
    line: dict[str, object] = json.loads(out.getvalue().splitlines()[-1])
    return line


def test_personal_values_are_masked_by_default() -> None:
    message = dry_run_line(full=False)["message"]
    assert message == {
        "userId": "u-1",
        "traits": {"email": "***", "firstName": "***", "cohort": "A"},
        "context": {"traits": [{"Name": "***"}]},
    }


def test_dry_run_full_logs_them() -> None:
    message = dry_run_line(full=True)["message"]
    assert isinstance(message, dict)
    assert message["traits"]["email"] == "ada@example.org"
