"""The intake and mapping ports: ``keep`` commits raw bytes, ``take`` / ``record`` / ``failed``
turn them into messages or dead letters exactly once, in arrival order, with poison isolation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from bridge.mapper import stage as stage_module
from bridge.mapper.stage import MappingStage, Report
from bridge.store import DeadLetterFilter, DeadReason, EventQuery, Judged, Store, Webhook
from tests.conftest import make_config
from tests.contract.records import NOW, hook, keep_attempts, msg


def judged(taken: object, *messages: object, dead: DeadReason | None = None) -> Judged:
    return Judged(taken, "portal-9", tuple(messages), dead, ("ref-1",))  # type: ignore[arg-type]


class TestKeep:
    async def test_any_bytes_are_kept_unmapped_in_order(self, store: Store) -> None:
        bodies = [b"not json", b'{"comment": "cut \\ud83d"}', b"\xff\xfe", b""]
        ids = await asyncio.gather(*(store.keep(hook(n, body)) for n, body in enumerate(bodies)))
        assert all(i.startswith("wh_") for i in ids)
        stats = await store.stats(0)
        assert (stats.unmapped, stats.oldest_unmapped_at) == (4, 1000.0)
        taken = await store.take(10, 30)
        assert [t.webhook.raw_body for t in taken] == bodies
        assert [t.tries for t in taken] == [1, 1, 1, 1]
        detail = await store.event(ids[0], NOW)
        assert detail is not None
        assert detail.raw_body == b"not json"
        assert detail.event.unmapped_tries == 1
        assert detail.event.messages == ()

    async def test_the_unmapped_are_found_by_state(self, store: Store) -> None:
        kept = await store.keep(hook(1))
        await store.enqueue(hook(2), [msg("a")])
        found = await store.find_events(EventQuery(state="unmapped"), NOW)
        assert [record.webhook_id for record in found] == [kept]
        assert found[0].unmapped_tries == 0


class TestRecord:
    async def test_messages_and_dead_letters_land_and_the_webhook_is_mapped(
        self, store: Store
    ) -> None:
        first = await store.keep(hook(1))
        second = await store.keep(hook(2, b"junk"))
        one, two = await store.take(10, 30)
        receipts = await store.record(
            [judged(one, msg("a"), msg("b")), judged(two, dead=DeadReason("invalid_json", "x"))]
        )
        assert [(r.webhook_id, r.stored) for r in receipts] == [(first, 2), (second, 0)]
        stats = await store.stats(0)
        assert (stats.unmapped, stats.pending) == (0, 2)
        assert await store.take(10, 30) == []
        [letter] = await store.dead_letters(DeadLetterFilter())
        assert (letter.webhook_id, letter.reason) == (second, "invalid_json")
        assert letter.portal_id == "portal-9"
        assert [r.webhook_id for r in await store.find_events(EventQuery(ref="ref-1"), NOW)] == [
            second,
            first,
        ]
        claimed = await store.claim(NOW, 10, 30)
        assert [orjson.loads(m.payload)["messageId"] for m in claimed] == ["a", "b"]

    async def test_recording_twice_stores_nothing_twice(self, store: Store) -> None:
        await store.keep(hook(1))
        [taken] = await store.take(10, 30)
        await store.record([judged(taken, msg("a"))])
        [again] = await store.record([judged(taken, msg("a"), msg("b"))])
        assert (again.stored, again.duplicates) == (0, 0)
        stats = await store.stats(0)
        assert (stats.pending, stats.unmapped) == (1, 0)
        assert await store.dead_letters(DeadLetterFilter()) == []

    async def test_mapping_again_after_a_crash_dedupes_by_message_id(self, store: Store) -> None:
        await store.keep(hook(1))
        await store.enqueue(hook(2), [msg("a")])  # the same message already stored otherwise
        [taken] = await store.take(10, 30)
        [receipt] = await store.record([judged(taken, msg("a"))])
        assert (receipt.stored, receipt.duplicates) == (0, 1)

    async def test_the_mapped_portal_is_shown_and_the_kept_hint_stays(self, store: Store) -> None:
        """The portal the mapping read replaces the kept ``?portal=`` hint in what operators
        see (events, one event, dead letters)."""
        hinted = await store.keep(Webhook("user.registered", "hint-1", 5.0, b"{}"))
        plain = await store.keep(Webhook("user.registered", None, 6.0, b"{}"))
        same = await store.keep(Webhook("user.registered", "portal-9", 7.0, b"junk"))
        taken = await store.take(10, 30)
        await store.record(
            [
                judged(taken[0], msg("a")),
                Judged(taken[1], None, (msg("b"),), None, ()),
                judged(taken[2], dead=DeadReason("invalid_json", "x")),
            ]
        )
        found = await store.find_events(EventQuery(), NOW)
        assert [(r.webhook_id, r.portal_id) for r in found] == [
            (same, "portal-9"),
            (plain, None),
            (hinted, "portal-9"),
        ]
        detail = await store.event(hinted, NOW)
        assert detail is not None
        assert detail.event.portal_id == "portal-9"
        [letter] = await store.dead_letters(DeadLetterFilter())
        assert letter.portal_id == "portal-9"


class TestPoison:
    async def test_a_webhook_tried_before_comes_alone(self, store: Store) -> None:
        for n in range(5):
            await store.keep(hook(n))
        batch = await store.take(10, 0)  # a crash: nothing recorded, lease gone at once
        assert len(batch) == 5
        alone = await store.take(10, 0)
        assert [t.tries for t in alone] == [2]
        await store.failed(alone[0], "ValueError: boom")
        again = await store.take(10, 30)
        assert len(again) == 1
        assert (again[0].tries, again[0].last_error) == (3, "ValueError: boom")
        await store.record([judged(again[0], msg("x"))])
        rest = await store.take(10, 30)
        assert [t.tries for t in rest] == [2]  # the others, one at a time, never lost


class TestTakeWhileMapping:
    async def test_a_take_skips_what_another_holds_until_it_is_recorded_or_failed(
        self, store: Store
    ) -> None:
        """Catching up, the mapping stage takes the next webhooks while it maps the last ones:
        the second take must not hand out the first's again (SQLite: a lease in the process's
        memory; PostgreSQL: in the row)."""
        for n in range(6):
            await store.keep(hook(n))
        first = await store.take(3, 30)
        second = await store.take(10, 30)
        assert [t.row_id for t in first] + [t.row_id for t in second] == sorted(
            t.row_id for t in first + second
        )
        assert len(second) == 3
        assert await store.take(10, 30) == []
        await store.record([judged(first[0], msg("a")), judged(first[1], msg("b"))])
        await store.failed(first[2], "ValueError: boom")
        again = await store.take(10, 30)
        assert [(t.row_id, t.tries) for t in again] == [(first[2].row_id, 2)]
        await store.record([judged(t, msg(f"m{t.row_id}")) for t in second + again])
        assert (await store.stats(0)).unmapped == 0


class TestMigration:
    async def test_keep_record_webhook_ids_are_the_answered_ones(self, store: Store) -> None:
        kept = await store.keep(Webhook("user.registered", None, 5.0, b"{}"))
        [taken] = await store.take(1, 30)
        [receipt] = await store.record([judged(taken, msg("m"))])
        assert receipt.webhook_id == kept


class TestRecordSizes:
    async def test_every_part_of_a_catch_up_is_recorded_once_whatever_its_size(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The port's sizes: ``record_batch`` at the burst pace, the catch-up's parts for a full
        take, ``steady_record`` (or, None, the catch-up's parts) for the take that ends the
        backlog. On every backend each webhook is recorded once, in arrival order."""
        assert store.record_batch >= 1
        assert store.steady_record is None or store.steady_record >= 1
        monkeypatch.setattr(stage_module, "CATCH_UP_BATCH", 8)
        monkeypatch.setattr(stage_module, "CATCH_UP_RECORD", 4)
        config = make_config(tmp_path, "http://127.0.0.1:9")
        await keep_attempts(store, list(range(4 + 8 + 3)), tag=config.mapping_tag)
        reports: list[Report] = []
        stage = MappingStage(
            store,
            lambda: config,
            batch=4,
            clock=lambda: NOW + 20,
            catch_up_after_secs=10,
            on_report=reports.append,
        )
        while await stage.round():
            assert stage.catching_up
        assert [report.mapped for report in reports] == [4, 8, 3, 0]  # then: caught up
        assert sum(report.messages for report in reports) == 15
        stats = await store.stats(0)
        assert (stats.unmapped, stats.pending) == (0, 15)
