"""Cutting claimed messages into Segment batches: pure, no I/O, no clock.

A batch holds messages of one destination, in arrival order, at most ``max_events`` of them, and
its request body stays within ``max_bytes``. The body is spliced from the stored bytes
(:mod:`bridge.delivery.wire`), so its size is known exactly: the sink's envelope
(``Sink.envelope_bytes``: ``sentAt``, ``writeKey``, brackets) plus every payload plus one comma
between two. Segment allows 500 KB; ``batch.max_bytes`` defaults to 475,000 like the library's own
consumer.

A message larger than :data:`bridge.messages.MAX_MESSAGE_BYTES` is never put in a batch: Segment
would reject the whole request. It is reported in ``Plan.oversized`` so the delivery buries it as
``message_too_large`` (the mapping should never produce one; this is the last defence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bridge.delivery.wire import SEPARATOR_BYTES, body_bytes
from bridge.messages import MAX_MESSAGE_BYTES
from bridge.store import ClaimedMessage


@dataclass(frozen=True, slots=True)
class Batch:
    destination: str
    messages: tuple[ClaimedMessage, ...]
    body_bytes: int  # the request body's exact size, envelope included

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.messages]

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]

    def halves(self, envelope: int) -> tuple[Batch, Batch]:
        """Split in two (for narrowing a permanent rejection down to the culprit)."""
        middle = len(self.messages) // 2
        return (
            make_batch(self.destination, self.messages[:middle], envelope),
            make_batch(self.destination, self.messages[middle:], envelope),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    batches: list[Batch] = field(default_factory=list)
    oversized: list[ClaimedMessage] = field(default_factory=list)


def make_batch(destination: str, messages: Sequence[ClaimedMessage], envelope: int) -> Batch:
    size = body_bytes(envelope, [len(m.payload) for m in messages])
    return Batch(destination, tuple(messages), size)


def plan(
    messages: Iterable[ClaimedMessage],
    max_events: int,
    max_bytes: int,
    envelope: Callable[[str], int],
) -> Plan:
    """Group ``messages`` (in claim order) into batches per destination.

    ``envelope(destination)`` is the size of that destination's request body without messages.
    Batches come out ordered by their first message, so the oldest messages go first. Only a
    message over the per-message limit is refused here; any other fits a request of its own.
    """
    if max_events < 1:
        raise ValueError("max_events must be at least 1")
    result = Plan()
    # destination -> (position of its first message, messages, body bytes so far)
    filling: dict[str, tuple[int, list[ClaimedMessage], int]] = {}
    closed: list[tuple[int, Batch]] = []

    def close(destination: str) -> None:
        first, items, size = filling.pop(destination)
        closed.append((first, Batch(destination, tuple(items), size)))

    for position, msg in enumerate(messages):
        if len(msg.payload) > MAX_MESSAGE_BYTES:
            result.oversized.append(msg)
            continue
        dest = msg.destination
        size = len(msg.payload)
        current = filling.get(dest)
        if current is not None and (
            len(current[1]) >= max_events or current[2] + SEPARATOR_BYTES + size > max_bytes
        ):
            close(dest)
            current = None
        if current is None:
            filling[dest] = (position, [msg], envelope(dest) + size)
        else:
            current[1].append(msg)
            filling[dest] = (current[0], current[1], current[2] + SEPARATOR_BYTES + size)
    for dest in list(filling):
        close(dest)
    closed.sort(key=lambda item: item[0])
    result.batches.extend(batch for _, batch in closed)
    return result
