"""``synap-bridge events`` and ``synap-bridge try``: the real CLI on a real database.

The database is filled through the real intake path and store with the shipped samples (the
tests' fixtures) at known times; ``try`` posts to a real ``synap-bridge serve`` subprocess that
delivers to the strict fake Segment.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.config import Config
from bridge.mapping import intake
from bridge.store import DeadReason
from bridge.store.sqlite.store import SQLiteStore
from bridge.synap import samples
from tests.fakes import FakeSegment
from tests.process import BridgeProcess, write_config
from tests.test_cli_ops import config_data, load, run_cli

USER = "usr_7f3a9c21"  # the user of the samples
ATTEMPT = "att_51c0e8"  # the attempt of the attempt.* / exam.* samples


@dataclass
class Stored:
    config: Path
    ids: dict[str, str]  # label -> webhook id


async def _put(
    store: SQLiteStore, config: Config, code: str, at: float, raw: bytes | None = None
) -> str:
    result = intake.process(code, samples.raw(code) if raw is None else raw, at, config)
    receipt = await store.enqueue(result.webhook, result.messages, result.dead)
    return receipt.webhook_id


@pytest.fixture
async def stored(tmp_path: Path) -> Stored:
    """Five webhooks of the samples' user at known ages: a day-old attempt.completed (delivered),
    the exam.completed of the same attempt (its messageId already stored: no message), an
    attempt.started rejected by Segment (dead), a user.registered (2 messages pending) and an
    attempt.started without a user (not mapped)."""
    db = tmp_path / "bridge.db"
    path = write_config(tmp_path / "config.yaml", config_data(db, fixed=True))
    config = load(path)
    now = time.time()
    store = SQLiteStore(db)
    await store.open()
    try:
        ids = {"completed": await _put(store, config, "attempt.completed", now - 86400)}
        (done,) = await store.claim(now - 86400, 10, 60)
        await store.ack([done.id], now - 86000)
        ids["exam"] = await _put(store, config, "exam.completed", now - 600)
        ids["started"] = await _put(store, config, "attempt.started", now - 300)
        (rejected,) = await store.claim(now - 300, 10, 60)
        why = DeadReason("rejected_by_segment", "HTTP 400 invalid_request: bad message")
        await store.bury([rejected.id], why, "HTTP 400 invalid_request: bad message", now - 290)
        ids["registered"] = await _put(store, config, "user.registered", now - 60)
        no_user = orjson.loads(samples.raw("attempt.started"))
        del no_user["user"]
        no_user["id"] = no_user["attempt"]["id"] = "att-nouser"
        ids["unmapped"] = await _put(
            store, config, "attempt.started", now - 30, orjson.dumps(no_user)
        )
    finally:
        await store.close()
    return Stored(path, ids)


def webhooks(listing: list[dict[str, Any]]) -> list[str]:
    return [row["webhook_id"] for row in listing]


class TestEvents:
    async def test_by_user_newest_first_with_every_state(self, stored: Stored) -> None:
        ran = await run_cli(stored.config, "events", "--user", USER, "--json")
        assert ran.code == 0
        rows = ran.json()
        ids = stored.ids
        # The unmapped webhook has no user; the others, newest first, the exam.completed whose
        # messageId the attempt.completed holds included (issue 23: it was missing).
        assert webhooks(rows) == [ids["registered"], ids["started"], ids["exam"], ids["completed"]]
        registered, started, exam, completed = rows
        assert exam["messages"] == []
        assert [(m["call"], m["state"], m["attempts"]) for m in registered["messages"]] == [
            ("identify", "pending", 0),
            ("track User Registered", "pending", 0),
        ]
        (dead,) = started["messages"]
        assert (dead["state"], dead["attempts"], dead["dead_reason"]) == (
            "dead",
            1,
            "rejected_by_segment",
        )
        assert dead["last_error"] == "HTTP 400 invalid_request: bad message"
        (delivered,) = completed["messages"]
        assert delivered["state"] == "delivered"
        assert delivered["delivered_at"]
        assert delivered["sent"]["properties"]["attemptId"] == ATTEMPT

    async def test_by_attempt_code_state_and_time(self, stored: Stored) -> None:
        ids = stored.ids

        async def found(*args: str) -> list[str]:
            ran = await run_cli(stored.config, "events", *args, "--json")
            assert ran.code == 0, ran.out
            return webhooks(ran.json())

        # The attempt's three webhooks, the duplicate exam.completed included.
        assert await found("--attempt", ATTEMPT) == [ids["started"], ids["exam"], ids["completed"]]
        assert await found("--exam", "att-nouser") == [ids["unmapped"]]
        assert await found("--code", "exam.completed") == [ids["exam"]]
        assert await found("--state", "dead") == [ids["unmapped"], ids["started"]]
        assert await found("--state", "delivered") == [ids["completed"]]
        assert await found("--outcome", "pending") == [ids["registered"]]
        assert await found("--since", "1h", "--code", "attempt.completed") == []
        assert await found("--until", "1h") == [ids["completed"]]
        assert await found("--since", "2h", "--limit", "2") == [ids["unmapped"], ids["registered"]]

    async def test_human_listing_says_why(self, stored: Stored) -> None:
        ran = await run_cli(stored.config, "events", "--attempt", ATTEMPT)
        assert ran.code == 0
        assert "track Began Test  user usr_7f3a9c21  dead  reason rejected_by_segment" in ran.out
        assert "last error: HTTP 400 invalid_request: bad message" in ran.out
        assert "no message of its own: each messageId it maps to is held by another" in ran.out
        assert "track Completed Test  user usr_7f3a9c21  delivered  at " in ran.out
        assert ran.out.endswith("3 webhook(s)\n")
        # Every time says its zone (issue 23): "2026-12-05 10:00:00Z".
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  exam\.completed", ran.out)
        unmapped = await run_cli(stored.config, "events", "--state", "dead", "--limit", "1")
        assert "not mapped: missing_user_id" in unmapped.out
        assert "(the newest; raise --limit for more)" in unmapped.out

    async def test_show_prints_the_exact_bytes(self, stored: Stored) -> None:
        ran = await run_cli(stored.config, "events", "show", stored.ids["registered"])
        assert ran.code == 0
        assert samples.raw("user.registered").decode().strip() in ran.out
        config = load(stored.config)
        result = intake.process("user.registered", samples.raw("user.registered"), 0.0, config)
        sent = await run_cli(stored.config, "events", "show", stored.ids["registered"], "--json")
        messages = sent.json()["messages"]
        for mapped, shown in zip(result.messages, messages, strict=True):
            # identical apart from the time-free parts: the stored payload is the exact JSON
            assert shown["message_id"] == mapped.message_id
            assert orjson.dumps(shown["sent"]) in ran.out.encode()
        assert sent.json()["raw_body"] == orjson.loads(samples.raw("user.registered"))

    async def test_show_unknown(self, stored: Stored) -> None:
        for unknown in ("wh_999999", "nonsense"):
            ran = await run_cli(stored.config, "events", "show", unknown)
            assert (ran.code, ran.out) == (1, f"no stored webhook with id {unknown}\n")

    async def test_bad_time_is_a_usage_error(self, stored: Stored) -> None:
        with pytest.raises(SystemExit) as exited:
            await run_cli(stored.config, "events", "--since", "yesterday-ish")
        assert exited.value.code == 2


class TestTry:
    async def test_offline_maps_the_shipped_sample(self, tmp_path: Path) -> None:
        db = tmp_path / "bridge.db"
        path = write_config(tmp_path / "config.yaml", config_data(db, fixed=True))
        ran = await run_cli(path, "try", "user.registered", "--offline", "--json")
        assert ran.code == 0
        report = ran.json()
        mapped = intake.process(
            "user.registered", samples.raw("user.registered"), time.time(), load(path)
        )
        assert [m["sent"]["messageId"] for m in report["messages"]] == [
            m.message_id for m in mapped.messages
        ]
        assert [m["sent"]["type"] for m in report["messages"]] == ["identify", "track"]
        assert not db.exists()  # offline: nothing stored, nothing opened
        human = await run_cli(path, "try", "exam.completed", "--offline")
        assert '"event": "Completed Test"' in human.out
        assert "nothing posted or stored" in human.out

    async def test_every_code_has_a_sample(self) -> None:
        from bridge.synap.codes import STATIC_CODES

        assert set(samples.codes()) == {*STATIC_CODES, "exam.resultsReleased"}

    async def test_posts_to_a_running_bridge_and_shows_what_segment_got(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        db = tmp_path / "bridge.db"
        data = config_data(db, fake_segment.url, fixed=True)
        path = write_config(tmp_path / "config.yaml", data)
        bridge = BridgeProcess(path)
        try:
            url = f"http://127.0.0.1:{await bridge.start()}"
            refused = await run_cli(path, "try", "user.registered", "--url", url)
            assert refused.code == 2
            assert "Add --yes" in refused.out
            assert fake_segment.requests == 0
            ran = await run_cli(path, "try", "user.registered", "--url", url, "--yes", "--json")
            assert ran.code == 0, ran.out
            report = ran.json()
            assert report["answer"]["status"] == 200
            shown = report["messages"]
            assert [m["state"] for m in shown] == ["delivered", "delivered"]
            # What try prints is what the strict fake Segment received, messageIds and all.
            assert [m["sent"]["messageId"] for m in shown] == [
                m["messageId"] for m in fake_segment.messages
            ]
            assert [m["sent"] for m in shown] == [
                {k: v for k, v in m.items() if k != "sentAt"} for m in fake_segment.messages
            ]
            # Posted again: the bridge stores no new message (same messageIds); try says so and
            # shows the earlier, delivered ones.
            again = await run_cli(path, "try", "user.registered", "--url", url, "--yes")
            assert again.code == 0, again.out
            assert "already stored by an earlier webhook" in again.out
            assert again.out.count("delivered  at ") == 2
            assert fake_segment.unique == 2
        finally:
            await bridge.close()

    async def test_a_routed_key_needs_yes_even_when_the_default_has_none(
        self, tmp_path: Path, fake_segment: FakeSegment
    ) -> None:
        """The shipped two-schools shape: no key for "default", one for a routed school. Before,
        ``try`` posted without ``--yes`` and the sample could reach that school's source."""
        data = config_data(tmp_path / "bridge.db", fake_segment.url, fixed=True)
        data["segment"]["write_key"] = None
        path = write_config(tmp_path / "config.yaml", data)
        bridge = BridgeProcess(path)
        try:
            url = f"http://127.0.0.1:{await bridge.start()}"
            refused = await run_cli(path, "try", "user.registered", "--url", url)
            assert refused.code == 2
            assert "destinations: school_b" in refused.out
            assert "Add --yes" in refused.out
            assert bridge.events("webhook") == []  # nothing was posted
        finally:
            await bridge.close()
        assert fake_segment.requests == 0

    async def test_a_bridge_that_is_not_there(self, tmp_path: Path) -> None:
        db = tmp_path / "bridge.db"
        data = config_data(db, fixed=True)
        path = write_config(tmp_path / "config.yaml", data)
        created = SQLiteStore(db)  # a database, as a bridge that ran here would have left
        await created.open()
        await created.close()
        ran = await run_cli(path, "try", "user.registered", "--url", "http://127.0.0.1:9", "--yes")
        assert ran.code == 1
        assert ran.out.startswith("could not post to the bridge at http://127.0.0.1:9")
