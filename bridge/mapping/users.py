"""Users: registered, updated, added to a group, registered for an exam.

user.registered and user.updated are flat (the user's fields at the top level, no ``user``,
``portal`` or ``meta``); user.addedToGroup describes the *group* at the top level and the user
in ``user``.

A user.updated body has no id of its own and no time, so a redelivery cannot be told from a
genuine repeat (A→B, B→A, A→B: the third body equals the first). Every webhook received is
therefore its own event (natural id: the body's digest and its receipt time, or
``meta.timestamp`` should a body carry one): a redelivered identify is harmless, a lost one
leaves stale traits. Replaying the stored webhook keeps its receipt time, hence its id.

Repeatable events carry the occurrence's own time in their natural id (a second add to a group
has a new ``dateAdded``, a resit registration a new ``meta.timestamp``); without one, the
body's digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bridge.config import MappingConfig
from bridge.mapping.draft import (
    Call,
    Draft,
    compact,
    event_time,
    first,
    iso_or_none,
    need,
    occurrence,
    user_id,
)
from bridge.mapping.traits import event_user_traits, identify_call, identify_traits
from bridge.synap import codes
from bridge.synap.payloads import ExamRegistrationPayload, FlatUserPayload, GroupPayload
from bridge.synap.values import as_id, as_text, clean, content_hash


def map_user(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """user.registered -> identify + track User Registered; user.updated -> identify."""
    body = FlatUserPayload.model_validate(payload)
    who = user_id(body.objectId, body.id, body.user.id, where="objectId")
    sub_portal = first(body.subPortalId, body.user.subPortalId)
    traits = identify_traits(
        name=first(body.name, body.user.name),
        email=first(body.email, body.user.email),
        time_registered=body.timeRegistered,
        user_groups=_groups(body, payload),
        sub_portal_id=sub_portal,
        custom_attributes=body.customAttributes or body.user.customAttributes,
        prefix=settings.trait_prefix,
    )
    calls = [identify_call(traits)]
    natural: tuple[str, ...]
    if code == codes.USER_REGISTERED:
        properties = compact({"userGroups": body.usergroups, "subPortalId": sub_portal})
        calls.append(Call("track", properties, "User Registered"))
        family, natural = "user.registered", (who,)
        when = event_time(received_at, body.timeRegistered, body.meta.timestamp)
    else:
        # No documented time: the receipt time, unless a future body carries meta.timestamp.
        received = occurrence(body.meta.timestamp) or received_at.isoformat()
        family, natural = "user.updated", (who, content_hash(payload), received)
        when = event_time(received_at, body.meta.timestamp)
    locale = as_text(body.preferences.get("locale"))
    return Draft(
        user_id=who,
        family=family,
        natural=natural,
        timestamp=when,
        calls=calls,
        portal_id=body.portal.id,
        sub_portal_id=sub_portal,
        user_traits=traits,
        locale=locale,
    )


def _groups(body: FlatUserPayload, payload: Mapping[str, Any]) -> list[str] | None:
    """``usergroups``; an empty list only when the body sends one (the user left every group),
    None when the body does not say."""
    if body.usergroups:
        return body.usergroups
    return [] if isinstance(payload.get("usergroups"), list) else None


def map_added_to_group(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """user.addedToGroup -> group (the user group) + track User Added to Group."""
    body = GroupPayload.model_validate(payload)
    who = user_id(body.user.id, body.user.objectId, where="user.id")
    group_id = need(body.objectId, "missing_natural_id", "no group objectId")
    traits = compact(
        {
            "name": body.name,
            "description": body.description,
            "totalUsers": body.totalUsers,
            # Not userType: it is the added member's type, not the group's (a learner then an
            # educator added would flip the group's profile); the track carries it.
            "isDefaultGroup": body.isDefaultGroup,
            "moderators": [
                compact(
                    {
                        "id": as_id(first(item.get("objectId"), item.get("id"))),
                        "name": as_text(item.get("name")),
                    }
                )
                for item in body.moderators
            ],
        }
    )
    properties = compact(
        {
            "userGroupId": group_id,
            "userGroupName": body.name,
            "userType": body.userType,
            "isDefaultGroup": body.isDefaultGroup,
        }
    )
    return Draft(
        user_id=who,
        family="group.userAdded",
        natural=(group_id, who, occurrence(body.dateAdded) or content_hash(payload)),
        timestamp=event_time(received_at, body.dateAdded, body.meta.timestamp),
        calls=[
            Call("group", traits, group_id=group_id),
            Call("track", properties, "User Added to Group", essentials=("userGroupId",)),
        ],
        portal_id=body.portal.id,
        sub_portal_id=body.user.subPortalId,
        context_group_id=group_id,
        user_traits=event_user_traits(body.user, settings.trait_prefix),
    )


def _sitting(body: ExamRegistrationPayload, payload: Mapping[str, Any]) -> str:
    """What tells a resit registration from the first: the exam's own fields first (a
    ``resitCount``, should a body carry one; the sitting's ``schedule.openDate``), then
    ``meta.timestamp`` (which Synap may re-stamp on a retry), then the body."""
    exam = body.exam
    if exam.resitCount is not None:
        return f"resit:{exam.resitCount}"
    opens = occurrence(exam.schedule.openDate)
    if opens is not None:
        return f"opens:{opens}"
    return occurrence(body.meta.timestamp) or content_hash(payload)


def map_registered_for_exam(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """user.registeredForExam -> track Exam User Registered (the native source's name)."""
    body = ExamRegistrationPayload.model_validate(payload)
    exam = body.exam
    who = user_id(body.user.id, body.user.objectId, where="user.id")
    exam_id = need(first(exam.objectId, exam.id), "missing_natural_id", "no exam.objectId")
    group = body.userGroup.or_else(exam.userGroup)
    group_id = first(group.objectId, group.id)
    properties = compact(
        {
            "examId": exam_id,
            "examName": exam.name,
            "examUrl": exam.url,
            "examOpenDate": iso_or_none(exam.schedule.openDate),
            "examCloseDate": iso_or_none(exam.schedule.closeDate),
            "examAttributes": clean(exam.attr),
            "userGroupId": group_id,
            "userGroupName": group.name,
        }
    )
    return Draft(
        user_id=who,
        family="exam.userRegistered",
        natural=(exam_id, who, _sitting(body, payload)),
        timestamp=event_time(received_at, body.meta.timestamp),
        calls=[Call("track", properties, "Exam User Registered", essentials=("examId",))],
        portal_id=body.portal.id,
        sub_portal_id=body.user.subPortalId,
        context_group_id=group_id,
        user_traits=event_user_traits(body.user, settings.trait_prefix),
    )
