"""The retry policy: growth to the ceiling, jitter bounds, Retry-After floor, max age."""

from __future__ import annotations

import random

from bridge.config import RetryConfig
from bridge.delivery.retry import RetryPolicy

CONFIG = RetryConfig(initial_backoff_secs=1.0, max_backoff_secs=300.0, max_age_secs=3600.0)


def policy(seed: int = 7) -> RetryPolicy:
    return RetryPolicy.from_config(CONFIG, random.Random(seed))


class NoJitter(random.Random):
    """A random source whose uniform() is always the low end: the bare exponential."""

    def uniform(self, a: float, b: float) -> float:  # noqa: ARG002 - random.Random's signature
        return a


class TestBackoff:
    def test_doubles_up_to_the_ceiling(self) -> None:
        bare = RetryPolicy.from_config(CONFIG, NoJitter())
        waits = [bare.backoff(n) for n in range(1, 15)]
        assert waits[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
        assert waits == sorted(waits)
        assert waits[-1] == 300.0
        assert bare.backoff(1000) == 300.0  # no overflow for absurd counts

    def test_jitter_stays_within_one_initial_backoff(self) -> None:
        p = policy()
        for n in range(1, 12):
            base = min(300.0, 2.0 ** (n - 1))
            samples = [p.backoff(n) for _ in range(200)]
            assert all(base <= s <= min(300.0, base + 1.0) for s in samples)
            if base + 1.0 <= 300.0:
                assert max(samples) - min(samples) > 0.5  # it really jitters

    def test_same_seed_same_waits(self) -> None:
        first, second = policy(42), policy(42)
        assert [first.backoff(n) for n in range(1, 10)] == [second.backoff(n) for n in range(1, 10)]


class TestNextAttempt:
    def test_due_after_the_backoff(self) -> None:
        bare = RetryPolicy.from_config(CONFIG, NoJitter())
        assert bare.delay(3) == 4.0

    def test_retry_after_is_a_floor(self) -> None:
        bare = RetryPolicy.from_config(CONFIG, NoJitter())
        assert bare.delay(1, retry_after=120.0) == 120.0
        # A Retry-After shorter than the backoff does not make us retry sooner.
        assert bare.delay(6, retry_after=2.0) == 32.0

    def test_max_age_gives_up(self) -> None:
        p = policy()
        assert not p.expired(enqueued_at=1000.0, now=1000.0 + 3599.0)
        assert p.expired(enqueued_at=1000.0, now=1000.0 + 3600.0)
        assert p.expired(enqueued_at=0.0, now=1e9)
        assert not p.expired(enqueued_at=1e9, now=1e9)
