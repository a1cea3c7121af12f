"""SQLiteStore against real SQLite files in tmp_path: what only SQLite has (the file on disk, group
commit, recovery at start, migrations, WAL checkpoints, file faults). The behaviour every Store
has is the contract suite's (tests/contract), which runs against SQLite too.

A second raw sqlite3 connection plays "another process": it checks what is really on disk and
holds the write lock to make the store wait (or fail past its busy_timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from bridge.config import Config, StorageConfig
from bridge.errors import StorageUnavailableError
from bridge.mapper import stage as stage_module
from bridge.mapper.stage import MappingStage, Report, catching_up
from bridge.store import DeadLetterFilter, DeadReason, EnqueueReceipt, Judged, Store, Webhook
from bridge.store.sqlite.checkpoint import Checkpointer
from bridge.store.sqlite.identity import DatabaseFileLostError
from bridge.store.sqlite.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    DatabaseMissingError,
    connect,
)
from bridge.store.sqlite.store import SQLiteStore
from tests.conftest import attempt_completed, eventually, make_config
from tests.contract.records import NOW, bury_all, hook, keep_attempts, msg, remap_to


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another connection holding the write lock, as a CLI in a long transaction would."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def first_write_waiting(store: SQLiteStore) -> asyncio.Future[EnqueueReceipt]:
    """Webhook 1's write, submitted and waiting for a write lock another connection holds
    (the writer has counted the wait)."""
    writer = store._writer
    assert writer is not None
    pending = asyncio.ensure_future(store.enqueue(hook(1), [msg("a")]))
    await eventually(lambda: writer.busy_waits == 1)
    return pending


def commits(store: SQLiteStore) -> int:
    """Transactions the store's writer thread has committed: group commit is its internals, so
    this white-box count is read from the writer itself (the store does not publish it)."""
    assert store._writer is not None
    return store._writer.commits


def file_size(path: Path) -> int:
    return path.stat().st_size


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded, 5 s) for a condition another thread makes true."""
    await eventually(condition, within=5.0)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bridge.db"  # the directory does not exist yet


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(db)
    await opened.open()
    yield opened
    await opened.close()


class TestRoundTrip:
    async def test_the_raw_body_is_on_disk(self, store: SQLiteStore, db: Path) -> None:
        typed: Store = store  # satisfies the protocol
        await typed.enqueue(hook(1), [msg("a"), msg("b")])
        claimed = await store.claim(NOW, 10, 30)
        await store.ack([m.id for m in claimed], NOW + 1)
        assert query(db, "SELECT raw_body FROM webhooks") == [(b'{"n": 1}',)]

    async def test_from_config_and_closed_store(self, db: Path) -> None:
        store = SQLiteStore.from_config(StorageConfig(path=db, synchronous="NORMAL"))
        assert (store.path, store.synchronous) == (db, "NORMAL")
        with pytest.raises(StorageUnavailableError, match="not open"):
            await store.enqueue(hook(1), [msg("a")])
        await store.open()
        await store.close()
        with pytest.raises(StorageUnavailableError, match="not open"):
            await store.stats(0)
        assert query(db, "PRAGMA journal_mode") == [("wal",)]

    async def test_the_mapped_portal_leaves_the_row_as_kept(
        self, store: SQLiteStore, db: Path
    ) -> None:
        """The mapped portal goes beside the row (schema v6), never into it (a change of size
        rewrites the row with its body); pruning the webhook takes it along."""
        await store.keep(Webhook("user.registered", None, NOW, b"{}"))
        [taken] = await store.take(10, 30)
        await store.record([Judged(taken, "p-1", (msg("a"),), None, ())])
        assert query(db, "SELECT portal_id FROM webhooks") == [(None,)]
        assert query(db, "SELECT portal_id FROM webhook_portals") == [("p-1",)]
        claimed = await store.claim(NOW, 10, 30)
        await store.ack([m.id for m in claimed], NOW)
        assert await store.prune_delivered(before=NOW + 1) == 1
        assert query(db, "SELECT count(*) FROM webhooks") == [(0,)]
        assert query(db, "SELECT count(*) FROM webhook_portals") == [(0,)]


class TestDedupe:
    async def test_both_raw_bodies_are_kept(self, store: SQLiteStore, db: Path) -> None:
        await store.enqueue(hook(1), [msg("a"), msg("b")])
        await store.enqueue(hook(2), [msg("a", version=2), msg("c")])
        assert query(db, "SELECT count(*) FROM webhooks") == [(2,)]  # raw bodies both kept
        assert query(db, "SELECT message_id, webhook_id FROM messages ORDER BY id") == [
            ("a", 1),
            ("b", 1),
            ("c", 2),
        ]


