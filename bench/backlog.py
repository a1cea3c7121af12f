"""Build a delivery backlog fast, through the store's own API, from realistic messages.

The messages are what the bridge's real mapping makes of the benchmark's ``exam.completed``
body (one ``Completed Test`` track call, about 2 KB). Mapping 100,000 or 1,000,000 bodies one by
one would take longer than the measurement, so the body is mapped once with marker ids and each
message is derived from that template by replacing the user id, the attempt id and the
messageId in its bytes: the stored payloads are byte-for-byte what the mapping would produce
for those ids, except that the messageId is a hash of the run tag and the message number.

Rows go in through :meth:`SQLiteStore.enqueue` with thousands of calls in flight, which the
writer thread commits together (group commit), the same path intake uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

from bench import body
from bridge import config as config_module
from bridge.mapping import intake
from bridge.messages import OutgoingMessage
from bridge.store import Webhook
from bridge.store.sqlite.store import SQLiteStore

USER_MARK = "u-BENCHUSERMARK"
ATTEMPT_MARK = "a-BENCHATTEMPTMARK"
#: Messages per group of enqueue calls in flight (one transaction, a bounded WAL).
MESSAGES_IN_FLIGHT = 5000


def _template() -> tuple[bytes, list[OutgoingMessage]]:
    raw = body.render(USER_MARK, ATTEMPT_MARK)
    mapped = intake.process("exam.completed", raw, time.time(), config_module.parse({}))
    if mapped.dead is not None or not mapped.messages:
        raise RuntimeError(f"the benchmark body does not map: {mapped.dead}")
    return raw, mapped.messages


def messages(count: int, tag: str) -> Iterator[tuple[bytes, OutgoingMessage]]:
    """``count`` distinct messages ``(raw body of its webhook, message)``, deterministic."""
    raw, templates = _template()
    text = raw.decode()
    made = 0
    number = 0
    while made < count:
        user, attempt = body.ids(tag, number)
        number += 1
        webhook_body = text.replace(USER_MARK, user).replace(ATTEMPT_MARK, attempt).encode()
        for template in templates:
            if made >= count:
                break
            head = template.message_id.split("-", 1)[0]
            digest = hashlib.sha256(f"{tag}\x1f{made}".encode()).hexdigest()
            new_id = f"{head}-{digest}"
            payload = (
                template.payload.replace(USER_MARK.encode(), user.encode())
                .replace(ATTEMPT_MARK.encode(), attempt.encode())
                .replace(template.message_id.encode(), new_id.encode())
            )
            yield webhook_body, OutgoingMessage(new_id, template.destination, user, payload)
            made += 1


def _webhooks(
    count: int, per_webhook: int, tag: str, at: float
) -> Iterator[tuple[Webhook, list[OutgoingMessage]]]:
    """Group the messages ``per_webhook`` to a webhook row (the first message's raw body)."""
    group: list[OutgoingMessage] = []
    first = b""
    for raw, message in messages(count, tag):
        if not group:
            first = raw
        group.append(message)
        if len(group) == per_webhook:
            yield Webhook("exam.completed", "portalAc9Rz", at, first), group
            group = []
    if group:
        yield Webhook("exam.completed", "portalAc9Rz", at, first), group


async def _build(path: Path, count: int, per_webhook: int, tag: str) -> None:
    store = SQLiteStore(path, synchronous="OFF")
    await store.open()
    try:
        pending: list[asyncio.Future[object]] = []
        calls = max(1, MESSAGES_IN_FLIGHT // per_webhook)
        for webhook, group in _webhooks(count, per_webhook, tag, time.time()):
            pending.append(asyncio.ensure_future(store.enqueue(webhook, group)))
            if len(pending) >= calls:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await store.close()


def build(path: Path, count: int, tag: str, per_webhook: int = 1) -> float:
    """Create ``path`` holding ``count`` pending messages; the seconds it took."""
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    started = time.perf_counter()
    asyncio.run(_build(path, count, per_webhook, tag))
    return time.perf_counter() - started
