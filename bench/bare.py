"""The baseline for intake: a bare aiohttp app that reads the body and answers 200.

Same interpreter, same aiohttp, the same event loop (uvloop, as ``synap-bridge serve`` runs) and
no access log, like the bridge; the difference between the two is exactly what the bridge does
per webhook (auth, parse, map, commit with fsync, metrics).
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web


async def receive(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"accepted": True})


async def healthz(request: web.Request) -> web.Response:  # noqa: ARG001 - aiohttp's handler signature
    return web.Response(text="ok")


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/webhooks/synap/{code}", receive)
    application.router.add_get("/healthz", healthz)
    return application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(
        app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
