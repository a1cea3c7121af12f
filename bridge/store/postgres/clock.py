"""The database's clock for every time a replica gives the PostgreSQL store.

Why: hold and due times were each replica's own. With a replica 30 s behind, an exam attempt's
``attempt.*`` message, held for ``mapping.exam_hold_secs`` so the ``exam.*`` version can replace
it, was due at once for the others (0 of 4 tracks kept their exam details; 4 of 4 without the
skew); a replica ahead claimed held messages early. The docs' clock rule allows 30 s between
replicas, so the store cannot trust any one of them.

So the store measures how far this process's wall clock is from the database server's
(``clock_timestamp()``, the midpoint of the round trip; at open and with every readiness probe,
once a second under ``serve``) and moves every time it is given into the database's frame
(receipt, ``now``, due times) and every time it returns back into the caller's. All replicas
then hold, lease and schedule on one clock. Under :data:`DEAD_BAND` the difference is taken as
none: NTP keeps hosts far closer, and measuring cannot do better than half a round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Differences smaller than this are measuring noise, not a skewed clock.
DEAD_BAND = 1.0


class DatabaseClock:
    """``skew``: the database's clock minus this process's wall clock (0 until measured)."""

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self.skew = 0.0
        self._local = local  # the wall clock this process stamps with (tests shift it)

    async def measure(self, conn: Any) -> float:
        before = self._local()
        server = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
        after = self._local()
        skew = server - (before + after) / 2
        self.skew = skew if abs(skew) >= DEAD_BAND else 0.0
        return self.skew

    def to_db(self, moment: float) -> float:
        return moment + self.skew

    def to_local(self, moment: float | None) -> float | None:
        return None if moment is None else moment - self.skew
