"""At most one log line per kind and interval, so that what a client sends cannot become volume.

A refusal (401, 404, 405, a refused connection) should leave a trace, but an unauthenticated
client can send thousands a second: the first line of a kind is written, the next ones within
``interval`` seconds are counted, and the next line written says how many were left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Kinds are short fixed slugs; the bound only guards against a caller that forgets it.
MAX_KINDS = 64


class Throttle:
    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None: leave this line out. Otherwise write it, with the count left out before it."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        if last is None and len(self._last) >= MAX_KINDS:
            self._last.clear()
            self._held.clear()
        self._last[kind] = now
        return self._held.pop(kind, 0)
