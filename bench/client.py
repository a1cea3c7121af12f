"""The drain baseline: segment-analytics-python's own ``Client`` sending the same messages.

Run as its own process (``python -m bench.client``), so it does not share an interpreter with
the fake Segment it sends to. Default settings (one consumer thread, batches of 100, a queue of
10,000) except ``gzip=True`` and ``host``. The messages are built before the clock starts; the
clock runs from the first call to ``flush()`` returning. When the queue is full the Client
drops the message and returns ``False``; we then wait a millisecond and call again (counted),
as a producer that must not lose anything would, so the baseline delivers every message.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from segment.analytics.client import Client

from bench import backlog


def calls(count: int, tag: str) -> list[tuple[str, dict[str, Any]]]:
    """``(method, kwargs)`` for each message of the backlog, as the Client's API takes them."""
    made: list[tuple[str, dict[str, Any]]] = []
    for _, message in backlog.messages(count, tag):
        msg = orjson.loads(message.payload)
        kwargs: dict[str, Any] = {
            "user_id": msg["userId"],
            "context": msg.get("context", {}),
            "timestamp": datetime.fromisoformat(msg["timestamp"].replace("Z", "+00:00")),
            "integrations": msg.get("integrations", {}),
            "message_id": msg["messageId"],
        }
        kind = msg["type"]
        if kind == "track":
            kwargs.update(event=msg["event"], properties=msg.get("properties", {}))
        elif kind == "identify":
            kwargs.update(traits=msg.get("traits", {}))
        elif kind == "group":
            kwargs.update(group_id=msg["groupId"], traits=msg.get("traits", {}))
        else:
            raise ValueError(f"unexpected message type {kind}")
        made.append((kind, kwargs))
    return made


def push(host: str, write_key: str, prepared: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    client = Client(write_key, host=host, gzip=True)
    methods: dict[str, Callable[..., tuple[bool, Any]]] = {
        "track": client.track,
        "identify": client.identify,
        "group": client.group,
    }
    full = 0
    deadline = time.monotonic() + 600
    started = time.perf_counter()
    for kind, kwargs in prepared:
        while not methods[kind](**kwargs)[0]:
            full += 1
            if time.monotonic() > deadline:
                raise RuntimeError("the Client's queue stayed full for 10 minutes")
            time.sleep(0.001)
    client.flush()
    seconds = time.perf_counter() - started
    client.join()
    return {"seconds": seconds, "messages": len(prepared), "queue_full_retries": full}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tag", required=True)
    args = parser.parse_args(argv)
    # One "queue is full" warning per refused call would only measure stderr; we count them.
    logging.getLogger("segment").setLevel(logging.ERROR)
    prepared = calls(args.count, args.tag)
    result = push(args.host, args.write_key, prepared)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
