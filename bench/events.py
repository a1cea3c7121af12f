"""How fast ``synap-bridge events`` searches a database of a million messages (one-off).

Run: ``.venv/bin/python -m bench.events [--messages 1000000] [--db bench/out/events.db]``, or
with ``--postgres cluster`` (a throwaway cluster, tests/pgcluster.py) or ``--postgres URL``.

The database is built through :meth:`SQLiteStore.enqueue` (the intake path, so the v3 trigger
that extracts the body's ids runs for every webhook and its cost shows in the build rate): one
compact ``attempt.completed`` webhook (~450 bytes; Synap's real ones are 4-7 KB, which makes
the file bigger, not the indexes) and the ~1 KB message the real mapping makes of it per row;
50,000 users with 20 attempts each; receipt times spread over 30 days. Then, as after a month
of operation, 99% are marked delivered, 0.1% dead (with dead letters) and the rest left
pending, with plain SQL (a benchmark shortcut: the counters of ``stats`` are not kept right by
it). Each search runs through the store's public ``find_events`` / ``event``; the median of 5
runs is printed. The same for the PostgreSQL store (``VACUUM ANALYZE`` after the ageing).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson

from bridge import config as config_module
from bridge.mapping import intake
from bridge.messages import OutgoingMessage
from bridge.store import EventQuery, Store, Webhook
from bridge.store.sqlite.store import SQLiteStore

USERS = 50_000
DAYS = 30
IN_FLIGHT = 2000
T0 = 1_780_000_000.0
USER_MARK = "u-BENCHUSERMARK"
ATTEMPT_MARK = "a-BENCHATTEMPTMARK"


def _template() -> tuple[bytes, OutgoingMessage]:
    """A compact ``attempt.completed`` body (~450 bytes) and what the real mapping makes of it."""
    raw = orjson.dumps(
        {
            "id": ATTEMPT_MARK,
            "score": 7,
            "scoreFrac": 0.7,
            "timeCompleted": "2026-11-01T10:00:00Z",
            "test": {"id": "t-algebra-1", "title": "Algebra I"},
            "attempt": {"id": ATTEMPT_MARK, "isExam": False, "score": 7, "totalQuestions": 10},
            "user": {"id": USER_MARK, "name": "Ada Lovelace", "email": "ada@example.org"},
            "portal": {"id": "portal-1"},
            "meta": {"timestamp": "2026-11-01T10:00:01Z"},
        }
    )
    mapped = intake.process("attempt.completed", raw, T0, config_module.parse({}))
    assert mapped.dead is None, mapped
    assert len(mapped.messages) == 1, mapped
    return raw, mapped.messages[0]


def _rows(count: int) -> Iterator[tuple[Webhook, OutgoingMessage]]:
    raw, template = _template()
    text = raw.decode()
    span = DAYS * 86400.0
    for n in range(count):
        user, attempt = f"u-{n % USERS}", f"a-{n}"
        new_id = "track-" + hashlib.sha256(f"events\x1f{n}".encode()).hexdigest()
        payload = (
            template.payload.replace(USER_MARK.encode(), user.encode())
            .replace(ATTEMPT_MARK.encode(), attempt.encode())
            .replace(template.message_id.encode(), new_id.encode())
        )
        body = text.replace(USER_MARK, user).replace(ATTEMPT_MARK, attempt).encode()
        at = T0 + span * n / count
        yield (
            Webhook("attempt.completed", "portal-1", at, body),
            OutgoingMessage(new_id, template.destination, user, payload),
        )


async def _build(store: Store, count: int) -> float:
    await store.open()
    started = time.perf_counter()
    try:
        batch: list[Awaitable[object]] = []
        for webhook, message in _rows(count):
            batch.append(store.enqueue(webhook, [message]))
            if len(batch) >= IN_FLIGHT:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
    finally:
        await store.close()
    return time.perf_counter() - started


#: 99% delivered, 0.1% dead with a dead letter, the rest pending (the same SQL on both stores).
AGE = (
    "UPDATE messages SET state = 'delivered', due_at = NULL, delivered_at = enqueued_at + 2"
    " WHERE id % 100 != 0",
    "UPDATE messages SET state = 'dead', due_at = NULL, attempts = 1,"
    " last_error = 'HTTP 400: bad' WHERE id % 1000 = 0",
    "INSERT INTO dead_letters (webhook_id, message_row, reason, detail, attempts, created_at)"
    " SELECT webhook_id, id, 'rejected_by_segment', 'HTTP 400', 1, enqueued_at FROM messages"
    " WHERE state = 'dead'",
)


def _age_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for statement in AGE:
            conn.execute(statement)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def _age_postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            for statement in AGE:
                await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def _time(work: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    runs, result = [], None
    for _ in range(5):
        started = time.perf_counter()
        result = await work()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), result


async def _measure(store: Store, count: int) -> None:
    await store.open()
    middle = count // 2
    now = T0 + DAYS * 86400.0
    hour = T0 + DAYS * 86400.0 / 2
    searches: dict[str, EventQuery] = {
        "newest 50, no filter": EventQuery(),
        "user id (20 webhooks)": EventQuery(user_id=f"u-{middle % USERS}"),
        "attempt id (body ref)": EventQuery(ref=f"a-{middle}"),
        "messageId": EventQuery(
            message_id="track-" + hashlib.sha256(f"events\x1f{middle}".encode()).hexdigest()
        ),
        "code, newest 50": EventQuery(code="attempt.completed"),
        "one hour, mid-range": EventQuery(since=hour, until=hour + 3600),
        "state dead, newest 50": EventQuery(state="dead"),
        "state pending, newest 50": EventQuery(state="pending"),
        "state delivered, newest 50": EventQuery(state="delivered"),
        "user + state dead": EventQuery(user_id="u-0", state="dead"),
    }
    try:
        print(f"{'search':32} {'median ms':>10} {'webhooks':>9}")
        for name, query in searches.items():
            secs, found = await _time(lambda q=query: store.find_events(q, now))  # type: ignore[misc]
            assert isinstance(found, list)
            print(f"{name:32} {secs * 1000:10.1f} {len(found):9}")
        secs, _ = await _time(lambda: store.event(f"wh_{middle}", now))
        print(f"{'events show (one webhook)':32} {secs * 1000:10.1f} {1:9}")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("bench/out/events.db"))
    parser.add_argument("--reuse", action="store_true", help="search an existing database")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="measure the PostgreSQL store in this (empty) database instead; 'cluster' starts a"
        " throwaway one (tests/pgcluster.py)",
    )
    args = parser.parse_args()
    if args.postgres:
        _postgres(args)
        return
    args.db.parent.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        for stale in args.db.parent.glob(args.db.name + "*"):
            stale.unlink()
        secs = asyncio.run(_build(SQLiteStore(args.db, synchronous="OFF"), args.messages))
        print(f"built {args.messages} messages in {secs:.0f} s ({args.messages / secs:,.0f}/s)")
        _age_sqlite(args.db)
    size = sum(p.stat().st_size for p in args.db.parent.glob(args.db.name + "*"))
    print(f"database: {size / 1e9:.2f} GB")
    asyncio.run(_measure(SQLiteStore(args.db), args.messages))


def _postgres(args: argparse.Namespace) -> None:
    from bridge.store.postgres.store import PostgresStore
    from tests import pgcluster

    cluster = pgcluster.Cluster().start() if args.postgres == "cluster" else None
    try:
        url = cluster.new_database() if cluster is not None else args.postgres
        if not args.reuse:
            secs = asyncio.run(_build(PostgresStore(url), args.messages))
            print(f"built {args.messages} messages in {secs:.0f} s ({args.messages / secs:,.0f}/s)")
            asyncio.run(_age_postgres(url))
        asyncio.run(_measure(PostgresStore(url), args.messages))
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
