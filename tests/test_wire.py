"""The request body spliced from stored bytes: valid JSON, the library's keys, sizes exact."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.delivery import wire

KEY = "wk_0123456789abcdef"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    # orjson refuses lone surrogates: the mapping never stores one.
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


class TestBody:
    def test_is_the_request_the_library_sends(self) -> None:
        """Same keys as ``request.post``'s body: ``batch``, ``sentAt``, ``writeKey``."""
        payloads = [orjson.dumps({"messageId": f"m{i}", "name": "Zoë 🎓"}) for i in range(3)]
        sent = wire.sent_at()
        doc = json.loads(wire.body(payloads, sent, KEY))
        assert doc == {
            "batch": [orjson.loads(p) for p in payloads],
            "sentAt": sent,
            "writeKey": KEY,
        }

    def test_stored_bytes_travel_untouched(self) -> None:
        payload = orjson.dumps({"text": "élève 日本語", "n": 1.5e-7})
        assert payload in wire.body([payload], wire.SENT_AT_SAMPLE, KEY)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(json_values, max_size=8), st.text(min_size=1, max_size=40))
    def test_any_messages_and_key_give_valid_json_of_the_exact_size(
        self, values: list[object], key: str
    ) -> None:
        payloads = [orjson.dumps({"v": v}) for v in values]
        data = wire.body(payloads, wire.SENT_AT_SAMPLE, key)
        doc = orjson.loads(data)
        assert doc["batch"] == [orjson.loads(p) for p in payloads]
        assert doc["writeKey"] == key
        envelope = wire.envelope_bytes(key)
        assert len(data) == wire.body_bytes(envelope, [len(p) for p in payloads])

    def test_empty_batch_is_the_envelope(self) -> None:
        key = 'a "quoted" key\\'
        assert len(wire.body([], wire.SENT_AT_SAMPLE, key)) == wire.envelope_bytes(key)


class TestSentAt:
    def test_fixed_length_utc_even_on_a_whole_second(self) -> None:
        whole = datetime(2024, 5, 1, 10, 0, 0, tzinfo=timezone(timedelta(hours=2)))
        assert wire.sent_at(whole) == "2024-05-01T08:00:00.000000+00:00"
        assert len(wire.sent_at()) == len(wire.SENT_AT_SAMPLE)

    def test_is_now(self) -> None:
        before = datetime.now(UTC)
        parsed = datetime.fromisoformat(wire.sent_at())
        assert before <= parsed <= datetime.now(UTC)


class TestHeaders:
    def test_basic_auth_with_the_key_as_user(self) -> None:
        headers = wire.headers(KEY, gzipped=True)
        assert headers["Authorization"] == "Basic d2tfMDEyMzQ1Njc4OWFiY2RlZjo="  # "wk_…:"
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Content-Type"] == "application/json"
        assert "Content-Encoding" not in wire.headers(KEY, gzipped=False)


class TestCompress:
    def test_round_trip_at_a_middle_level(self) -> None:
        data = wire.body([b'{"a":1}'] * 100, wire.SENT_AT_SAMPLE, KEY)
        packed = wire.compress(data)
        assert gzip.decompress(packed) == data
        # Byte 8 of a gzip header (XFL) is 2 at level 9, 4 at level 1, 0 in between.
        assert packed[8] == 0

    def test_the_streamed_body_is_the_compressed_body(self) -> None:
        """``compressed_body`` never builds the JSON body, yet gunzips to exactly it."""
        payloads = [b'{"a":%d,"t":"\xc3\xa9l\xc3\xa8ve"}' % n for n in range(300)]
        data = wire.body(payloads, wire.SENT_AT_SAMPLE, KEY)
        packed = wire.compressed_body(payloads, wire.SENT_AT_SAMPLE, KEY)
        assert gzip.decompress(packed) == data
        assert gzip.decompress(wire.compressed_body([], wire.SENT_AT_SAMPLE, KEY)) == wire.body(
            [], wire.SENT_AT_SAMPLE, KEY
        )
