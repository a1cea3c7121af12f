"""Logging: structlog to stdout, JSON off a terminal, console on one.

One canonical line per webhook and per batch is the rule (receive and delivery emit them); the
standard library's loggers (aiohttp, segment) are routed through the same renderer so journald
or Docker see one format. Secrets never reach a line: the bridge never passes them to a logger,
and :func:`redact` strips any key that looks like one as a last line of defence.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from bridge import personal

SECRET_KEYS = frozenset({"password", "write_key", "writekey", "authorization", "secret", "token"})
#: The level :func:`configure` set last (before any call: everything is on, as in structlog's
#: default configuration). Read by :func:`enabled`.
_level = logging.NOTSET


@functools.lru_cache(maxsize=4096)
def _secret(key: str) -> bool:
    """Whether ``key`` names a secret; memoised, as lines repeat the same few keys (bounded)."""
    return key.lower().replace("-", "_") in SECRET_KEYS


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _secret(key):
            event_dict[key] = "***"
    return event_dict


def _fallback(value: Any) -> Any:
    """What structlog's own JSON renderer does with a value JSON has no type for."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def dumps(event_dict: Any, **_: Any) -> str:
    """One JSON line. orjson renders the per-webhook line several times faster than ``json``;
    whatever orjson refuses (a non-text key, an integer past 64 bits, a lone surrogate) goes
    through ``json`` instead, so no line is ever lost to the renderer."""
    try:
        return orjson.dumps(event_dict, default=_fallback).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(event_dict, default=_fallback)


#: Fields every line of this process carries (``stage`` in a stage process), set once at start.
_PROCESS_FIELDS: dict[str, Any] = {}


def bind_process(**fields: Any) -> None:
    """Add ``fields`` to every line this process writes, from any thread (contextvars do not
    reach the SQLite writer's thread): the mapping process marks its lines ``stage=mapper``."""
    _PROCESS_FIELDS.update(fields)


def _process_fields(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in _PROCESS_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog and the stdlib root logger. Safe to call again (e.g. on SIGHUP)."""
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _process_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        personal.redact_dry_run,
    ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    global _level  # one process-wide setting, as structlog's own configuration
    _level = numeric
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
    # No line shows the caller's file, thread or process: skip their lookup on every record
    # (the logging HOWTO's "Optimization" section); it was ~15% of a webhook line's cost.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's access log repeats our canonical line; segment's debug log prints whole batches.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("segment").setLevel(max(numeric, logging.WARNING))


def enabled(level: int) -> bool:
    """Whether a line at ``level`` (``logging.INFO``...) would be written.

    For the hot path (one canonical line per webhook): a filtered-out ``log.info`` still costs
    a logger lookup (~3.5 µs: ``cache_logger_on_first_use`` is off so that SIGHUP can change
    the level), and building the line's fields costs more; asking first costs a comparison.
    """
    return level >= _level


def get(name: str) -> Any:
    return structlog.get_logger(name)
