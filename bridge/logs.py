"""Logging: structlog to stdout, JSON off a terminal, console on one.

One canonical line per webhook and per batch is the rule (receive and delivery emit them); the
standard library's loggers (aiohttp, segment) are routed through the same renderer so journald
or Docker see one format. Secrets never reach a line: the bridge never passes them to a logger,
and :func:`redact` strips any key that looks like one as a last line of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset({"password", "write_key", "writekey", "authorization", "secret", "token"})


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower().replace("-", "_") in SECRET_KEYS:
            event_dict[key] = "***"
    return event_dict


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog and the stdlib root logger. Safe to call again (e.g. on SIGHUP)."""
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's access log repeats our canonical line; segment's debug log prints whole batches.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("segment").setLevel(max(numeric, logging.WARNING))


def get(name: str) -> Any:
    return structlog.get_logger(name)
