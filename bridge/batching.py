"""Cutting claimed messages into Segment batches: pure, no I/O, no clock.

A batch holds messages of one destination, in arrival order, at most ``max_events`` of them, and
its request body stays within ``max_bytes``. The body is the one ``segment.analytics.request.post``
writes: ``{"batch": [m1, m2, ...], "sentAt": "...", "writeKey": "..."}`` serialised by
``json.dumps``, which differs from the compact UTF-8 bytes we store in two ways: it puts a space
after every ``:`` and ``,``, and it escapes every non-ASCII character (``é`` becomes six bytes,
an emoji twelve). :func:`wire_bytes` therefore bounds a message's size on the wire from above
without serialising it again: the stored length, plus one byte per ``:`` or ``,`` (those inside
strings are counted too, which only errs on the safe side), plus two bytes per non-ASCII byte
(a UTF-8 sequence of n bytes becomes at most 3n escaped bytes), plus five per DEL (``\x7f``,
which orjson writes as is and ``json`` as ``\u007f``), plus one per ``e-`` (``1.5e-7`` is
``1.5e-07`` to ``json``). The envelope (``sentAt``,
``writeKey``, brackets) is counted exactly by the sink (``Sink.envelope_bytes``). Segment allows
500 KB; ``batch.max_bytes`` defaults to 475,000 like the library's own consumer.

A message larger than :data:`bridge.messages.MAX_MESSAGE_BYTES` is never put in a batch: Segment
would reject the whole request. It is reported in ``Plan.oversized`` so the delivery buries it as
``message_too_large`` (the mapping should never produce one; this is the last defence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bridge.messages import MAX_MESSAGE_BYTES
from bridge.store import ClaimedMessage

_NON_ASCII = bytes(range(128, 256))
#: ``", "`` between two items of the batch array.
_SEPARATOR = 2


def wire_bytes(payload: bytes) -> int:
    """An upper bound of the bytes ``json.dumps`` gives for this message (see module doc)."""
    size = len(payload) + payload.count(b":") + payload.count(b",") + payload.count(b"e-")
    size += 5 * payload.count(b"\x7f")
    if not payload.isascii():
        size += 2 * (len(payload) - len(payload.translate(None, _NON_ASCII)))
    return size


@dataclass(frozen=True, slots=True)
class Batch:
    destination: str
    messages: tuple[ClaimedMessage, ...]
    body_bytes: int  # upper bound of the request body, envelope included

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
    body = envelope + sum(wire_bytes(m.payload) + _SEPARATOR for m in messages)
    return Batch(destination, tuple(messages), body)


def plan(
    messages: Iterable[ClaimedMessage],
    max_events: int,
    max_bytes: int,
    envelope: Callable[[str], int],
) -> Plan:
    """Group ``messages`` (in claim order) into batches per destination.

    ``envelope(destination)`` is the size of that destination's request body without messages.
    Batches come out ordered by their first message, so the oldest messages go first. A message
    too big to share a request is sent alone (Segment may still take it: the bound is loose for
    non-ASCII text); only one over the per-message limit is refused here.
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
        cost = wire_bytes(msg.payload) + _SEPARATOR
        current = filling.get(dest)
        if current is not None and (len(current[1]) >= max_events or current[2] + cost > max_bytes):
            close(dest)
            current = None
        if current is None:
            filling[dest] = (position, [msg], envelope(dest) + cost)
        else:
            current[1].append(msg)
            filling[dest] = (current[0], current[1], current[2] + cost)
    for dest in list(filling):
        close(dest)
    closed.sort(key=lambda item: item[0])
    result.batches.extend(batch for _, batch in closed)
    return result
