"""The webhooks and messages the contract tests store: small, and the same for every backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bridge.messages import OutgoingMessage
from bridge.store import DeadReason, Store, Webhook

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
