"""``synap-bridge try CODE``: see what a Synap webhook becomes, without Synap.

Posts the shipped sample body of ``CODE`` (:mod:`bridge.synap.samples`) to a running bridge with
the configured Basic credentials, exactly as Synap would, then reads what the bridge *stored*
for that webhook (its answer names the webhook id; the events query gives its messages and
their states) and prints those Segment calls. What is shown is what the bridge did, not a
guess: when the sample was posted before, its messageIds are already stored (Synap's
redeliveries collapse the same way), so the messages shown are the earlier ones, found by
messageId.

``--offline`` maps the sample in this process with this configuration and prints the calls;
nothing is posted or stored. Without ``--offline`` the sample is a real webhook: with a Segment
write key configured for any destination (the default or a routed one: which one the sample
reaches depends on its portal and on routing) it reaches Segment (for user ``usr_7f3a9c21`` of
the samples), so that needs ``--yes``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from typing import Any, TextIO

import aiohttp
import orjson

from bridge.cli import events as cli_events
from bridge.cli import ops
from bridge.config import DEFAULT_DESTINATION, Config
from bridge.errors import InvalidPayloadError
from bridge.mapping import intake
from bridge.store import EventMessage, EventQuery, Store
from bridge.synap import samples

#: Total deadline of the POST (connect, send, answer), and of waiting for delivery.
POST_DEADLINE_SECS = 15.0
POLL_SECS = 0.1
SETTLED = frozenset({"delivered", "dead"})


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    known = samples.codes()
    command = commands.add_parser(
        "try",
        parents=[common],
        help="post a sample webhook and show the Segment calls it becomes",
        description="Sample codes: " + ", ".join(known),
    )
    command.add_argument("code", metavar="CODE", choices=known, help="a Synap event code")
    command.add_argument(
        "--offline", action="store_true", help="map here with this configuration; post nothing"
    )
    command.add_argument(
        "--url", help="the bridge's base URL (default: http://<server.host>:<server.port>)"
    )
    command.add_argument(
        "--wait",
        type=float,
        default=5.0,
        metavar="SECS",
        help="wait up to this long for the messages to be delivered (default 5; 0: do not)",
    )
    command.add_argument(
        "--yes", action="store_true", help="post even though a Segment write key is configured"
    )
    command.add_argument("--json", action="store_true", help="machine-readable output")


def local_url(config: Config) -> str:
    """Where this host reaches its own bridge: a wildcard address means loopback."""
    host = config.server.host
    if host in ("", "0.0.0.0"):  # noqa: S104 - read, not bound: the wildcard means "this host"
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


def run(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    if args.offline:
        return offline(args.code, config, out, as_json=args.json)
    keyed = live_destinations(config)
    if keyed and not args.yes:
        out.write(
            f"a Segment write key is set (destinations: {', '.join(keyed)}): the sample may "
            "reach Segment as a real event (user usr_7f3a9c21). Add --yes to post it anyway, "
            "or use --offline.\n"
        )
        return 2
    return asyncio.run(ops.with_store(config, _online, args, out))


def live_destinations(config: Config) -> list[str]:
    """Every destination with a write key: each is a real Segment source the sample may reach."""
    dry = set(config.dry_run_destinations)
    names = ["default", *config.routing.destinations]
    return [name for name in names if name not in dry]


def offline(code: str, config: Config, out: TextIO, *, as_json: bool = False) -> int:
    try:
        result = intake.process(code, samples.raw(code), time.time(), config)
    except InvalidPayloadError as exc:  # pragma: no cover - the shipped samples are valid
        out.write(f"the sample is refused: {exc.code}: {exc.detail}\n")
        return 1
    if as_json:
        report = {
            "code": code,
            "dead_letter": None
            if result.dead is None
            else {"reason": result.dead.reason, "detail": result.dead.detail},
            "messages": [
                {"destination": m.destination, "sent": orjson.loads(m.payload)}
                for m in result.messages
            ],
        }
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return 0
    out.write(f"{code}: mapped here with this configuration (nothing posted or stored)\n")
    if result.dead is not None:
        out.write(f"not mapped: {result.dead.reason}: {result.dead.detail}\n")
    for n, message in enumerate(result.messages, 1):
        out.write(f"\n--- call {n} of {len(result.messages)} to {message.destination} ---\n")
        out.write(json.dumps(orjson.loads(message.payload), indent=2, ensure_ascii=False) + "\n")
    return 0


async def post(url: str, code: str, config: Config) -> tuple[int, dict[str, Any] | str]:
    """POST the sample as Synap would; (status, parsed answer or its text). Bounded in time."""
    headers = {"Content-Type": "application/json"}
    password = config.auth.password
    if password is not None:
        pair = f"{config.auth.username}:{password.get_secret_value()}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    timeout = aiohttp.ClientTimeout(total=POST_DEADLINE_SECS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            f"{url.rstrip('/')}/webhooks/synap/{code}",
            data=samples.raw(code),
            headers=headers,
        ) as response,
    ):
        text = await response.text()
        try:
            answer = json.loads(text)
        except ValueError:
            return response.status, text
        return response.status, answer if isinstance(answer, dict) else text


async def _online(store: Store, args: argparse.Namespace, config: Config, out: TextIO) -> int:
    url = args.url or local_url(config)
    wait = await _service_mode(store, args, config, out)
    if wait is None:
        return 2
    try:
        status, answer = await post(url, args.code, config)
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.write(f"could not post to the bridge at {url}: {exc or type(exc).__name__}\n")
        return 1
    if status != 200 or not isinstance(answer, dict):
        out.write(f"the bridge at {url} answered {status}: {answer}\n")
        return 1
    webhook_id = str(answer.get("webhook_id"))
    messages = await _messages(store, webhook_id, args.code, config, wait)
    found = await store.event(webhook_id, time.time())
    if args.json:
        report = {
            "answer": {"status": status, **answer},
            "webhook": None if found is None else cli_events.record_dict(found.event),
            "messages": [cli_events.message_dict(m) for m in messages],
        }
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return 0
    out.write(f"posted the {args.code} sample to {url}: {status} {json.dumps(answer)}\n")
    if found is None:
        out.write(
            f"{webhook_id} is not in this configuration's database ({config.storage.path}): "
            "is the bridge at that URL using another one? Try --offline to see the mapping.\n"
        )
        return 1
    if found.event.unmapped_tries is not None:
        out.write(
            f"{webhook_id} is kept but not mapped yet (tries: {found.event.unmapped_tries}): "
            "the mapping stage is behind or stopped; `synap-bridge stats` shows the lag\n"
        )
    elif found.event.dead is not None:
        out.write(f"not mapped: {found.event.dead.reason}: {found.event.dead.detail}\n")
    elif len(messages) > len(found.event.messages):
        out.write(
            "its messageIds were already stored by an earlier webhook (this sample was posted "
            "before; Segment counts each once): showing those messages\n"
        )
    for n, message in enumerate(messages, 1):
        out.write(f"\n--- call {n} of {len(messages)}: {cli_events.message_line(message)}\n")
        out.write(json.dumps(orjson.loads(message.payload), indent=2, ensure_ascii=False) + "\n")
    return 0


async def _service_mode(
    store: Store, args: argparse.Namespace, config: Config, out: TextIO
) -> float | None:
    """How long to wait for the messages, or None to refuse. The serving bridge's mode, not this
    command's: a CLI without the key must not post a real event unasked, and a dry-run bridge
    is said to be one at once (its messages stay pending: nothing to wait for)."""
    service = await ops.service_report(store, config, time.time())
    mode = {d["name"]: d.get("mode") for d in service["destinations"]}.get(DEFAULT_DESTINATION)
    if mode == "live" and not args.yes:
        out.write(
            "the serving bridge has a write key: the sample would reach Segment as a real event "
            "(user usr_7f3a9c21). Add --yes to post it anyway, or use --offline.\n"
        )
        return None
    if mode == "dry-run":
        if not args.json:
            out.write(
                "dry-run: the serving bridge has no write key, so the sample is stored and "
                "logged, not sent; its messages stay pending\n"
            )
        return 0.0
    return float(args.wait)


#: How long ``try`` follows a kept webhook to its mapping (the mapping stage runs after the
#: answer), whatever ``--wait`` says about delivery.
MAPPING_WAIT_SECS = 10.0


async def _messages(
    store: Store, webhook_id: str, code: str, config: Config, wait: float
) -> list[EventMessage]:
    """The stored messages of the webhook, or (duplicates) those with the same messageIds,
    once all are delivered or dead, or when ``wait`` runs out. The mapping itself is followed
    for :data:`MAPPING_WAIT_SECS` at least (also in dry-run, where ``wait`` is 0: there is
    nothing to deliver, but what the sample becomes is the point)."""
    started = time.monotonic()
    deadline = started + max(0.0, wait)
    mapped_by = started + max(wait, MAPPING_WAIT_SECS)
    while True:
        found = await store.event(webhook_id, time.time())
        waiting = found is not None and found.event.unmapped_tries is not None
        if waiting and time.monotonic() < mapped_by:  # kept, not mapped yet: follow it
            await asyncio.sleep(POLL_SECS)
            continue
        messages = list(found.event.messages) if found is not None else []
        if found is not None and found.event.dead is None:
            messages = await _with_duplicates(store, messages, code, config)
        if all(m.state in SETTLED for m in messages) or time.monotonic() >= deadline:
            return messages
        await asyncio.sleep(POLL_SECS)


async def _with_duplicates(
    store: Store, stored: list[EventMessage], code: str, config: Config
) -> list[EventMessage]:
    """Add the messages the sample maps to that an earlier webhook stored (found by messageId:
    the ids are deterministic, so mapping it here names them)."""
    have = {m.message_id for m in stored}
    try:
        mapped = intake.process(code, samples.raw(code), time.time(), config).messages
    except InvalidPayloadError:  # pragma: no cover - the shipped samples are valid
        return stored
    found = list(stored)
    for message in mapped:
        if message.message_id in have:
            continue
        for record in await store.find_events(
            EventQuery(message_id=message.message_id, limit=1), time.time()
        ):
            found.extend(m for m in record.messages if m.message_id == message.message_id)
    return found