class TestGroupCommit:
    async def test_concurrent_enqueues_share_a_commit(self, store: SQLiteStore, db: Path) -> None:
        before = commits(store)
        with write_lock(db):  # the writer waits, so the calls pile up behind it
            tasks = [
                asyncio.create_task(store.enqueue(hook(i), [msg(f"m{i}")])) for i in range(100)
            ]
            await asyncio.sleep(0)  # let every task submit its write
            assert not any(task.done() for task in tasks)  # nobody acknowledged before COMMIT
        receipts = await asyncio.gather(*tasks)
        assert all(r.stored == 1 for r in receipts)
        assert len({r.webhook_id for r in receipts}) == 100
        assert commits(store) - before <= 2 < 100
        assert query(db, "SELECT count(*) FROM messages") == [(100,)]

    async def test_acks_and_the_next_claim_share_a_commit(
        self, store: SQLiteStore, db: Path
    ) -> None:
        """A drain's acks and the claim after them, queued behind a busy writer, cost one
        transaction (one fsync), and each gets its own answer."""
        await store.enqueue(hook(1), [msg(f"m{i}") for i in range(6)])
        first, second = await store.claim(NOW, 2, 30), await store.claim(NOW, 2, 30)
        before = commits(store)
        with write_lock(db):
            acks = [asyncio.create_task(store.ack([m.id for m in b], NOW)) for b in (first, second)]
            claim = asyncio.create_task(store.claim(NOW, 10, 30))
            await asyncio.sleep(0)  # let every task submit its write
            assert not any(task.done() for task in [*acks, claim])
        await asyncio.gather(*acks)
        assert [m.message_id for m in await claim] == ["m4", "m5"]
        assert commits(store) - before <= 2 < 3
        assert query(db, "SELECT count(*) FROM messages WHERE state = 'delivered'") == [(4,)]

    async def test_enqueues_acks_and_a_claim_queued_together_share_a_commit(
        self, store: SQLiteStore, db: Path
    ) -> None:
        """Grouped enqueues (one call per run) and delivery's acks and claim, queued in that
        order behind a busy writer, run in order in one transaction: the claim sees the
        webhooks enqueued before it, every caller gets its own answer."""
        await store.enqueue(hook(1), [msg(f"old{i}") for i in range(2)])
        old = await store.claim(NOW, 2, 30)
        before = commits(store)
        with write_lock(db):
            enqueues = [
                asyncio.create_task(store.enqueue(hook(10 + i), [msg(f"new{i}")])) for i in range(3)
            ]
            ack = asyncio.create_task(store.ack([m.id for m in old], NOW))
            claim = asyncio.create_task(store.claim(NOW, 10, 30))
            late = asyncio.create_task(store.enqueue(hook(20), [msg("new0"), msg("late")]))
            await asyncio.sleep(0)  # let every task submit its write
            assert not any(t.done() for t in [*enqueues, ack, claim, late])
        receipts = await asyncio.gather(*enqueues)
        await ack
        assert [r.stored for r in receipts] == [1, 1, 1]
        assert sorted(m.message_id for m in await claim) == ["new0", "new1", "new2"]
        receipt = await late
        assert (receipt.stored, receipt.duplicates) == (1, 1)
        assert commits(store) - before <= 2 < 6
        assert query(db, "SELECT count(*) FROM messages WHERE state = 'delivered'") == [(2,)]

    async def test_one_bad_item_does_not_fail_its_group(self, db: Path) -> None:
        store = SQLiteStore(db, max_page_count=200)  # 800 KB
        await store.open()
        try:
            before = commits(store)
            with write_lock(db):
                first = asyncio.create_task(store.enqueue(hook(1), [msg("a")]))
                await asyncio.sleep(0)  # let it submit its write
                await until(lambda: store.backlog == 0)  # the writer holds it, waiting
                big = asyncio.create_task(store.enqueue(hook(2, b"x" * 2_000_000), [msg("b")]))
                small = asyncio.create_task(store.enqueue(hook(3), [msg("c")]))
                await until(lambda: store.backlog == 2)
            assert (await first).stored == 1
            assert (await small).stored == 1
            with pytest.raises(StorageUnavailableError, match="disk full"):
                await big
            assert commits(store) - before == 2
        finally:
            await store.close()
        assert query(db, "SELECT message_id FROM messages ORDER BY id") == [("a",), ("c",)]
        assert query(db, "SELECT count(*) FROM webhooks") == [(2,)]


class TestClaim:
    async def test_expired_lease_comes_back_after_a_restart(self, db: Path) -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.enqueue(hook(1), [msg("a"), msg("b")])
        claimed = await store.claim(NOW, 10, 30)
        assert len(claimed) == 2
        await store.close()  # "crash": claimed, never acknowledged

        restarted = SQLiteStore(db)
        await restarted.open()
        try:
            assert await restarted.claim(NOW + 29, 10, 30) == []
            assert await restarted.next_due_at() == NOW + 30
            again = await restarted.claim(NOW + 30, 10, 30)
            assert [m.id for m in again] == [m.id for m in claimed]
            assert [m.attempts for m in again] == [0, 0]
        finally:
            await restarted.close()

    async def test_recover_releases_a_dead_process_claims_at_once(self, db: Path) -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.enqueue(hook(1), [msg("a"), msg("b"), msg("c")])
        claimed = await store.claim(NOW, 2, 120)
        await store.close()  # "SIGKILL" with two messages claimed

        restarted = SQLiteStore(db)
        await restarted.open()
        try:
            assert await restarted.recover(NOW + 1) == 2
            assert await restarted.recover(NOW + 1) == 0  # nothing left to release
            again = await restarted.claim(NOW + 1, 10, 120)
            assert [m.message_id for m in again] == ["a", "b", "c"]
            assert [m.id for m in again][:2] == [m.id for m in claimed]
        finally:
            await restarted.close()

    async def test_retry_later_keeps_the_last_error(self, store: SQLiteStore, db: Path) -> None:
        await store.enqueue(hook(1), [msg("a")])
        [claimed] = await store.claim(NOW, 10, 30)
        await store.retry_later([claimed.id], NOW + 60, "503 from Segment")
        [again] = await store.claim(NOW + 60, 10, 30)
        await store.retry_later([again.id], NOW + 200, "timeout")
        assert query(db, "SELECT last_error FROM messages") == [("timeout",)]


