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

from bridge.mapping.draft import Call, compact, iso_or_none
from bridge.synap.payloads import User
from bridge.synap.values import clean

#: The native source's traits that a webhook feeds: essential, never cut for size.
NATIVE = ("name", "firstName", "lastName", "email", "createdAt", "subPortalId")
#: Added by the bridge: cut for size after the custom attributes, before the native traits.
ADDED = ("userGroups",)


#: Unicode bidirectional formatting characters (LRM, RLM, ALM, embeddings, overrides, isolates):
#: invisible, and a name copied from a right-to-left text often starts with one.
BIDI = dict.fromkeys(
    map(ord, "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
)


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """``("José", "Ñúñez García")`` from ``"José Ñúñez García"``; ``("李小龙", None)``.

    Bidirectional marks are removed from the two parts (a leading right-to-left mark would
    otherwise stay at the start of ``lastName``, invisible, and break equality and sorting)."""
    if not name:
        return None, None
    if not name.isascii():
        name = name.translate(BIDI)
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
    user_groups: list[str] | None,
    sub_portal_id: str | None,
    custom_attributes: dict[str, Any],
    prefix: str,
) -> dict[str, Any]:
    """The identify traits. A custom attribute never overrides a native trait of the same name
    (possible only with an empty prefix): the native value is the one dashboards rely on.

    ``user_groups``: None when the body does not say; an empty list is sent (``userGroups: []``:
    the user is in no group any more, and a destination must forget the old list).

    Keys that differ only by case (``EI-Role``, ``EI-role``) are one trait to most destinations
    and one warehouse column: they are merged, the **later** key in the body winning (its
    spelling and value), and a native trait wins over any custom attribute of its name."""
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
    if user_groups == []:
        native["userGroups"] = []
    # Custom attributes keep explicit nulls: in a user.updated body a null is the new value.
    custom: dict[str, Any] = {}
    folded: dict[str, str] = {key.casefold(): key for key in native}
    for key, value in clean(custom_attributes).items():
        name = f"{prefix}{key}"
        same = folded.get(name.casefold())
        if same in native:
            continue
        if same is not None:
            del custom[same]
        custom[name] = value
        folded[name.casefold()] = name
    return {**custom, **native}


def identify_call(traits: dict[str, Any]) -> Call:
    """The identify call: native traits essential, custom attributes cut first (largest first)
    when the message is too large, so a user with huge attributes keeps name and email."""
    kept = (*NATIVE, *ADDED)
    custom = tuple(key for key in traits if key not in kept)
    return Call("identify", traits, essentials=NATIVE, expendable=custom)


def event_user_traits(user: User, prefix: str) -> dict[str, Any] | None:
    """The traits an event body gives for its user (``user {name, email, customAttributes}``),
    for ``context.traits`` and the opt-in identify; None when the body has none."""
    if not (user.name or user.email or user.customAttributes):
        return None
    return identify_traits(
        name=user.name,
        email=user.email,
        time_registered=None,
        user_groups=None,
        sub_portal_id=user.subPortalId,
        custom_attributes=user.customAttributes,
        prefix=prefix,
    )
