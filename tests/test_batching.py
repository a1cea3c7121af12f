"""Batching: limits on count and bytes, per destination, order kept, oversized refused."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.delivery import wire
from bridge.delivery.batching import Batch, make_batch, plan
from bridge.messages import MAX_MESSAGE_BYTES
from bridge.store import ClaimedMessage

WRITE_KEY = "wk_0123456789abcdef0123456789abcdef"
SENT_AT = "2024-05-01T10:00:00.123456+00:00"


def message(
    n: int, destination: str = "default", *, pad: int = 0, text: str = ""
) -> ClaimedMessage:
    body = {
        "type": "track",
        "event": "Exam Completed",
        "userId": f"u{n}",
        "messageId": f"m{n}",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "properties": {"n": n, "pad": "x" * pad, "text": text, "list": [1, 2, {"a": "b:c,d"}]},
    }
    return ClaimedMessage(n, f"m{n}", destination, f"u{n}", orjson.dumps(body), 0, 1000.0 + n)


def envelope(destination: str) -> int:  # noqa: ARG001 - plan()'s envelope callback signature
    return wire.envelope_bytes(WRITE_KEY)


def request_body(batch: Batch) -> bytes:
    """The body the sink sends for this batch."""
    return wire.body(batch.payloads, SENT_AT, WRITE_KEY)


def ids(batches: Sequence[Batch]) -> list[list[int]]:
    return [[m.id for m in b.messages] for b in batches]


class TestPlan:
    def test_count_limit(self) -> None:
        result = plan([message(i) for i in range(1, 11)], 4, 475_000, envelope)
        assert ids(result.batches) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
        assert result.oversized == []

    def test_byte_limit_counts_the_real_request_body_exactly(self) -> None:
        messages = [message(i, pad=20_000, text="élève 🎓") for i in range(1, 61)]
        result = plan(messages, 2500, 100_000, envelope)
        assert len(result.batches) > 1
        for batch in result.batches:
            assert len(request_body(batch)) == batch.body_bytes <= 100_000
        assert [m for b in result.batches for m in b.messages] == messages

    def test_batches_are_full_to_the_byte(self) -> None:
        messages = [message(i, pad=9_000) for i in range(1, 101)]
        result = plan(messages, 2500, 475_000, envelope)
        # Every batch but the last is closed only because the next message would not fit.
        for batch, after in zip(result.batches, result.batches[1:], strict=False):
            following = len(after.messages[0].payload)
            assert batch.body_bytes + wire.SEPARATOR_BYTES + following > 475_000

    @settings(max_examples=100, deadline=None)
    @given(
        sizes=st.lists(st.integers(0, 31_000), min_size=1, max_size=60),
        max_bytes=st.integers(40_000, 500_000),
        max_events=st.integers(1, 30),
    )
    def test_every_body_is_exact_and_within_the_limits(
        self, sizes: list[int], max_bytes: int, max_events: int
    ) -> None:
        messages = [message(i, pad=size) for i, size in enumerate(sizes)]
        result = plan(messages, max_events, max_bytes, envelope)
        assert [m for b in result.batches for m in b.messages] == messages
        for batch in result.batches:
            assert len(request_body(batch)) == batch.body_bytes <= max_bytes
            assert 1 <= len(batch.messages) <= max_events

    def test_per_destination_and_ordered_by_first_message(self) -> None:
        messages = [
            message(1, "a"),
            message(2, "b"),
            message(3, "a"),
            message(4, "a"),
            message(5, "b"),
            message(6, "a"),
        ]
        result = plan(messages, 2, 475_000, envelope)
        assert [(b.destination, [m.id for m in b.messages]) for b in result.batches] == [
            ("a", [1, 3]),
            ("b", [2, 5]),
            ("a", [4, 6]),
        ]

    def test_oversized_single_is_reported_not_batched(self) -> None:
        big = message(2, pad=MAX_MESSAGE_BYTES)
        assert len(big.payload) > MAX_MESSAGE_BYTES
        result = plan([message(1), big, message(3)], 500, 475_000, envelope)
        assert result.oversized == [big]
        assert ids(result.batches) == [[1, 3]]

    def test_empty(self) -> None:
        result = plan([], 500, 475_000, envelope)
        assert result.batches == []
        assert result.oversized == []

    def test_halves_keep_order_and_sizes(self) -> None:
        batch = make_batch("default", [message(i) for i in range(1, 6)], envelope("default"))
        left, right = batch.halves(envelope("default"))
        assert [m.id for m in left.messages] == [1, 2]
        assert [m.id for m in right.messages] == [3, 4, 5]
        assert left.body_bytes + right.body_bytes > batch.body_bytes  # two envelopes now
