"""The retry policy, declared with tenacity's strategy objects and evaluated without sleeping.

tenacity normally drives a loop that sleeps; the bridge cannot hold a batch in memory for hours,
so it only borrows tenacity's *policies*: a ``wait`` strategy (exponential backoff plus jitter)
and a ``stop`` strategy (``stop_after_delay(max_age)``), both evaluated on a hand-made
``RetryCallState`` whose clock is the bridge's. The answer is a time (``due_at``) that the store
keeps, so a retry survives a restart.

The rules, for a delivery that just failed for the n-th time in a row:

* wait ``min(max_backoff, initial * 2**(n-1) + uniform(0, initial))``: doubling from
  ``retry.initial_backoff_secs`` up to ``retry.max_backoff_secs``, with up to one initial
  backoff of jitter so that restarted bridges do not retry in lockstep;
* never sooner than the server's ``Retry-After`` (Segment sends it with 429);
* a message whose age since enqueue has reached ``retry.max_age_secs`` is not retried: it
  becomes a dead letter ``max_age_exceeded`` (``expired`` says so).

The random source is injected (``random.Random(seed)`` in tests), so jitter is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from bridge.config import RetryConfig


class wait_uniform(wait_base):  # lower case like tenacity's own strategies
    """``uniform(low, high)`` from an injected random source (tenacity's uses the global one)."""

    def __init__(self, low: float, high: float, rng: random.Random) -> None:
        self.low = low
        self.high = high
        self.rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:  # noqa: ARG002 - tenacity's wait signature
        return self.rng.uniform(self.low, self.high)


class wait_capped(wait_base):
    """Another strategy's wait, never above ``ceiling`` (the sum of backoff and jitter may be)."""

    def __init__(self, inner: wait_base, ceiling: float) -> None:
        self.inner = inner
        self.ceiling = ceiling

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return min(self.ceiling, self.inner(retry_state))


_NO_RETRYING = tenacity.Retrying()


def _state(attempt_number: int, started_at: float, now: float) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(_NO_RETRYING, None, (), {})
    state.attempt_number = max(1, attempt_number)
    state.start_time = started_at
    state.outcome_timestamp = now
    return state


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a transient failure, and when to give up."""

    wait: wait_base
    stop: stop_base
    max_backoff_secs: float
    max_age_secs: float
    rng: random.Random = field(repr=False, compare=False, default_factory=random.Random)

    @classmethod
    def from_config(cls, config: RetryConfig, rng: random.Random | None = None) -> RetryPolicy:
        rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not a secret
        backoff = tenacity.wait_exponential(
            multiplier=config.initial_backoff_secs, max=config.max_backoff_secs
        )
        jitter = wait_uniform(0.0, config.initial_backoff_secs, rng)
        return cls(
            wait=wait_capped(backoff + jitter, config.max_backoff_secs),
            stop=tenacity.stop_after_delay(config.max_age_secs),
            max_backoff_secs=config.max_backoff_secs,
            max_age_secs=config.max_age_secs,
            rng=rng,
        )

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 = the first)."""
        return float(self.wait(_state(failures, 0.0, 0.0)))

    def expired(self, enqueued_at: float, now: float) -> bool:
        """True when a message this old must not be retried again (dead letter)."""
        return bool(self.stop(_state(1, enqueued_at, now)))

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The backoff for the ``failures``-th failure, but never less than ``retry_after``."""
        delay = self.backoff(failures)
        return delay if retry_after is None else max(delay, retry_after)
