"""Start the console beside ``serve``: its own runner and socket, or nothing when it is off.

``serve`` calls :func:`start` once its webhook listener is up and cleans the returned runner up
with its others. The console's URL goes into the log (``console_listening``), so an operator
who ran ``make run`` sees where to point a browser.
"""

from __future__ import annotations

from aiohttp import web

from bridge import logs
from bridge.console.app import build_console
from bridge.receive.runtime import Runtime

log = logs.get(__name__)


async def start(runtime: Runtime) -> web.AppRunner | None:
    """The console's runner, listening; None when ``console`` has no username and password."""
    settings = runtime.config.console
    if not settings.enabled:
        log.info(
            "console_off",
            detail="set console.username and console.password to serve the operator's console",
        )
        return None
    # Idle connections close after 30 s; a page in progress gets 5 s at shutdown.
    runner = web.AppRunner(
        build_console(runtime),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=30.0,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        log.error("console_cannot_listen", host=settings.host, port=settings.port, error=str(exc))
        await runner.cleanup()
        raise
    except BaseException:
        await runner.cleanup()
        raise
    for host, port, *_ in runner.addresses:
        shown = f"[{host}]" if ":" in host else host
        log.info("console_listening", url=f"http://{shown}:{port}/", host=host, port=port)
    return runner
