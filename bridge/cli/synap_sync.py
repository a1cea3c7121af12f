"""``synap-bridge synap sync``: make the portal's webhook subscriptions through Synap's API.

Each wanted code (:func:`bridge.cli.synap_plan.wanted_codes`) gets exactly one subscription at
``{synap.public_url}/webhooks/synap/{code}`` with the bridge's Basic credentials. The plan
(create / update / leave / remove) is printed first; ``--dry-run`` stops there. Creates and
updates run before removals. Listing, updating and deleting are not documented by Synap: when
the API refuses them, missing subscriptions are created and the operator is told exactly which
ones to remove by hand. The token (``BRIDGE_SYNAP__TOKEN`` or ``SYNAP_API_TOKEN``) and the
passwords are never printed or logged.

``--rotate-password`` moves every subscription to ``auth.next_password``, which the running
bridge must already accept (it accepts both passwords while ``next_password`` is set; the
command checks that at ``public_url`` first). Without one it prints a fresh password once and
changes nothing. The order of steps is in docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import os
import secrets
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp
from pydantic import SecretStr

from bridge.cli import synap_plan
from bridge.cli.synap_plan import Step
from bridge.config import Config
from bridge.synap.api import NotSupportedError, Subscription, SynapApi, SynapApiError, Wanted

ENV_TOKEN = "SYNAP_API_TOKEN"  # noqa: S105 - the variable's name, not a token
EX_CONFIG = 78
EX_NEEDS_PASSWORD = 3
PROBE_DEADLINE_SECS = 15.0
PORTAL_PAGE = "Synap portal, Settings -> Integrations -> Webhooks"


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    synap = commands.add_parser("synap", parents=[common], help="Synap's side: subscriptions")
    actions = synap.add_subparsers(dest="action", required=True, metavar="ACTION")
    sync = actions.add_parser(
        "sync",
        parents=[common],
        help="create/update the webhook subscriptions through Synap's API",
        description="One subscription per mapped code at {synap.public_url}/webhooks/synap/CODE.",
    )
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sync.add_argument(
        "--rotate-password",
        action="store_true",
        help="move every subscription to auth.next_password (see docs/operations.md)",
    )
    sync.add_argument(
        "--no-check",
        action="store_true",
        help="with --rotate-password: do not check that the bridge accepts the new password",
    )


def token_of(config: Config, environ: Mapping[str, str]) -> str | None:
    if config.synap.token is not None:
        return config.synap.token.get_secret_value()
    return environ.get(ENV_TOKEN) or None


def run(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    return asyncio.run(sync(args, config, out, os.environ))


async def sync(
    args: argparse.Namespace, config: Config, out: TextIO, environ: Mapping[str, str]
) -> int:
    missing = _missing(config, environ)
    if missing:
        out.write("synap sync needs:\n" + "".join(f"  {line}\n" for line in missing))
        return EX_CONFIG
    public_url, token = config.synap.public_url, token_of(config, environ)
    assert public_url is not None, "checked by _missing"
    assert token is not None, "checked by _missing"
    password = await _password(args, config, public_url, out)
    if isinstance(password, int):
        return password
    wants = synap_plan.wanted(config, public_url, password)
    out.write(f"Synap API {config.synap.api_url}; subscriptions at {synap_plan.prefix(public_url)}")
    out.write("<code>\n")
    try:
        async with SynapApi(config.synap.api_url, token, config.synap.timeout_secs) as api:
            steps = await _plan(api, wants, public_url, args.rotate_password, out)
            if args.dry_run:
                out.write("dry run: nothing changed\n")
                return 0
            by_hand = await _apply(api, steps, out)
    except SynapApiError as exc:
        out.write(f"stopped: {exc}\n")
        return 1
    _write_by_hand(by_hand, args.rotate_password, out)
    out.write("done\n")
    return 0


async def _password(
    args: argparse.Namespace, config: Config, public_url: str, out: TextIO
) -> str | int:
    """The password the subscriptions should carry, or the exit status when there is none yet
    (rotation without ``next_password``) or the bridge does not accept it."""
    current = config.auth.password
    assert current is not None, "checked by _missing"
    if not args.rotate_password:
        return current.get_secret_value()
    following = config.auth.next_password
    if following is None:
        out.write(_new_password_steps())
        return EX_NEEDS_PASSWORD
    if not args.no_check:
        problem = await _bridge_refuses(public_url, config.auth.username, following)
        if problem:
            out.write(f"not rotating: {problem}\n")
            return 1
    return following.get_secret_value()


async def _plan(
    api: SynapApi, wants: list[Wanted], public_url: str, rotate: bool, out: TextIO
) -> list[Step]:
    """List what exists (or fall back when Synap will not), compare, print the plan."""
    try:
        existing: list[Subscription] | None = await api.subscriptions()
    except NotSupportedError as exc:
        out.write(
            f"Synap's API does not list subscriptions ({exc.status}): every code is "
            "created; if the portal already has subscriptions for these codes, remove "
            f"the older ones by hand ({PORTAL_PAGE}).\n"
        )
        existing = None
    steps = synap_plan.plan(wants, existing, public_url, rotate=rotate)
    _write_plan(steps, out)
    elsewhere = synap_plan.others(existing or [], public_url)
    if elsewhere:
        out.write(f"{elsewhere} other subscription(s) point elsewhere: left alone\n")
    return steps


def _write_by_hand(by_hand: list[Step], rotate: bool, out: TextIO) -> None:
    if not by_hand:
        return
    out.write(f"remove by hand ({PORTAL_PAGE}); Synap's API refused to change them:\n")
    for step in by_hand:
        assert step.existing is not None, "only existing subscriptions are left to remove"
        out.write(f"  id {step.existing.id}  {step.event_name}  {step.existing.target_url}\n")
    if rotate:
        out.write(
            "they still use the current password: remove them before the bridge stops "
            "accepting it (step 3 in docs/operations.md)\n"
        )


def _missing(config: Config, environ: Mapping[str, str]) -> list[str]:
    missing = []
    if config.synap.public_url is None:
        missing.append("synap.public_url: the bridge's https:// address as Synap reaches it")
    if token_of(config, environ) is None:
        missing.append(
            f"a Personal Access Token in BRIDGE_SYNAP__TOKEN or {ENV_TOKEN} "
            "(portal Settings -> Automations -> API)"
        )
    if config.auth.password is None:
        missing.append("auth.password (BRIDGE_AUTH__PASSWORD): subscriptions carry it")
    return missing


def _new_password_steps() -> str:
    fresh = secrets.token_urlsafe(32)
    return (
        "auth.next_password is not set, so nothing was changed. A new password (shown once, "
        "not stored anywhere):\n\n"
        f"    {fresh}\n\n"
        "1. Put it in the bridge's secret store as BRIDGE_AUTH__NEXT_PASSWORD and restart the\n"
        "   bridge: it then accepts the current and the new password.\n"
        "2. Run `synap-bridge synap sync --rotate-password` with the same environment: every\n"
        "   subscription moves to the new password.\n"
        "3. Make the new password BRIDGE_AUTH__PASSWORD, remove BRIDGE_AUTH__NEXT_PASSWORD and\n"
        "   restart the bridge.\n"
    )


async def _bridge_refuses(public_url: str, username: str, password: SecretStr) -> str | None:
    """Does the bridge at ``public_url`` accept ``password``? A body declared gzip that is not
    gzip cannot be read: it is answered 400 after authentication, with nothing kept (any body
    the bridge can read would be kept, and become a dead letter), and 401 before it."""
    raw = f"{username}:{password.get_secret_value()}".encode()
    pair = base64.b64encode(raw).decode("ascii")
    headers = {"Authorization": f"Basic {pair}", "Content-Encoding": "gzip"}
    url = f"{synap_plan.prefix(public_url)}attempt.completed"
    timeout = aiohttp.ClientTimeout(total=PROBE_DEADLINE_SECS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=b"not gzip: a password check", headers=headers) as answer,
        ):
            status = answer.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return (
            f"the bridge at {public_url} could not be reached to check the new password "
            f"({type(exc).__name__}); check it, or pass --no-check"
        )
    if status == 400:
        return None
    if status == 401:
        return (
            f"the bridge at {public_url} refuses auth.next_password: set "
            "BRIDGE_AUTH__NEXT_PASSWORD in its environment and restart it first"
        )
    return f"the bridge at {public_url} answered {status} to the password check"


def _write_plan(steps: list[Step], out: TextIO) -> None:
    out.write("plan:\n")
    for step in steps:
        ident = f" (id {step.existing.id})" if step.existing is not None else ""
        out.write(f"  {step.action:7} {step.event_name:30}{ident}: {step.why}\n")
    counts = {a: sum(s.action == a for s in steps) for a in ("create", "update", "leave", "remove")}
    out.write(", ".join(f"{n} to {a}" for a, n in counts.items()) + "\n")


async def _apply(api: SynapApi, steps: list[Step], out: TextIO) -> list[Step]:
    """Creates and updates, then removals; what Synap refused to change is returned."""
    by_hand: list[Step] = []
    can_update = can_delete = True
    for step in steps:
        if step.action == "create":
            assert step.wanted is not None
            made = await api.create(step.wanted)
            out.write(f"  created {step.event_name} (id {made.id})\n")
        elif step.action == "update":
            assert step.wanted is not None, "an update has a wanted state"
            assert step.existing is not None, "an update has an existing subscription"
            want: Wanted = dataclasses.replace(step.wanted, target_url=step.existing.target_url)
            if can_update:
                try:
                    await api.update(step.existing.id, want)
                    out.write(f"  updated {step.event_name} (id {step.existing.id})\n")
                    continue
                except NotSupportedError:
                    can_update = False
                    out.write("  Synap's API does not update subscriptions: creating new ones\n")
            made = await api.create(want)
            out.write(f"  created {step.event_name} (id {made.id}) to replace {step.existing.id}\n")
            by_hand.append(step)
    for step in steps:
        if step.action != "remove":
            continue
        assert step.existing is not None
        if can_delete:
            try:
                await api.delete(step.existing.id)
                out.write(f"  removed {step.event_name} (id {step.existing.id})\n")
                continue
            except NotSupportedError:
                can_delete = False
        by_hand.append(step)
    return by_hand
