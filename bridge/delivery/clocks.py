"""The delivery's two clocks: monotonic for waits and pauses, a steady epoch clock for the store.

Why: the wall clock can step (NTP after a long suspend, an operator's ``date -s``). Stepped back
one hour during an outage, a pause computed as "wall time + backoff" lasted an hour and more,
and messages handed back "due at wall time + backoff" were not claimable for as long, so
nothing, not even webhooks received after Segment recovered, was delivered for minutes.

The rules (docs/reliability.md, "Clock steps"):

* Pauses and waits are measured on the monotonic clock: a destination paused for 4 s resumes
  4 s later whatever the wall clock does.
* The store keeps due times as epoch seconds (they must survive a restart), so the delivery
  talks to it through :class:`StoreClock`: the wall clock, except that it never steps back.
  After a backward step it carries on from where it was at the monotonic clock's pace, so due
  times already written stay consistent with it; a forward step is followed at once (new
  webhooks are stamped with the stepped wall clock and must fall due). Differences under
  :data:`STEP_TOLERANCE_SECS` (NTP slewing) are not steps: the wall clock is followed.
* After a restart the carried offset is gone, so due times written before a backward step may
  lie far ahead. :meth:`StoreClock.not_before` lets the loop clamp them: a due time further
  ahead than ``retry.max_backoff_secs`` counts as due in ``max_backoff_secs`` (the clock
  advances so that it is), so a step costs at most one longest backoff, never the step itself.

Ages (a batch's gathering age, ``max_age``) are read against the same store clock; after a
backward step of D seconds a message looks up to D seconds older, which can only flush a batch
sooner or end a seven-day ``max_age`` D seconds early.
"""

from __future__ import annotations

from collections.abc import Callable

#: A wall clock behind the carried one by less than this is slewing, not stepping.
STEP_TOLERANCE_SECS = 1.0


class StoreClock:
    """Epoch seconds for the store: the wall clock, carried across backward steps."""

    def __init__(self, wall: Callable[[], float], monotonic: Callable[[], float]) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._last = wall()
        self._last_monotonic = monotonic()

    def __call__(self) -> float:
        wall, mono = self._wall(), self._monotonic()
        carried = self._last + (mono - self._last_monotonic)
        now = wall if wall >= carried - STEP_TOLERANCE_SECS else carried
        self._last, self._last_monotonic = now, mono
        return now

    def not_before(self, moment: float) -> None:
        """From now on, read at least ``moment`` (then advance at the monotonic pace)."""
        if moment > self():
            self._last, self._last_monotonic = moment, self._monotonic()
