"""The second intake baseline: the minimal durable receiver.

aiohttp reads the body, puts it on a list with a future, and answers only once one writer thread
has committed every waiting body in one SQLite transaction (WAL, ``synchronous=FULL``): the
cheapest design that still keeps the bridge's promise (no 2xx before the commit). Same
interpreter, same aiohttp, the same uvloop and no access log, like the bridge. The bridge divided
by this is our own overhead; this divided by bare aiohttp is the price of durability itself.

With ``--postgres URL`` the same receiver commits to PostgreSQL instead (asyncpg, every waiting
body in one ``INSERT ... SELECT unnest($1::bytea[])``, up to :data:`PG_FLUSHERS` groups in flight
as the bridge's PostgreSQL store does with its default pool): the yardstick for the bridge on
PostgreSQL, one process or several on one database.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

import asyncpg
import uvloop
from aiohttp import web

Waiting = list[tuple[bytes, asyncio.Future[None]]]


class GroupCommitter:
    """One writer thread; every body that arrived while the last commit ran goes in the next."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: Waiting = []
        self._ready = threading.Condition()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, body BLOB)")
        threading.Thread(target=self._run, name="durable-writer", daemon=True).start()

    async def commit(self, body: bytes) -> None:
        done: asyncio.Future[None] = self._loop.create_future()
        with self._ready:
            self._waiting.append((body, done))
            self._ready.notify()
        await done

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                group, self._waiting = self._waiting, []
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT INTO bodies (body) VALUES (?)", [(b,) for b, _ in group])
            self._conn.execute("COMMIT")
            self._loop.call_soon_threadsafe(_resolve, group)


#: Groups in flight at once on PostgreSQL: the bridge's default (``pool_size`` 10 / 2).
PG_FLUSHERS = 5


class PostgresGroupCommitter:
    """Group commit on PostgreSQL: each flusher takes every body waiting and inserts it at once."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self._url = url
        self._loop = loop
        self._waiting: Waiting = []
        self._arrived = asyncio.Event()
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._url, min_size=PG_FLUSHERS, max_size=PG_FLUSHERS
        )
        async with self._pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bodies (id bigserial PRIMARY KEY, body bytea)"
            )
        for _ in range(PG_FLUSHERS):
            self._loop.create_task(self._flush())

    async def commit(self, body: bytes) -> None:
        done: asyncio.Future[None] = self._loop.create_future()
        self._waiting.append((body, done))
        self._arrived.set()
        await done

    async def _flush(self) -> None:
        assert self._pool is not None
        while True:
            await self._arrived.wait()
            group, self._waiting = self._waiting, []
            self._arrived.clear()
            if not group:
                continue
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO bodies (body) SELECT unnest($1::bytea[])", [b for b, _ in group]
                )
            _resolve(group)


def _resolve(group: Waiting) -> None:
    for _, done in group:
        if not done.done():
            done.set_result(None)


class Committer(Protocol):
    async def commit(self, body: bytes) -> None: ...


COMMITTER = web.AppKey("committer", Committer)


async def receive(request: web.Request) -> web.Response:
    await request.app[COMMITTER].commit(await request.read())
    return web.json_response({"accepted": True})


async def healthz(request: web.Request) -> web.Response:  # noqa: ARG001 - aiohttp's handler signature
    return web.Response(text="ok")


def app(
    path: Path, loop: asyncio.AbstractEventLoop, postgres: str | None = None
) -> web.Application:
    application = web.Application()
    if postgres:
        committer = PostgresGroupCommitter(postgres, loop)
        application[COMMITTER] = committer

        async def started(_: web.Application) -> None:
            await committer.start()

        application.on_startup.append(started)
    else:
        application[COMMITTER] = GroupCommitter(path, loop)
    application.router.add_post("/webhooks/synap/{code}", receive)
    application.router.add_get("/healthz", healthz)
    return application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, help="the SQLite file (without --postgres)")
    parser.add_argument("--postgres", help="commit to this PostgreSQL database instead")
    args = parser.parse_args(argv)
    if not args.postgres and args.db is None:
        parser.error("--db or --postgres is required")
    loop = uvloop.new_event_loop()
    web.run_app(
        app(args.db, loop, args.postgres),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