class TestDurability:
    async def test_reopen_keeps_everything(self, db: Path) -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.enqueue(hook(1), [msg("a"), msg("b"), msg("c")])
        await store.enqueue(hook(2), [], dead=DeadReason("bad", "x"))
        claimed = await store.claim(NOW, 2, 30)
        await store.ack([claimed[0].id], NOW)
        await store.bury([claimed[1].id], DeadReason("rejected", "y"), "400", NOW)
        stats = await store.stats(0)
        letters = await store.dead_letters(DeadLetterFilter())
        await store.close()

        reopened = SQLiteStore(db)
        await reopened.open()
        try:
            again = await reopened.stats(0)
            assert replace(again, storage_bytes=0) == replace(stats, storage_bytes=0)
            assert await reopened.dead_letters(DeadLetterFilter()) == letters
            [left] = await reopened.claim(NOW, 10, 30)
            assert left.message_id == "c"
        finally:
            await reopened.close()
        assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]

    async def test_a_version_1_database_keeps_its_messages(self, db: Path) -> None:
        """Upgrading from schema 1 (bodies inside ``messages``) moves every body across."""
        db.parent.mkdir()
        conn = sqlite3.connect(db, isolation_level=None)
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO webhooks VALUES (1, 'exam.finished', 'p', 1.0, x'7b7d')")
        for n, state in enumerate(["pending", "delivered", "dead"], start=1):
            conn.execute(
                "INSERT INTO messages (id, webhook_id, message_id, destination, user_id,"
                " payload, state, due_at, enqueued_at) VALUES (?, 1, ?, 'default', 'u1', ?,"
                " ?, ?, 1.0)",
                (n, f"m{n}", msg(f"m{n}").payload, state, 1.0 if state == "pending" else None),
            )
        conn.execute("INSERT INTO dead_letters VALUES (1, 1, 3, 'rejected', 'x', 1, 1.0)")
        conn.close()

        store = SQLiteStore(db)
        await store.open()
        try:
            [claimed] = await store.claim(NOW, 10, 30)
            assert claimed.payload == msg("m1").payload
            [letter] = await store.dead_letters(DeadLetterFilter())
            detail = await store.dead_letter(letter.id)
            assert detail is not None
            assert detail.payload == msg("m3").payload
        finally:
            await store.close()
        assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert query(db, "SELECT count(*) FROM message_payloads") == [(3,)]
        columns = [row[1] for row in query(db, "PRAGMA table_info(messages)")]
        assert "payload" not in columns

    async def test_a_version_2_database_gets_ranks(self, db: Path) -> None:
        """Upgrading from schema 2 (no ``rank``): pending messages stay, at rank 0, and a
        higher-ranked version supersedes them like any new one."""
        db.parent.mkdir()
        conn = sqlite3.connect(db, isolation_level=None)
        conn.executescript(MIGRATIONS[0] + MIGRATIONS[1])
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO webhooks VALUES (1, 'attempt.completed', 'p', 1.0, x'7b7d')")
        conn.execute(
            "INSERT INTO messages (id, webhook_id, message_id, destination, user_id, state,"
            " due_at, enqueued_at) VALUES (1, 1, 'm1', 'default', 'u1', 'pending', 1.0, 1.0)"
        )
        conn.execute("INSERT INTO message_payloads VALUES (1, ?)", (msg("m1").payload,))
        conn.close()

        store = SQLiteStore(db)
        await store.open()
        try:
            richer = replace(msg("m1", version=2), user_id="u2", rank=1)
            receipt = await store.enqueue(hook(2), [richer])
            assert (receipt.stored, receipt.duplicates, receipt.superseded) == (0, 0, 1)
            [claimed] = await store.claim(NOW, 10, 30)
            assert (claimed.message_id, claimed.user_id) == ("m1", "u2")
            assert claimed.payload == richer.payload
        finally:
            await store.close()
        assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert query(db, "SELECT rank FROM messages") == [(1,)]

    async def test_newer_schema_is_refused(self, db: Path) -> None:
        db.parent.mkdir()
        query(db, "PRAGMA user_version = 99")
        store = SQLiteStore(db)
        with pytest.raises(StorageUnavailableError, match="newer"):
            await store.open()
        await store.close()

    async def test_two_stores_on_one_file(self, db: Path) -> None:
        """The daemon and the CLI at the same time: WAL lets both work."""
        daemon, cli = SQLiteStore(db), SQLiteStore(db)
        await daemon.open()
        await cli.open()
        try:
            await daemon.enqueue(hook(1), [msg("a")])
            [claimed] = await cli.claim(NOW, 10, 30)
            await cli.ack([claimed.id], NOW)
            assert (await daemon.stats(0)).delivered_total == 1
        finally:
            await cli.close()
            await daemon.close()


