"""The SQLite store's group insert (bridge/store/sqlite/enqueue.py) against real SQLite files: a
group of concurrent ``enqueue`` calls leaves exactly the rows, ids and receipts that the same
calls leave one after another, whatever the group holds (the same messageId twice, in one webhook
or in two; supersedes; dead letters beside messages; more rows than one statement takes).

A group is made the way production makes one: the writer is held on another connection's write
lock while the calls queue up behind it, then takes them all in one round.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.errors import StorageUnavailableError
from bridge.messages import OutgoingMessage
from bridge.store import DeadReason, EnqueueReceipt, Webhook
from bridge.store.sqlite.enqueue import MAX_ROWS
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import eventually
from tests.contract.records import NOW, hook
from tests.test_sqlite_store import commits, query, write_lock

Call = tuple[Webhook, list[OutgoingMessage], DeadReason | None]
TABLES = (
    "SELECT * FROM webhooks ORDER BY id",
    "SELECT * FROM messages ORDER BY id",
    "SELECT * FROM message_payloads ORDER BY id",
    "SELECT * FROM dead_letters ORDER BY id",
    "SELECT * FROM webhook_refs ORDER BY ref, webhook_id",
    "SELECT * FROM counters ORDER BY name",
    "SELECT * FROM sqlite_sequence ORDER BY name",
)


def message(
    message_id: str, version: str, *, rank: int = 0, hold: float = 0.0, user: str = "u1"
) -> OutgoingMessage:
    body = {"messageId": message_id, "userId": user, "type": "track", "v": version}
    built = OutgoingMessage.build("default", body)
    return OutgoingMessage(built.message_id, built.destination, user, built.payload, hold, rank)


async def one_by_one(store: SQLiteStore, calls: Sequence[Call]) -> list[EnqueueReceipt]:
    return [await store.enqueue(*call) for call in calls]


async def as_a_group(store: SQLiteStore, db: Path, calls: Sequence[Call]) -> list[EnqueueReceipt]:
    """All calls in one transaction: the writer took the first before the lock, and the others,
    queued while it waited, join it (``Writer._grow``)."""
    before = commits(store)
    with write_lock(db):
        tasks = await queued(store, calls)
    receipts = list(await asyncio.gather(*tasks))
    assert commits(store) - before == 1
    return receipts


async def queued(store: SQLiteStore, calls: Sequence[Call]) -> list[asyncio.Task[EnqueueReceipt]]:
    """The first call taken by the writer (waiting for the lock), the others queued behind."""
    tasks = [asyncio.create_task(store.enqueue(*calls[0]))]
    await asyncio.sleep(0)  # let it submit its write
    await eventually(lambda: store.backlog == 0, within=5.0)
    tasks += [asyncio.create_task(store.enqueue(*call)) for call in calls[1:]]
    await eventually(lambda: store.backlog == len(calls) - 1, within=5.0)
    return tasks


def dump(db: Path) -> list[list[tuple[Any, ...]]]:
    return [query(db, sql) for sql in TABLES]


async def both_ways(
    tmp_path: Path, calls: Sequence[Call], before: Sequence[Call] = ()
) -> tuple[list[EnqueueReceipt], Path]:
    """Store ``before`` one by one, then ``calls`` one by one in one file and as a group in
    another; both files and both receipt lists must agree. The group's receipts and file."""
    results = []
    for name in ("one-by-one", "group"):
        db = tmp_path / f"{name}.db"
        store = SQLiteStore(db)
        await store.open()
        try:
            await one_by_one(store, before)
            if before:  # some of them claimed: no longer pending, so never superseded
                claimed = await store.claim(NOW, 2, 30)
                assert claimed
            if name == "group":
                receipts = await as_a_group(store, db, calls)
            else:
                receipts = await one_by_one(store, calls)
        finally:
            await store.close()
        results.append((receipts, db))
    (expected, plain), (receipts, grouped) = results
    assert receipts == expected
    assert dump(grouped) == dump(plain)
    assert query(grouped, "PRAGMA integrity_check") == [("ok",)]
    return receipts, grouped


def body(n: int) -> bytes:
    return b'{"id": "w%d", "attempt": {"id": "a%d"}, "exam": {"objectId": %d}}' % (n, n % 7, n)


def mixed_calls(seed: int, count: int, start: int = 0) -> list[Call]:
    """Webhooks with 0-3 messages over a small set of messageIds (so duplicates and supersedes
    happen inside the group and against stored rows), ranks, holds, and some dead letters."""
    rng = random.Random(seed)
    calls: list[Call] = []
    for n in range(start, start + count):
        webhook = Webhook("exam.finished", rng.choice(["p1", None]), 1000.0 + n, body(n))
        if rng.random() < 0.15:
            calls.append((webhook, [], DeadReason("unmapped", f"detail {n}")))
            continue
        messages = [
            message(
                f"m{rng.randrange(12)}",
                f"{n}.{k}",
                rank=rng.randrange(3),
                hold=rng.choice([0.0, 5.0]),
                user=f"u{n}",
            )
            for k in range(rng.randrange(4))
        ]
        calls.append((webhook, messages, None))
    return calls


