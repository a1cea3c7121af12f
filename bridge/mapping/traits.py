"""Identify traits the way Synap's native Segment source names them.

Native traits a webhook can feed: ``name``, ``firstName``, ``lastName``, ``email``, ``createdAt``,
and each custom user attribute as ``EI-<attribute>`` (prefix configurable, empty allowed). The
bridge adds ``userGroups`` (the user's group ids) and ``subPortalId`` when the body has them.

Names are split the way a person would read them and without assuming an alphabet: the first
whitespace-separated token is the first name, the rest (as written) the last name; a single name
("李小龙", "Madonna") is a first name only. Python's ``str.split`` knows every Unicode space.
"""

from __future__ import annotations

from typing import Any

from bridge.mapping.draft import compact, iso_or_none
from bridge.synap.values import clean


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """``("José", "Ñúñez García")`` from ``"José Ñúñez García"``; ``("李小龙", None)``."""
    if not name:
        return None, None
    parts = name.split(maxsplit=1)
    if not parts:
        return None, None
    first = parts[0]
    rest = parts[1].strip() if len(parts) > 1 else ""
    return first, rest or None


def identify_traits(
    *,
    name: str | None,
    email: str | None,
    time_registered: Any,
    user_groups: list[str],
    sub_portal_id: str | None,
    custom_attributes: dict[str, Any],
    prefix: str,
) -> dict[str, Any]:
    """The identify traits. A custom attribute never overrides a native trait of the same name
    (possible only with an empty prefix): the native value is the one dashboards rely on."""
    first_name, last_name = split_name(name.strip() if name else None)
    native = compact(
        {
            "name": name.strip() if name and name.strip() else None,
            "firstName": first_name,
            "lastName": last_name,
            "email": email.strip() if email and email.strip() else None,
            "createdAt": iso_or_none(time_registered),
            "userGroups": user_groups,
            "subPortalId": sub_portal_id,
        }
    )
    # Custom attributes keep explicit nulls: in a user.updated body a null is the new value.
    custom = {f"{prefix}{key}": value for key, value in clean(custom_attributes).items()}
    return {**custom, **native}
