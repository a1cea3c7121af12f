"""Everything else a learner does: assignments, flags, store purchases, invites, learning records.

Two events follow Segment's semantic specs rather than a Synap name, because destinations
understand them: store.purchase is ``Order Completed`` (e-commerce spec: ``order_id``,
``products[]``, ``revenue``/``currency`` only when the body has a price) and invite.sent is
``Invite Sent`` (B2B SaaS spec: ``invitee_email``).
"""

from __future__ import annotations

import hashlib
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
from bridge.mapping.traits import event_user_traits
from bridge.synap.payloads import (
    AssignmentPayload,
    FlagPayload,
    InvitePayload,
    LearningRecordPayload,
    PurchasePayload,
)
from bridge.synap.values import as_text, clean, content_hash


def map_assignment(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """assignment.completed / assignment.complete (one family: both spellings, one event)."""
    body = AssignmentPayload.model_validate(payload)
    who = user_id(body.user.id, body.user.objectId, where="user.id")
    assignment, group = body.assignment, body.assignmentGroup
    assignment_id = need(
        first(assignment.objectId, assignment.id), "missing_natural_id", "no assignment.objectId"
    )
    properties = compact(
        {
            "assignmentId": assignment_id,
            "assignmentName": assignment.name,
            "assignmentStatus": assignment.status,
            "assignmentGroupId": first(group.objectId, group.id),
            "assignmentGroupName": group.name,
        }
    )
    return Draft(
        user_id=who,
        family="assignment.completed",
        # One completion per user and assignment (and status): the body has no occurrence field,
        # and meta.timestamp may be re-stamped on a retry, which would split one completion.
        natural=(assignment_id, who, as_text(assignment.status) or "-"),
        timestamp=event_time(received_at, body.meta.timestamp),
        calls=[Call("track", properties, "Assignment Completed", essentials=("assignmentId",))],
        portal_id=body.portal.id,
        sub_portal_id=body.user.subPortalId,
        user_traits=event_user_traits(body.user, settings.trait_prefix),
    )


def map_flag(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """flag.planted -> track Flag Planted; the user is the planter (there is no ``user`` key)."""
    body = FlagPayload.model_validate(payload)
    who = user_id(body.planter.id, body.planter.objectId, body.user.id, where="planter.id")
    flag_id = need(body.objectId, "missing_natural_id", "no flag objectId")
    question, test = body.question, body.test
    properties = compact(
        {
            "flagId": flag_id,
            "comment": body.comment,
            "questionId": question.objectId,
            "questionStem": question.stem,
            "questionUrl": question.url,
            "testId": first(test.objectId, test.id),
            "testTitle": test.title,
        }
    )
    return Draft(
        user_id=who,
        family="flag.planted",
        natural=(flag_id,),
        timestamp=event_time(received_at, body.createdAt, body.meta.timestamp),
        calls=[Call("track", properties, "Flag Planted", essentials=("flagId",))],
        portal_id=body.portal.id,
        sub_portal_id=first(body.planter.subPortalId, body.user.subPortalId),
        user_traits=event_user_traits(body.planter, settings.trait_prefix)
        if who in (body.planter.id, body.planter.objectId)
        else None,
    )


def map_purchase(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """store.purchase -> track Order Completed (Segment e-commerce spec)."""
    body = PurchasePayload.model_validate(payload)
    who = user_id(body.user.id, body.user.objectId, where="user.id")
    product_id = need(body.objectId, "missing_natural_id", "no product objectId")
    moment = occurrence(body.purchasedAt) or as_text(body.purchasedAt) or content_hash(payload)
    # Synap has no order id: derive a stable one from the purchase's natural id.
    digest = hashlib.sha256("\x1f".join((product_id, who, moment)).encode("utf-8")).hexdigest()
    product = compact(
        {
            "product_id": product_id,
            "name": body.title,
            "description": body.shortDescription,
            "price": body.price,
            "quantity": 1,
        }
    )
    unlocks = [
        compact({"type": clean(item.get("type")), "targetId": clean(item.get("targetId"))})
        for item in body.unlockActions
    ]
    properties = compact(
        {
            "order_id": f"synap-{digest[:24]}",
            "products": [product],
            "revenue": first(body.revenue, body.price),
            "currency": body.currency,
            "purchaseMethod": body.purchaseMethod,
            "unlockActions": [item for item in unlocks if item],
        }
    )
    return Draft(
        user_id=who,
        family="store.purchase",
        natural=(product_id, who, moment),
        timestamp=event_time(received_at, body.purchasedAt, body.meta.timestamp),
        calls=[Call("track", properties, "Order Completed", essentials=("order_id",))],
        portal_id=body.portal.id,
        sub_portal_id=body.user.subPortalId,
        user_traits=event_user_traits(body.user, settings.trait_prefix),
    )


def map_invite(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """invite.sent -> track Invite Sent; each new try of an invite is a new event."""
    body = InvitePayload.model_validate(payload)
    invite = body.invite
    who = user_id(body.user.id, body.user.objectId, where="user.id")
    invite_id = need(invite.objectId, "missing_natural_id", "no invite.objectId")

    properties = compact(
        {
            "inviteId": invite_id,
            "invitee_email": invite.inviteEmail,
            "targetId": invite.targetId,
            "expiryDate": iso_or_none(invite.expiryDate),
            "totalTries": invite.totalTries,
            "personalMessage": invite.personalMessage,
        }
    )
    return Draft(
        user_id=who,
        family="invite.sent",
        # A resent invite is a new event: its try count (the invite's own field) tells it apart;
        # meta.timestamp (or the body) only when the body has no count.
        natural=(invite_id, *_try_of(invite.totalTries, body.meta.timestamp, payload)),
        timestamp=event_time(received_at, body.meta.timestamp),
        calls=[Call("track", properties, "Invite Sent", essentials=("inviteId",))],
        portal_id=body.portal.id,
        sub_portal_id=body.user.subPortalId,
        user_traits=event_user_traits(body.user, settings.trait_prefix),
    )


def _try_of(tries: Any, meta_time: Any, payload: Mapping[str, Any]) -> tuple[str, ...]:
    count = as_text(tries)
    if count is not None:
        return (count,)
    return ("-", occurrence(meta_time) or content_hash(payload))


def map_learning_record(
    code: str, payload: Mapping[str, Any], received_at: datetime, settings: MappingConfig
) -> Draft:
    """learningRecord.created -> track Learning Record Created.

    ``attr.file`` holds a short-lived pre-signed URL: useless (and leaky) once stored in a
    warehouse, so only ``hasFile`` is sent, never the link.
    """
    body = LearningRecordPayload.model_validate(payload)
    record = body.learningRecord
    who = user_id(body.user.id, body.user.objectId, where="user.id")
    record_id = need(record.objectId, "missing_natural_id", "no learningRecord.objectId")
    attributes = {key: value for key, value in record.attr.items() if key != "file"}
    properties = compact(
        {
            "learningRecordId": record_id,
            "learningRecordName": record.name,
            "score": record.score,
            "visibleToStudent": record.visibleToStudent,
            "achievedOn": iso_or_none(record.achievedOn),
            "hasFile": bool(record.attr.get("file")) if "file" in record.attr else None,
            "attributes": clean(attributes),
        }
    )
    return Draft(
        user_id=who,
        family="learningRecord.created",
        natural=(record_id,),
        timestamp=event_time(received_at, body.meta.timestamp),
        calls=[
            Call("track", properties, "Learning Record Created", essentials=("learningRecordId",))
        ],
        portal_id=body.portal.id,
        sub_portal_id=body.user.subPortalId,
        user_traits=event_user_traits(body.user, settings.trait_prefix),
    )
