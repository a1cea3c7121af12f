"""What ``synap sync`` would change: the subscriptions wanted, compared with those that exist.

Pure (no I/O), so every case of the comparison is tested without a server. The goal: each
wanted code has exactly one active subscription at ``{public_url}/webhooks/synap/{code}`` with
the bridge's Basic credentials (a ``?portal=ID`` the operator added to a URL is kept). Subscriptions
whose URL is not under the bridge's
``{public_url}/webhooks/synap/`` belong to something else and are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bridge.config import CodeMapping, Config
from bridge.mapping.webhook import known_codes
from bridge.synap import codes as synap_codes
from bridge.synap.api import Subscription, Wanted

Action = Literal["create", "update", "leave", "remove"]


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    event_name: str
    target_url: str
    why: str
    existing: Subscription | None = None  # the subscription updated, left or removed
    wanted: Wanted | None = None  # what it should be (create, update)


def prefix(public_url: str) -> str:
    return f"{public_url.rstrip('/')}/webhooks/synap/"


def wanted_codes(config: Config) -> list[str]:
    """``synap.codes``, else every code the bridge maps and has not switched off.

    ``assignment.complete`` (the spelling of Synap's API sample) is left out: the event table
    says ``assignment.completed``, and subscribing both could double every webhook. An operator
    whose portal only knows the other spelling lists the codes in ``synap.codes``.
    """
    if config.synap.codes is not None:
        return list(dict.fromkeys(config.synap.codes))
    return [
        code
        for code in known_codes(config)
        if code != synap_codes.ASSIGNMENT_COMPLETE
        and config.mapping.codes.get(code, CodeMapping()).enabled
    ]


def wanted(config: Config, public_url: str, password: str) -> list[Wanted]:
    return [
        Wanted(code, prefix(public_url) + code, config.auth.username, password)
        for code in wanted_codes(config)
    ]


def plan(
    wants: Sequence[Wanted],
    existing: Sequence[Subscription] | None,
    public_url: str,
    *,
    rotate: bool = False,
) -> list[Step]:
    """Creates and updates first, then removals, so no code is ever left without one.

    ``existing`` None: the API would not list them; every code is created (the caller tells the
    operator to remove older ones by hand). A subscription's password cannot be read back, so
    one that matches in everything else is left, unless ``rotate``.
    """
    if existing is None:
        return [
            Step(
                "create", w.event_name, w.target_url, "the API does not list subscriptions", None, w
            )
            for w in wants
        ]
    ours = [s for s in existing if s.target_url.startswith(prefix(public_url))]
    kept: set[str] = set()
    steps: list[Step] = []
    for want in wants:
        same = [s for s in ours if s.event_name == want.event_name and _points_at(s, want)]
        same.sort(key=lambda s: not s.active)  # an active one is kept first
        if not same:
            steps.append(Step("create", want.event_name, want.target_url, "missing", None, want))
            continue
        keep = same[0]
        kept.add(keep.id)
        why = _update_reason(keep, want, rotate)
        action: Action = "update" if why else "leave"
        steps.append(Step(action, want.event_name, want.target_url, why or "as wanted", keep, want))
    for sub in ours:
        if sub.id in kept:
            continue
        why = (
            "a second subscription for the same code"
            if any(s.existing and s.existing.event_name == sub.event_name for s in steps)
            else "not a code the bridge subscribes with this configuration, or a wrong URL"
        )
        steps.append(Step("remove", sub.event_name, sub.target_url, why, sub))
    return steps


def _points_at(sub: Subscription, want: Wanted) -> bool:
    """The wanted URL, or it with a query (``?portal=ID``, the operator's portal hint)."""
    return sub.target_url == want.target_url or sub.target_url.startswith(want.target_url + "?")


def _update_reason(current: Subscription, want: Wanted, rotate: bool) -> str:
    reasons = []
    if not current.active:
        reasons.append("inactive")
    if current.username is not None and current.username != want.username:
        reasons.append("another user name")
    if rotate:
        reasons.append("password rotation")
    return ", ".join(reasons)


def others(existing: Sequence[Subscription], public_url: str) -> int:
    """Subscriptions that point somewhere else (left alone)."""
    return sum(1 for s in existing if not s.target_url.startswith(prefix(public_url)))
