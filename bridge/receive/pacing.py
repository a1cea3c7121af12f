"""Intake at the mapping's pace while the mapping catches up.

Keep first, judge after answers a burst at the pace of a durable write and maps it after. Under
a load that does not pass, that order only grows the mapping lag: intake's CPU comes from the
same cores as the mapping's, and what is kept faster than it is mapped waits longer and longer
for Segment. So while the mapping stage says it is catching up (its lag passed
``mapper.catch_up_after_secs``: :func:`bridge.mapper.stage.catching_up`), each webhook waits for
a turn before its body is read, and the mapping grants one turn per webhook it maps: intake goes
no faster than the mapping, the lag stops growing, and the CPU intake no longer takes maps.

Bounds: a turn is waited for :data:`MAX_WAIT_SECS` at most, then the webhook is kept anyway, so
a slow mapping slows intake and never stops it (and no answer is ever a refusal for it); a pace
that no report renewed for :data:`STALE_SECS` (a dead or stopped mapper) lapses; turns not
taken pile up to :data:`MAX_TURNS`, so an intake slower than the mapping (a backlog left by an
outage, mapped while Synap sends its usual trickle) never waits.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

#: The longest a webhook waits for its turn; then it is kept anyway.
MAX_WAIT_SECS = 1.0
#: A pace no report renewed for this long lapses (the mapper reports each round it records).
STALE_SECS = 2.0
#: Turns granted and not yet taken, at most (a round of the catch-up pace maps 512).
MAX_TURNS = 1024


class Pacer:
    """Turns for intake, granted by the mapping's reports. One per ``serve`` (event loop)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._renewed: float | None = None
        self._turns = MAX_TURNS
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def engaged(self) -> bool:
        """Whether intake goes at the mapping's pace now."""
        return self._renewed is not None and self._clock() - self._renewed < STALE_SECS

    @property
    def waiting(self) -> int:
        """Webhooks waiting for their turn now."""
        return sum(not waiter.done() for waiter in self._waiting)

    def reported(self, mapped: int, catching_up: bool) -> None:
        """A mapping round's report: ``mapped`` turns granted; the pace on or off."""
        if not catching_up:
            self._renewed = None
            self._turns = MAX_TURNS
            self._grant(len(self._waiting))
            return
        self._renewed = self._clock()
        self._turns = min(MAX_TURNS, self._turns + self._grant(mapped))

    async def turn(self) -> bool:
        """Wait for this webhook's turn while the pace is on; True when it had to wait."""
        if not self.engaged:
            return False
        waiting = self._waiting
        while waiting and waiting[0].done():  # gave up (timed out, or the client left)
            waiting.popleft()
        if self._turns > 0 and not waiting:
            self._turns -= 1
            return False
        waiter = asyncio.get_running_loop().create_future()
        waiting.append(waiter)
        try:
            async with asyncio.timeout(MAX_WAIT_SECS):
                await waiter
        except TimeoutError:
            pass  # kept anyway: the pace slows intake, it never refuses
        finally:
            waiter.cancel()  # a no-op when granted; skipped by _grant when it timed out
        return True

    def _grant(self, turns: int) -> int:
        """Hand up to ``turns`` turns to those waiting, oldest first; the turns left over."""
        while turns > 0 and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                turns -= 1
        return turns
