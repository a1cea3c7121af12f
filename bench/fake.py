"""The strict fake Segment of the tests, plus arrival times, as a process for the benchmarks.

``GET /_arrivals`` answers ``{userId: [first, last, count]}``: wall-clock times (``time.time``,
comparable across processes on one machine) of the first and last accepted message of each
user. The end-to-end latency matches them with the time each webhook was posted (one user per
webhook). Bodies are not kept (``keep_bodies=False``): 100,000+ messages would only cost memory.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import FakeSegment, serve_until_signalled


class TimedFake(FakeSegment):
    def __init__(self, write_key: str, *, port: int = 0) -> None:
        self.arrivals: dict[str, list[float]] = {}
        super().__init__(write_key, port=port, keep_bodies=False)

    def clear(self) -> None:
        super().clear()
        self.arrivals = {}

    def _accept(self, batch: list[dict[str, Any]]) -> None:
        super()._accept(batch)
        now = time.time()
        arrivals = self.arrivals
        for msg in batch:
            user = str(msg.get("userId"))
            seen = arrivals.get(user)
            if seen is None:
                arrivals[user] = [now, now, 1]
            else:
                seen[1] = now
                seen[2] += 1

    def app(self) -> web.Application:
        application = super().app()
        application.router.add_get("/_arrivals", self._arrivals)
        return application

    async def _arrivals(self, request: web.Request) -> web.Response:  # noqa: ARG002 - aiohttp handler
        return web.Response(body=orjson.dumps(self.arrivals), content_type="application/json")


async def _serve(port: int, write_key: str) -> None:
    fake = TimedFake(write_key, port=port)
    await fake.start()
    await serve_until_signalled(fake)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--write-key", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.write_key))


if __name__ == "__main__":
    main()
