"""aiohttp's own lines about requests it could not parse: throttled, and without their text.

Why: a bad header token, a bad HTTP version, a bad chunk size or a line over 8,190 bytes made
aiohttp log ``Error handling request`` at ERROR with the parser's message, 300-400 bytes per
request and unthrottled (~700 KB for 2,000 requests in under a second). That message quotes the
offending bytes: ``Authorization : Basic ...`` (a space before the colon is a bad header token)
put the base64 credentials in the log.

So a filter on the ``aiohttp.server`` logger takes those records (an
:class:`~aiohttp.http_exceptions.HttpProcessingError`: what the client sent, never our bug) and
writes one info line ``bad_request`` instead, naming the error's class, its status and the
client, never its text; at most one a second per kind, with the count left out
(:class:`~bridge.receive.throttle.Throttle`). Every other aiohttp error line passes unchanged.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

from bridge import logs
from bridge.receive.throttle import Throttle

log = logs.get("bridge.receive")
AIOHTTP_SERVER = "aiohttp.server"


class MalformedRequests(logging.Filter):
    def __init__(self, throttle: Throttle | None = None) -> None:
        super().__init__()
        self.throttle = throttle or Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        kind = type(exc).__name__
        suppressed = self.throttle.allow(kind)
        if suppressed is not None:
            client = record.args[0] if isinstance(record.args, tuple) and record.args else None
            log.info(
                "bad_request",
                error=kind,
                status=exc.code,
                client=str(client) if client is not None else None,
                suppressed=suppressed,
            )
        return False


def install() -> None:
    """Once per process (later calls change nothing)."""
    logger = logging.getLogger(AIOHTTP_SERVER)
    if not any(isinstance(f, MalformedRequests) for f in logger.filters):
        logger.addFilter(MalformedRequests())
