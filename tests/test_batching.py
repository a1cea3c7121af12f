"""Batching: limits on count and bytes, per destination, order kept, oversized refused."""

from __future__ import annotations

import json
from collections.abc import Sequence

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.batching import Batch, make_batch, plan, wire_bytes
from bridge.messages import MAX_MESSAGE_BYTES
from bridge.segment import envelope_bytes
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


def envelope(destination: str) -> int:
    return envelope_bytes(WRITE_KEY)


def library_body(batch: Batch) -> bytes:
    """The body segment.analytics.request.post would send for this batch (its json.dumps)."""
    doc = {
        "batch": [orjson.loads(m.payload) for m in batch.messages],
        "sentAt": SENT_AT,
        "writeKey": WRITE_KEY,
    }
    return json.dumps(doc).encode("utf-8")


def ids(batches: Sequence[Batch]) -> list[list[int]]:
    return [[m.id for m in b.messages] for b in batches]


class TestWireBytes:
    def test_ascii_bound_covers_json_dumps_spacing(self) -> None:
        msg = message(1)
        exact = len(json.dumps(orjson.loads(msg.payload)).encode())
        assert exact <= wire_bytes(msg.payload)

    def test_non_ascii_is_counted_as_escaped(self) -> None:
        msg = message(2, text="élève 日本語 🎓" * 50)
        exact = len(json.dumps(orjson.loads(msg.payload)).encode())
        assert len(msg.payload) < exact <= wire_bytes(msg.payload)

    def test_floats_and_delete_characters(self) -> None:
        payload = orjson.dumps({"tiny": [1.5e-7, 2e-9, 1e16], "del": "a\x7fb"})
        assert len(json.dumps(orjson.loads(payload)).encode()) <= wire_bytes(payload)

    @settings(max_examples=200, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_bound_holds_for_any_json(self, value: object) -> None:
        payload = orjson.dumps({"v": value})
        assert len(json.dumps(orjson.loads(payload)).encode()) <= wire_bytes(payload)

    def test_envelope_is_exact(self) -> None:
        empty = {"batch": [], "sentAt": SENT_AT, "writeKey": WRITE_KEY}
        assert envelope_bytes(WRITE_KEY) == len(json.dumps(empty))


class TestPlan:
    def test_count_limit(self) -> None:
        result = plan([message(i) for i in range(1, 11)], 4, 475_000, envelope)
        assert ids(result.batches) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
        assert result.oversized == []

    def test_byte_limit_counts_the_real_request_body(self) -> None:
        messages = [message(i, pad=20_000) for i in range(1, 61)]
        result = plan(messages, 2500, 100_000, envelope)
        assert len(result.batches) > 1
        for batch in result.batches:
            body = library_body(batch)
            assert len(body) <= batch.body_bytes <= 100_000
        assert [m for b in result.batches for m in b.messages] == messages

    def test_batches_are_nearly_full(self) -> None:
        messages = [message(i, pad=9_000) for i in range(1, 101)]
        result = plan(messages, 2500, 475_000, envelope)
        # Every batch but the last is closed only because the next message would not fit.
        for batch in result.batches[:-1]:
            assert batch.body_bytes + wire_bytes(messages[0].payload) + 2 > 475_000

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
        assert result.batches == [] and result.oversized == []

    def test_halves_keep_order_and_sizes(self) -> None:
        batch = make_batch("default", [message(i) for i in range(1, 6)], envelope("default"))
        left, right = batch.halves(envelope("default"))
        assert [m.id for m in left.messages] == [1, 2]
        assert [m.id for m in right.messages] == [3, 4, 5]
        assert left.body_bytes + right.body_bytes > batch.body_bytes  # two envelopes now
