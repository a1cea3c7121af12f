"""The webhooks and messages the contract tests store: small, and the same for every backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson

from bridge.messages import OutgoingMessage
from bridge.store import DeadReason, Store, Webhook
from tests.conftest import attempt_completed

NOW = 10_000.0
#: More dead letters than one replay chunk (bridge.store.chunks.CHUNK: 2000, for both backends).
MANY = 2500


def hook(n: int, body: bytes | None = None, code: str = "exam.finished") -> Webhook:
    """Webhook ``n``, received at ``1000 + n``."""
    return Webhook(code, "portal-1", 1000.0 + n, body if body is not None else b'{"n": %d}' % n)


def msg(message_id: str, version: int = 1) -> OutgoingMessage:
    body = {"messageId": message_id, "userId": "u1", "type": "track", "v": version}
    return OutgoingMessage.build("default", body)


async def bury_all(store: Store, reason: str = "rejected") -> None:
    claimed = await store.claim(NOW, 100_000, 30)
    await store.bury([m.id for m in claimed], DeadReason(reason, "d"), "400", NOW)


def remap_to(messages: Sequence[OutgoingMessage]) -> Callable[[Webhook], Sequence[OutgoingMessage]]:
    return lambda _webhook: messages


async def keep_attempts(store: Store, attempts: list[int], at: float = NOW, tag: str = "") -> None:
    """One ``attempt.completed`` webhook per item (its attempt), 1 ms apart from ``at``, kept
    under the mapping ``tag`` (``serve`` keeps with its configuration's)."""
    for n, attempt in enumerate(attempts):
        body = orjson.dumps(attempt_completed(attempt))
        await store.keep(Webhook("attempt.completed", None, at + n / 1000, body), tag)
