"""The second intake baseline: the minimal durable receiver.

aiohttp reads the body, puts it on a list with a future, and answers only once one writer thread
has committed every waiting body in one SQLite transaction (WAL, ``synchronous=FULL``): the
cheapest design that still keeps the bridge's promise (no 2xx before the commit). Same
interpreter, same aiohttp, the same uvloop and no access log, like the bridge. The bridge divided
by this is our own overhead; this divided by bare aiohttp is the price of durability itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import threading
from pathlib import Path

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


def _resolve(group: Waiting) -> None:
    for _, done in group:
        if not done.done():
            done.set_result(None)


COMMITTER = web.AppKey("committer", GroupCommitter)


async def receive(request: web.Request) -> web.Response:
    await request.app[COMMITTER].commit(await request.read())
    return web.json_response({"accepted": True})


async def healthz(request: web.Request) -> web.Response:  # noqa: ARG001 - aiohttp's handler signature
    return web.Response(text="ok")


def app(path: Path, loop: asyncio.AbstractEventLoop) -> web.Application:
    application = web.Application()
    application[COMMITTER] = GroupCommitter(path, loop)
    application.router.add_post("/webhooks/synap/{code}", receive)
    application.router.add_get("/healthz", healthz)
    return application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args(argv)
    loop = uvloop.new_event_loop()
    web.run_app(
        app(args.db, loop),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