class TestCheckpoints:
    async def test_the_wal_is_copied_back_off_the_commit_path(self, db: Path) -> None:
        """Commits never checkpoint (``wal_autocheckpoint = 0`` on the writer), yet the
        database file receives the committed pages: the checkpointer thread copies them."""
        store = SQLiteStore(db)
        await store.open()
        try:
            size_before = file_size(db)
            body = b"x" * 20_000
            await asyncio.gather(*(store.enqueue(hook(n, body), [msg(f"m{n}")]) for n in range(50)))
            checkpointer, writer = store._checkpointer, store._writer
            assert checkpointer is not None
            assert writer is not None
            # Wait on the checkpointer's own word that every commit so far is copied back (the
            # file's size grows while a checkpoint runs, before that checkpoint is counted).
            await until(lambda: checkpointer.copied_through >= writer.commits)
            assert checkpointer.checkpoints >= 1
            assert file_size(db) > size_before + 50 * len(body)
        finally:
            await store.close()

    async def test_the_wal_rewinds_under_sustained_load(
        self, db: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SQLite rewinds the WAL only when a write transaction begins with every frame copied
        back, which never happens while the writer always has work: the writer rewinds it on
        the checkpointer's request instead, so the WAL does not grow with the load."""
        monkeypatch.setattr("bridge.store.sqlite.checkpoint.RESTART_FRAMES", 256)  # 1 MB
        store = SQLiteStore(db)
        await store.open()
        checkpointer = store._checkpointer
        assert checkpointer is not None
        body = b"x" * 8_000
        written = 0

        async def client(number: int) -> None:  # keeps a write queued at all times
            nonlocal written
            while checkpointer.restarts < 1 and written < 20_000:
                written += 1
                await store.enqueue(hook(number * 100_000 + written, body), [])

        try:
            await asyncio.gather(*(client(n) for n in range(16)))
            assert checkpointer.restarts >= 1
            with sqlite3.connect(db) as probe:  # frames now in the WAL, a fraction of the total
                ((_, frames, _),) = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            assert frames < written * len(body) / 4096 / 2
        finally:
            await store.close()

    async def test_a_reader_holding_a_snapshot_does_not_stall_intake(
        self, db: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A ``.backup`` or an open ``sqlite3`` shell holds a read snapshot, and the WAL cannot
        be rewound past it. The writer's rewind then gives up at once and is tried again later,
        instead of waiting ``busy_timeout`` with every commit queued behind it; the WAL past
        its target is logged; once the reader has gone, the WAL is rewound."""
        monkeypatch.setattr("bridge.store.sqlite.checkpoint.RESTART_FRAMES", 256)  # 1 MB
        monkeypatch.setattr("bridge.store.sqlite.checkpoint.BLOCKED_RETRY_SECS", 0.1)
        store = SQLiteStore(db, busy_timeout_secs=2.0)
        await store.open()
        checkpointer = store._checkpointer
        assert checkpointer is not None
        body = b"x" * 2_000
        latencies: list[float] = []
        written = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20.0

        def enough(most: int) -> bool:  # 3,000 and two rewinds tried past the reader
            return written >= most and checkpointer.restarts_blocked >= 2

        async def client(number: int, most: int) -> None:  # bounded in count and in time
            nonlocal written
            while not enough(most) and written < 20_000 and loop.time() < deadline:
                written += 1
                started = time.perf_counter()
                await store.enqueue(hook(number * 100_000 + written, body), [])
                latencies.append(time.perf_counter() - started)

        reader = sqlite3.connect(db, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM webhooks").fetchall()  # the snapshot is held
            with capture_logs() as lines:
                await asyncio.gather(*(client(n, 3_000) for n in range(16)))
                p99 = statistics.quantiles(latencies, n=100)[98]
                assert p99 < 0.5, f"p99 {p99:.3f} s over {len(latencies)} enqueues"
                assert checkpointer.restarts_blocked >= 2, (  # the reader really was in the way
                    written,
                    checkpointer.checkpoints,
                    checkpointer.restarts,
                    loop.time() - deadline,
                )
                await until(lambda: "wal_over_target" in [line["event"] for line in lines])
        finally:
            reader.close()
        try:
            rewinds, more, until_at = checkpointer.restarts, 0, loop.time() + 10.0
            while checkpointer.restarts == rewinds and more < 20_000 and loop.time() < until_at:
                more += 16
                await asyncio.gather(
                    *(store.enqueue(hook(900_000 + more + n, body), []) for n in range(16))
                )
            assert checkpointer.restarts > rewinds
            with sqlite3.connect(db) as probe:  # the WAL starts from its beginning again
                ((_, frames, _),) = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            assert frames < 256
        finally:
            await store.close()

    def test_writer_connections_leave_checkpoints_to_the_checkpointer(self, db: Path) -> None:
        db.parent.mkdir()
        writer = connect(db, synchronous="FULL", busy_timeout_secs=1, autocheckpoint=False)
        other = connect(db, synchronous="FULL", busy_timeout_secs=1)
        try:
            assert writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
            assert other.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
        finally:
            writer.close()
            other.close()

    async def test_a_failing_checkpoint_is_logged_and_retried(self) -> None:
        """Nothing is lost or refused when checkpoints fail: the WAL just waits."""
        attempts: list[int] = []

        def broken() -> sqlite3.Connection:
            attempts.append(1)
            raise sqlite3.OperationalError("unable to open database file")

        checkpointer = Checkpointer(broken, "test-wal")
        checkpointer.start()
        try:
            with capture_logs() as lines:
                checkpointer.poke()
                await until(lambda: len(attempts) >= 1)
                checkpointer.poke()
                await until(lambda: len(attempts) >= 2)
            assert checkpointer.checkpoints == 0
            assert [line["event"] for line in lines][:2] == ["wal_checkpoint_failed"] * 2
        finally:
            await asyncio.to_thread(checkpointer.stop)


class TestFailures:
    async def test_disk_full(self, db: Path) -> None:
        store = SQLiteStore(db, max_page_count=64)  # 256 KB
        await store.open()
        try:
            for i in range(20):  # delivered earlier: what retention will free
                await store.enqueue(hook(-i, b"x" * 2000), [msg(f"old{i}")])
            claimed = await store.claim(NOW, 100, 30)
            await store.ack([m.id for m in claimed], NOW)
            stored = 0
            # Which enqueue meets the full disk is not known in advance, so the loop is inside.
            with pytest.raises(StorageUnavailableError, match="disk full") as caught:  # noqa: PT012
                for i in range(10_000):
                    await store.enqueue(hook(i, b"x" * 2000), [msg(f"m{i}-{j}") for j in range(3)])
                    stored += 1
            assert isinstance(caught.value.__cause__, sqlite3.Error)
            assert stored > 5
            # Nothing half-written: every stored webhook has all its messages, counters agree.
            assert query(db, "SELECT count(*) FROM webhooks") == [(20 + stored,)]
            assert query(db, "SELECT count(*) FROM messages") == [(20 + 3 * stored,)]
            assert (await store.stats(0)).pending == 3 * stored
            assert query(db, "PRAGMA integrity_check") == [("ok",)]

            assert await store.prune_delivered(NOW + 1) == 20
            receipt = await store.enqueue(hook(0, b"x" * 2000), [msg("again")])
            assert receipt.stored == 1
            await store.check_writable()
        finally:
            await store.close()

    async def test_a_deleted_file_refuses_everything_until_opened_again(self, db: Path) -> None:
        """Writes and reads fail once the path no longer names the open file; opening again
        takes whatever the path names then (tests/test_database_file.py: the real serve)."""
        store = SQLiteStore(db)
        await store.open()
        try:
            await store.enqueue(hook(1), [msg("a")])
            await asyncio.to_thread(db.unlink)
            with pytest.raises(DatabaseFileLostError, match="deleted"):
                await store.enqueue(hook(2), [msg("b")])
            with pytest.raises(DatabaseFileLostError, match="deleted"):
                await store.stats(0)
            with pytest.raises(DatabaseFileLostError, match="deleted"):
                await store.check_writable()
        finally:
            await store.close()
        await store.open()
        try:
            assert (await store.enqueue(hook(3), [msg("c")])).stored == 1
        finally:
            await store.close()
        assert query(db, "SELECT json_extract(raw_body, '$.n') FROM webhooks") == [(3,)]

    async def test_a_replaced_file_is_noticed_by_an_idle_store(self, db: Path) -> None:
        """No write needed: the idle writer looks once a second, and says so in the log."""
        store = SQLiteStore(db)
        await store.open()
        other = db.with_name("other.db")
        try:
            await store.enqueue(hook(1), [msg("a")])
            with capture_logs() as lines:
                await asyncio.to_thread(lambda: sqlite3.connect(other).close())
                await asyncio.to_thread(os.replace, other, db)
                await until(lambda: "database_file_lost" in [line["event"] for line in lines])
            assert lines[-1]["how"] == "replaced"
            with pytest.raises(DatabaseFileLostError, match="replaced"):
                await store.enqueue(hook(2), [msg("b")])
        finally:
            await store.close()

    async def test_no_connection_is_opened_on_a_replacement(self, db: Path) -> None:
        """The reader's and the checkpointer's connections are opened by path, lazily: on a
        file moved over ours they would take our WAL for its own and write our pages into it."""
        store = SQLiteStore(db)
        await store.open()  # nothing read or committed yet: neither connection exists
        other = db.with_name("other.db")
        try:
            with sqlite3.connect(other) as conn:
                conn.execute("CREATE TABLE unrelated (x)")
            conn.close()
            await asyncio.to_thread(os.replace, other, db)
            with pytest.raises(DatabaseFileLostError, match="replaced"):
                await store.stats(0)
            with pytest.raises(DatabaseFileLostError, match="replaced"):
                store._connect_checkpointer()
        finally:
            await store.close()
        # Our -wal and -shm were moved aside: SQLite would have read them as the new file's.
        assert db.with_name("bridge.db-wal.orphaned").exists()
        assert not db.with_name("bridge.db-wal").exists()
        assert query(db, "SELECT name FROM sqlite_master") == [("unrelated",)]
        assert query(db, "PRAGMA journal_mode") == [("delete",)]

    async def test_create_false_opens_only_a_bridge_database(self, db: Path) -> None:
        with pytest.raises(DatabaseMissingError, match="no database at"):
            await SQLiteStore(db, create=False).open()
        assert not db.parent.exists()
        db.parent.mkdir()
        await asyncio.to_thread(lambda: sqlite3.connect(db).close())  # an empty SQLite file
        with pytest.raises(DatabaseMissingError, match="not a bridge database"):
            await SQLiteStore(db, create=False).open()
        assert query(db, "SELECT count(*) FROM sqlite_master") == [(0,)]
        created = SQLiteStore(db)
        await created.open()
        await created.close()
        existing = SQLiteStore(db, create=False)
        await existing.open()
        try:
            assert (await existing.stats(0)).pending == 0
        finally:
            await existing.close()

    async def test_a_writer_behind_another_process_s_lock_commits_once_it_is_released(
        self, db: Path
    ) -> None:
        """The writer waits for the write lock on its own schedule (SQLite's busy handler off,
        :data:`~bridge.store.sqlite.writer.BEGIN_RETRY_SECS`), within ``busy_timeout``: a lock
        released meanwhile lets the waiting write commit, and the wait is counted."""
        store = SQLiteStore(db, busy_timeout_secs=30)
        await store.open()
        try:
            with write_lock(db):
                pending = await first_write_waiting(store)
                assert not pending.done()
            assert (await pending).stored == 1
            assert (await store.enqueue(hook(2), [msg("b")])).stored == 1
            assert store._writer is not None
            assert store._writer.busy_waits == 1  # nobody held it the second time
        finally:
            await store.close()
        assert query(db, "SELECT count(*) FROM webhooks") == [(2,)]

    async def test_writes_queued_behind_another_process_s_lock_join_the_waiting_one(
        self, db: Path
    ) -> None:
        """A group commit that waited for the lock takes the shareable writes that queued
        meanwhile into its transaction (one commit, not two); the first write that cannot
        share it (the writable probe) and what follows run after, in their order."""
        store = SQLiteStore(db, busy_timeout_secs=30)
        await store.open()
        try:
            with write_lock(db):
                first = await first_write_waiting(store)
                before = commits(store)
                joined = [asyncio.ensure_future(store.keep(hook(n))) for n in (2, 3)]
                probe = asyncio.ensure_future(store.check_writable())
                last = asyncio.ensure_future(store.keep(hook(4)))
                await eventually(lambda: store.backlog == 4)
            assert (await first).webhook_id == "wh_1"
            assert [await one for one in joined] == ["wh_2", "wh_3"]
            await probe
            assert await last == "wh_4"
            assert commits(store) - before == 3  # 1-3 together, the probe, then 4
        finally:
            await store.close()
        assert query(db, "SELECT id, code FROM webhooks ORDER BY id") == [
            (n, hook(n).code) for n in (1, 2, 3, 4)
        ]

    async def test_locked_past_busy_timeout(self, db: Path) -> None:
        store = SQLiteStore(db, busy_timeout_secs=0.05)
        await store.open()
        try:
            with write_lock(db):
                with pytest.raises(StorageUnavailableError, match="locked"):
                    await store.enqueue(hook(1), [msg("a")])
                with pytest.raises(StorageUnavailableError, match="locked"):
                    await store.check_writable()
                with pytest.raises(StorageUnavailableError, match="locked"):
                    await store.claim(NOW, 10, 30)
                assert (await store.stats(0)).pending == 0  # reads still work
            await store.check_writable()
            assert (await store.enqueue(hook(1), [msg("a")])).stored == 1
        finally:
            await store.close()
        assert query(db, "SELECT count(*) FROM webhooks") == [(1,)]


class TestRowsOnDisk:
    """What replay, purge and prune do to the rows (the contract checks what they mean)."""

    async def test_replay_never_rewrites_a_delivered_row(
        self, store: SQLiteStore, db: Path
    ) -> None:
        await store.enqueue(hook(1), [msg("a"), msg("b")])
        a, b = await store.claim(NOW, 10, 30)
        await store.ack([a.id], NOW)
        await store.bury([b.id], DeadReason("rejected", "x"), "400", NOW)
        await store.replay(
            DeadLetterFilter(), remap_to([msg("a", 2), msg("b", 2), msg("new", 2)]), NOW + 5
        )
        rows = query(
            db,
            "SELECT message_id, state, attempts, payload FROM messages JOIN message_payloads"
            " USING (id) ORDER BY id",
        )
        assert [(m, s, n) for m, s, n, _ in rows] == [
            ("a", "delivered", 0),
            ("b", "pending", 1),
            ("new", "pending", 0),
        ]
        assert orjson.loads(rows[0][3])["v"] == 1  # delivered: never replaced or sent again
        assert orjson.loads(rows[1][3])["v"] == 2

    async def test_purge_leaves_no_rows(self, store: SQLiteStore, db: Path) -> None:
        await store.enqueue(hook(1), [], dead=DeadReason("old", "x"))
        await store.enqueue(hook(2), [msg("a")])
        await bury_all(store)
        assert await store.purge_dead(older_than=NOW + 1) == 2
        assert query(db, "SELECT count(*) FROM messages") == [(0,)]
        assert query(db, "SELECT count(*) FROM message_payloads") == [(0,)]
        assert query(db, "SELECT count(*) FROM webhooks") == [(0,)]

    async def test_prune_frees_payloads_then_bodies(self, store: SQLiteStore, db: Path) -> None:
        await store.enqueue(hook(1), [msg("a"), msg("b")])
        await store.enqueue(hook(2), [msg("c")])
        a, b, c = await store.claim(NOW, 10, 30)
        await store.ack([a.id], 100.0)
        await store.ack([c.id], 300.0)
        assert await store.prune_delivered(before=200.0) == 1
        assert query(db, "SELECT id FROM message_payloads ORDER BY id") == [(b.id,), (c.id,)]
        # webhook 1 still has "b" (in flight), so its raw body stays
        assert query(db, "SELECT id FROM webhooks ORDER BY id") == [(1,), (2,)]
        assert await store.prune_delivered(before=400.0) == 1
        assert query(db, "SELECT id FROM webhooks ORDER BY id") == [(1,)]


def stage_behind(
    store: SQLiteStore, config: Config, batch: int, reports: list[Report] | None = None
) -> MappingStage:
    """A stage whose clock is 20 s after ``NOW``: past a catch-up threshold of 10 s."""
    return MappingStage(
        store,
        lambda: config,
        batch=batch,
        clock=lambda: NOW + 20,
        catch_up_after_secs=10,
        on_report=None if reports is None else reports.append,
    )


async def map_after_a_cancel(store: SQLiteStore, work: asyncio.Future[Any], config: Config) -> None:
    """Cancel the stage's ``work`` (``serve`` past its grace), close the store (the process
    exits: its leases go with it), then map what is left with a fresh store and stage."""
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    await store.close()
    restarted = SQLiteStore(store.path)
    await restarted.open()
    try:
        after = MappingStage(restarted, lambda: config, batch=4, clock=lambda: NOW + 20)
        await after.drain(time.monotonic() + 30)
    finally:
        await restarted.close()


class TestMappingTransactions:
    async def test_a_take_is_recorded_in_short_transactions_with_mapping_between(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """SQLite has one write lock for the file, and ``serve``'s commits wait for the
        mapper's: the stage maps and records ``record_batch`` (32) webhooks at a time, so a
        take of 100 is one transaction counting the tries and four short ones recording."""
        config = make_config(tmp_path, "http://127.0.0.1:9")
        for n in range(100):
            body = orjson.dumps(attempt_completed(n))
            await store.keep(Webhook("attempt.completed", None, NOW, body))
        stage = MappingStage(store, lambda: config, batch=128, clock=lambda: NOW + 1)
        before = commits(store)
        assert await stage.round()
        assert commits(store) - before == 1 + 4
        assert not stage.catching_up
        stats = await store.stats(0)
        assert (stats.unmapped, stats.pending) == (0, 100)

    async def test_parts_recorded_while_the_next_is_mapped_stay_in_arrival_order(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """Catching up, each part of a take is mapped while the part before is recorded: a
        redelivery in the last part of an attempt first seen in the first part is still the
        duplicate, and the attempt's message is stored once, from its first arrival."""
        config = make_config(tmp_path, "http://127.0.0.1:9")
        await keep_attempts(store, [5 if n == 900 else n for n in range(1024)])
        reports: list[Report] = []
        stage = stage_behind(store, config, 1, reports)
        assert await stage.round()  # one at the burst pace finds the lag
        before = commits(store)
        assert await stage.round()
        # The count and eight records of 128: the take of the 1,023 left is not full (the
        # backlog is mapped), so its parts are ``steady_record``'s.
        assert commits(store) - before == 1 + 8
        assert [(r.mapped, r.messages, r.duplicates) for r in reports] == [
            (1, 1, 0),
            (1023, 1022, 1),
        ]
        assert query(store.path, "SELECT count(*) FROM messages") == [(1023,)]
        assert query(store.path, "SELECT count(*) FROM unmapped") == [(0,)]

    async def test_once_the_backlog_is_mapped_a_lasting_load_is_recorded_in_shorter_parts(
        self, store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Catching up, a full take is recorded in parts of ``CATCH_UP_RECORD``; a take that
        comes back not full (the backlog is mapped, the load lasts, the stage still at the
        catch-up pace) in parts of ``steady_record``: shorter holds of the write lock, which
        intake's commits wait for."""
        monkeypatch.setattr(stage_module, "CATCH_UP_BATCH", 16)
        monkeypatch.setattr(stage_module, "CATCH_UP_RECORD", 8)
        monkeypatch.setattr(store, "steady_record", 2)
        config = make_config(tmp_path, "http://127.0.0.1:9")
        await keep_attempts(store, list(range(4 + 16 + 6)))
        stage = stage_behind(store, config, 4)
        assert await stage.round()  # 4 at the burst pace find the lag
        assert stage.catching_up
        before = commits(store)
        assert await stage.round()  # 16: their count, two records of 8, the next take's count
        assert commits(store) - before == 4
        before = commits(store)
        stage.wake(intake_busy=True)
        assert await stage.round()  # the 6 left: three records of 2
        assert commits(store) - before == 3
        assert stage.catching_up
        assert query(store.path, "SELECT count(*) FROM messages") == [(26,)]

    @pytest.mark.parametrize("committed", [0, 1, 2, 3, 4])
    async def test_a_round_cancelled_midway_maps_each_webhook_once_after_it(
        self, store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed: int
    ) -> None:
        """A catch-up round cancelled (``serve`` stopping past its grace) once ``committed`` of
        its transactions are (the count, then records of 4 while the next 4 are mapped, and
        the next take's count), most with a record in flight: what was committed stays, the
        rest is mapped after the restart, and no webhook's messages are stored twice."""
        monkeypatch.setattr(stage_module, "CATCH_UP_BATCH", 16)
        monkeypatch.setattr(stage_module, "CATCH_UP_RECORD", 4)
        monkeypatch.setattr(stage_module, "OVERLAP_TURN", 1)
        config = make_config(tmp_path, "http://127.0.0.1:9")
        for n in range(24):
            body = orjson.dumps(attempt_completed(n))
            await store.keep(Webhook("attempt.completed", None, NOW, body))
        stage = MappingStage(
            store, lambda: config, batch=4, clock=lambda: NOW + 20, catch_up_after_secs=10
        )
        assert await stage.round()  # 4 at the burst pace; the next take is of 16, in parts of 4
        assert stage.catching_up
        before = commits(store)
        cancelled = asyncio.ensure_future(stage.round())
        await until(lambda: commits(store) >= before + committed)
        await map_after_a_cancel(store, cancelled, config)
        assert query(store.path, "SELECT count(*) FROM unmapped") == [(0,)]
        assert query(store.path, "SELECT count(*), count(DISTINCT message_id) FROM messages") == [
            (24, 24)
        ]

    @pytest.mark.parametrize("committed", range(9))
    async def test_a_running_stage_cancelled_anywhere_maps_each_webhook_once_after_it(
        self, store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed: int
    ) -> None:
        """The running stage ends a catch-up round while the next one maps (the round's last
        record in flight): cancelled (``serve`` past its grace) once ``committed`` of its
        transactions are, between two rounds too, what was committed stays, the rest is mapped
        after the restart, and no webhook's messages are stored twice."""
        monkeypatch.setattr(stage_module, "CATCH_UP_BATCH", 8)
        monkeypatch.setattr(stage_module, "CATCH_UP_RECORD", 4)
        monkeypatch.setattr(stage_module, "OVERLAP_TURN", 1)
        config = make_config(tmp_path, "http://127.0.0.1:9")
        await keep_attempts(store, [n % 30 for n in range(36)])  # 6 redeliveries, rounds on
        stage = stage_behind(store, config, 4)
        before = commits(store)
        running = asyncio.ensure_future(stage.run())
        await until(lambda: commits(store) >= before + committed or running.done())
        await map_after_a_cancel(store, running, config)
        assert query(store.path, "SELECT count(*) FROM unmapped") == [(0,)]
        assert query(store.path, "SELECT count(*), count(DISTINCT message_id) FROM messages") == [
            (30, 30)
        ]
        assert query(store.path, "SELECT min(webhook_id), max(webhook_id) FROM messages") == [
            (1, 30)
        ]  # each attempt's message from its first arrival

    async def test_a_stopped_stage_has_heard_its_last_record(
        self, store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``stop`` returns once the round in progress has ended, its last record too: every
        webhook the reports counted is recorded, every one taken is reported."""
        monkeypatch.setattr(stage_module, "CATCH_UP_BATCH", 8)
        monkeypatch.setattr(stage_module, "CATCH_UP_RECORD", 4)
        config = make_config(tmp_path, "http://127.0.0.1:9")
        await keep_attempts(store, list(range(400)))
        reports: list[Report] = []
        stage = stage_behind(store, config, 4, reports)
        running = asyncio.ensure_future(stage.run())
        await until(lambda: len(reports) >= 3)
        await stage.stop(time.monotonic() + 10)
        assert running.done()
        reported = sum(r.mapped for r in reports)
        assert 0 < reported < 400
        assert query(store.path, "SELECT count(*) FROM messages") == [(reported,)]
        assert (await store.stats(0)).unmapped == 400 - reported

    async def test_a_failed_write_with_the_last_record_in_flight_maps_it_again(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A round ends with its last record and the next take in flight, and both writes fail
        (the lock held past ``busy_timeout``): the next round raises, lets go of both, and once
        the lock is free the webhooks of that round are mapped again, from the oldest, once."""
        monkeypatch.setattr(stage_module, "CATCH_UP_BATCH", 4)
        monkeypatch.setattr(stage_module, "CATCH_UP_RECORD", 4)
        store = SQLiteStore(tmp_path / "bridge.db", busy_timeout_secs=0.2)
        await store.open()
        try:
            config = make_config(tmp_path, "http://127.0.0.1:9")
            await keep_attempts(store, list(range(16)))
            reports: list[Report] = []
            stage = stage_behind(store, config, 4, reports)
            before = commits(store)
            assert await stage.round(carry=True)  # 1-4; takes 5-8 ahead, its record carried
            await until(lambda: len(reports) == 1 and commits(store) >= before + 3)
            with write_lock(store.path):
                assert await stage.round(carry=True)  # 5-8, their record carried
                with pytest.raises(StorageUnavailableError):
                    await stage.round(carry=True)  # 5-8's record and 9-12's take fail
            assert [r.mapped for r in reports] == [4]
            while await stage.round(carry=True):
                pass
            # 5-8 were counted by their take: now taken alone (poison isolation), then 9-16,
            # then the empty take that says the mapping caught up.
            assert [r.mapped for r in reports] == [4, 1, 1, 1, 1, 4, 4, 0]
        finally:
            await store.close()
        assert query(store.path, "SELECT webhook_id FROM messages ORDER BY id") == [
            (n,) for n in range(1, 17)
        ]

    async def test_a_failed_write_gives_every_lease_back(self, tmp_path: Path) -> None:
        """The stage took the next webhooks while it mapped; a write fails (the lock held past
        ``busy_timeout``, a full disk): the leases of this process go, so the stage's next
        takes start again from the oldest, in arrival order, instead of skipping some for
        ``lease_secs``."""
        store = SQLiteStore(tmp_path / "bridge.db", busy_timeout_secs=0.2)
        await store.open()
        try:
            for n in range(3):
                await store.keep(hook(n))
            first, second, third = await store.take(3, 30)
            assert await store.take(10, 30) == []
            with write_lock(store.path), pytest.raises(StorageUnavailableError):
                await store.failed(first, "ValueError: boom")
            assert [t.row_id for t in await store.take(10, 30)] == [first.row_id]  # tried: alone
            await store.record([Judged(first, "p", (msg("a"),), None, ())])
            assert [t.row_id for t in await store.take(10, 30)] == [second.row_id]
            assert third.tries == 1
        finally:
            await store.close()

    async def test_the_catch_up_pace_starts_past_the_lag_and_ends_once_caught_up(
        self, store: SQLiteStore
    ) -> None:
        """It starts past the lag; it ends when a take is not full (fewer waiting than it
        holds), the lag is under half the threshold and intake is not busy, not while a
        backlog is left or the load lasts."""
        await store.keep(Webhook("attempt.completed", None, NOW, b"{}"))
        taken = await store.take(10, 30)
        assert not catching_up(NOW + 10, taken, 10)
        assert not catching_up(NOW + 10, taken, 10, full=True)
        assert catching_up(NOW + 10.5, taken, 10)
        assert catching_up(NOW + 5.5, taken, 10, already=True)
        assert not catching_up(NOW + 5, taken, 10, already=True)
        assert catching_up(NOW + 1, taken, 10, already=True, full=True)
        assert catching_up(NOW + 1, taken, 10, already=True, intake_busy=True)
        assert not catching_up(NOW + 1, taken, 10, intake_busy=True)  # busy alone: a burst
        assert not catching_up(NOW + 100, [], 10, already=True)

    async def test_the_catch_up_pace_lasts_as_long_as_the_load(
        self, store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A load that lasts: once its backlog is mapped, the stage stays at the catch-up pace
        (serve paces intake to it) while intake's wake-ups say busy, with fresh webhooks or
        none left to take; once intake is quiet, it is caught up and serve hears of it."""
        await keep_attempts(store, list(range(200)))
        reports: list[Report] = []
        stage = stage_behind(store, make_config(tmp_path, "http://127.0.0.1:9"), 128, reports)
        monkeypatch.setattr(stage_module, "INTAKE_BUSY_FRESH_SECS", 60.0)  # however slow CI is
        stage.wake(intake_busy=True)
        assert await stage.round()  # 128 of the backlog, 20 s old
        assert await stage.round()  # the other 72
        await keep_attempts(store, list(range(200, 210)), at=NOW + 20)  # fresh: the stage's now
        assert await stage.round()  # 10 fresh ones: not full, no lag, but intake is busy
        assert not await stage.round()  # nothing left, intake still busy
        assert stage.catching_up
        assert [(r.mapped, r.catching_up) for r in reports] == [
            (128, True),
            (72, True),
            (10, True),
        ]
        monkeypatch.setattr(stage_module, "INTAKE_BUSY_FRESH_SECS", 0.0)  # its wake-ups stopped
        assert not await stage.round()
        assert not stage.catching_up
        assert (reports[-1].mapped, reports[-1].catching_up) == (0, False)
        assert (await store.stats(0)).pending == 210

    async def test_a_mapper_behind_catches_up_in_takes_of_1024_recorded_512_at_a_time(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """1,700 webhooks 20 s old (past ``catch_up_after_secs``): the first take of 128 is
        recorded in one transaction, then takes of 1,024 in parts of 512 (the second mapped
        while the first is recorded, the next take taken meanwhile), the last one not full in
        parts of 128; fresh webhooks behind them bring the burst pace (32 per transaction) back
        once the lag is under half the threshold."""
        config = make_config(tmp_path, "http://127.0.0.1:9")
        for n in range(1700):
            body = orjson.dumps(attempt_completed(n))
            await store.keep(Webhook("attempt.completed", None, NOW, body))
        clock = [NOW + 20]
        reports: list[Report] = []
        stage = MappingStage(
            store,
            lambda: config,
            batch=128,
            clock=lambda: clock[0],
            catch_up_after_secs=10,
            on_report=reports.append,
        )
        per_round = []
        ahead: list[int] = []
        for _ in range(3):
            before = commits(store)
            assert await stage.round()
            per_round.append(commits(store) - before)
            ahead += query(store.path, "SELECT count(*) FROM unmapped WHERE tries > 0")[0]
            assert stage.catching_up
        # Takes of 128, 1,024, 548: a count, records of <= 512; the full take of 1,024 takes
        # the next one (its count may share a record's transaction) while it is mapped. The
        # 548 are the end of the backlog (a take not full): records of ``steady_record``.
        assert per_round[0] == 2
        assert per_round[1] in (3, 4)
        assert per_round[2] == 5  # 548 in parts of 128
        assert ahead == [0, 548, 0]
        assert [(r.mapped, r.messages, r.catching_up) for r in reports] == [
            (128, 128, True),
            (1024, 1024, True),
            (548, 548, True),
        ]
        assert (await store.stats(0)).unmapped == 0
        for n in range(1700, 1800):
            body = orjson.dumps(attempt_completed(n))
            await store.keep(Webhook("attempt.completed", None, NOW + 16, body))
        before = commits(store)
        assert await stage.round()  # 100 taken at the catch-up size: 4 s old, under 5 s
        assert commits(store) - before == 1 + 4
        assert not stage.catching_up
        assert (reports[-1].mapped, reports[-1].catching_up) == (100, False)
        assert not await stage.round()
        assert len(reports) == 4  # an empty take at the burst pace says nothing
        await store.keep(
            Webhook("attempt.completed", None, NOW, orjson.dumps(attempt_completed(2100)))
        )
        assert await stage.round()
        assert stage.catching_up
        assert not await stage.round()  # nothing left: caught up, and serve hears of it
        assert not stage.catching_up
        assert (reports[-1].mapped, reports[-1].catching_up) == (0, False)
        assert (await store.stats(0)).pending == 1801
