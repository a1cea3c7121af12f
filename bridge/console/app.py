"""The console's aiohttp application: its routes, templates, static files and middlewares.

A separate application on a separate listener (see ``listener``): nothing here is reachable
through the webhook port, and nothing of the webhook application (its Basic auth, its JSON
errors) applies here. It shares the bridge's :class:`~bridge.receive.runtime.Runtime` (store,
metrics, delivery) and runs on the same event loop, doing no blocking work of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bridge.console import views
from bridge.console.security import LoginThrottle, Sessions, headers
from bridge.console.traffic import Traffic
from bridge.receive.runtime import Runtime

HERE = Path(__file__).parent


def build_console(runtime: Runtime, traffic: Traffic | None = None) -> web.Application:
    settings = runtime.config.console
    app = web.Application(middlewares=[headers, views.signed_in], client_max_size=256 * 1024)
    app[views.CONSOLE] = views.Console(
        runtime=runtime,
        sessions=Sessions(settings.session_secs),
        throttle=LoginThrottle(settings.login_attempts, settings.login_window_secs),
        traffic=traffic or Traffic(runtime.metrics, runtime.clock),
    )
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    router = app.router
    router.add_get("/login", views.login_form)
    router.add_post("/login", views.login)
    router.add_post("/logout", views.logout)
    router.add_get("/", views.overview)
    router.add_get("/overview/live", views.overview_live)
    router.add_get("/events", views.events)
    router.add_get("/events/{webhook_id}", views.event)
    router.add_get("/dead-letters", views.dead_letters)
    router.add_get("/dead-letters/{letter_id}", views.dead_letter)
    router.add_post("/dead-letters/replay", views.replay)
    router.add_static("/static/", HERE / "static", append_version=False)
    app.cleanup_ctx.append(_sampling)
    return app


async def _sampling(app: web.Application) -> AsyncIterator[None]:
    """The traffic sampler runs as long as the console does."""
    task = asyncio.create_task(app[views.CONSOLE].traffic.run(), name="console-traffic")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