class TestTheGroupIsTheSequence:
    async def test_mixed_groups(self, tmp_path: Path) -> None:
        for seed in range(3):
            where = tmp_path / str(seed)
            where.mkdir()
            receipts, _ = await both_ways(
                where, mixed_calls(seed, 60, start=100), before=mixed_calls(seed + 10, 20)
            )
            assert sum(r.duplicates for r in receipts) > 0
            assert sum(r.superseded for r in receipts) > 0

    async def test_more_rows_than_one_statement_takes(self, tmp_path: Path) -> None:
        calls: list[Call] = [
            (hook(n), [message(f"m{n}-{k}", "1") for k in range(2)], None)
            for n in range(MAX_ROWS + 40)
        ]
        calls[MAX_ROWS + 3] = (hook(MAX_ROWS + 3), [message("m5-1", "again")], None)
        receipts, db = await both_ways(tmp_path, calls)
        assert receipts[MAX_ROWS + 3].duplicates == 1
        assert query(db, "SELECT count(*) FROM messages") == [(2 * (MAX_ROWS + 40) - 2,)]


class TestEdgeCases:
    async def test_the_same_message_id_twice_in_one_webhook(self, tmp_path: Path) -> None:
        calls: list[Call] = [
            (hook(1), [message("a", "1")], None),
            (hook(2), [message("b", "1"), message("b", "2")], None),
        ]
        receipts, db = await both_ways(tmp_path, calls)
        assert [(r.stored, r.duplicates) for r in receipts] == [(1, 0), (1, 1)]
        assert query(db, "SELECT message_id FROM messages ORDER BY id") == [("a",), ("b",)]

    async def test_an_exam_supersedes_its_attempt_in_the_same_group(self, tmp_path: Path) -> None:
        calls: list[Call] = [
            (hook(1), [message("x", "attempt", hold=10.0)], None),
            (hook(2), [message("x", "exam", rank=1, user="u2")], None),
            (hook(3), [message("x", "late attempt", hold=10.0)], None),
        ]
        receipts, db = await both_ways(tmp_path, calls)
        assert [(r.stored, r.superseded, r.duplicates) for r in receipts] == [
            (1, 0, 0),
            (0, 1, 0),
            (0, 0, 1),
        ]
        ((webhook, user, due),) = query(db, "SELECT webhook_id, user_id, due_at FROM messages")
        assert (webhook, user, due) == (2, "u2", 1002.0)  # the earlier due time wins
        ((payload,),) = query(db, "SELECT payload FROM message_payloads")
        assert b'"exam"' in payload

    async def test_a_dead_letter_beside_messages(self, tmp_path: Path) -> None:
        calls: list[Call] = [
            (hook(1), [message("a", "1")], None),
            (hook(2), [], DeadReason("unmapped", "no user")),
            (hook(3), [], None),
            (hook(4), [message("b", "1")], None),
        ]
        receipts, db = await both_ways(tmp_path, calls)
        assert [r.webhook_id for r in receipts] == ["wh_1", "wh_2", "wh_3", "wh_4"]
        assert query(db, "SELECT webhook_id, message_row, reason FROM dead_letters") == [
            (2, None, "unmapped")
        ]
        assert query(db, "SELECT webhook_id FROM messages ORDER BY id") == [(1,), (4,)]

    async def test_webhook_ids_are_never_reused(self, tmp_path: Path) -> None:
        """The group assigns webhook ids itself, from AUTOINCREMENT's high-water mark: the
        newest webhook purged, the next one still gets a new id."""
        db = tmp_path / "bridge.db"
        store = SQLiteStore(db)
        await store.open()
        try:
            await store.enqueue(hook(1), [message("a", "1")])
            dead = await store.enqueue(hook(2), [], DeadReason("unmapped", "d"))
            assert await store.purge_dead(NOW) == 1
            assert query(db, "SELECT max(id) FROM webhooks") == [(1,)]
            again = await as_a_group(
                store, db, [(hook(3), [message("b", "1")], None), (hook(4), [], None)]
            )
        finally:
            await store.close()
        assert dead.webhook_id == "wh_2"
        assert [r.webhook_id for r in again] == ["wh_3", "wh_4"]

    async def test_a_failing_item_fails_alone(self, tmp_path: Path) -> None:
        """A group whose shared transaction fails is tried again item by item: the webhook
        that cannot be stored fails (and only it), the others are stored with the ids and
        receipts they would have had without it."""
        db = tmp_path / "bridge.db"
        store = SQLiteStore(db, max_page_count=200)  # 800 KB
        await store.open()
        try:
            calls: list[Call] = [
                (hook(1), [message("a", "1")], None),
                (hook(2), [message("b", "1")], None),
                (hook(3, b"x" * 2_000_000), [message("c", "1")], None),
                (hook(4), [message("b", "2")], None),
            ]
            before = commits(store)
            with write_lock(db):
                tasks = await queued(store, calls)
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert commits(store) - before == 3  # the four failed together; 3 of 4 one by one
        finally:
            await store.close()
        assert isinstance(done[2], StorageUnavailableError)
        assert "disk full" in str(done[2])
        ok = [r for r in done if isinstance(r, EnqueueReceipt)]
        assert [(r.webhook_id, r.stored, r.duplicates) for r in ok] == [
            ("wh_1", 1, 0),
            ("wh_2", 1, 0),
            ("wh_3", 0, 1),
        ]
        assert query(db, "SELECT message_id, webhook_id FROM messages ORDER BY id") == [
            ("a", 1),
            ("b", 2),
        ]
