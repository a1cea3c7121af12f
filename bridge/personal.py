"""Personal data out of the dry-run log lines.

A dry-run bridge logs every message it would send (``dry_run_message``), which is what an
operator checking a mapping wants, but those messages carry students' emails and names into the
journal or a log collector that keeps them for months. So by default the values of personal
keys (email, names, phone, address, ...) in a logged message show as ``***``, at any depth
(traits, ``context.traits``, properties); ``logging.dry_run_full: true`` logs them in full (a
test setup, or a host whose logs may hold them). Ids stay: they are what one searches by.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

PERSONAL_KEYS = frozenset(
    {
        "email",
        "name",
        "firstname",
        "lastname",
        "first_name",
        "last_name",
        "username",
        "phone",
        "address",
        "birthday",
    }
)
DRY_RUN_EVENT = "dry_run_message"
_full = False


def configure(*, full: bool) -> None:
    """``logging.dry_run_full``: process-wide, like the rest of the logging setup (SIGHUP)."""
    global _full
    _full = full


def mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "***" if isinstance(k, str) and k.lower() in PERSONAL_KEYS else mask(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask(item) for item in value]
    return value


def redact_dry_run(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask the personal values of a ``dry_run_message``'s message."""
    if not _full and event_dict.get("event") == DRY_RUN_EVENT and "message" in event_dict:
        event_dict["message"] = mask(event_dict["message"])
    return event_dict
