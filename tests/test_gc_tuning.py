"""``serve`` collects the youngest generation less often, and leaves the older ones alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bridge.serve import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)


def test_only_the_youngest_threshold_is_raised(thresholds: tuple[int, int, int]) -> None:
    tune_gc()
    young, older, oldest = gc.get_threshold()
    assert young == GC_YOUNG_THRESHOLD > thresholds[0]
    assert (older, oldest) == thresholds[1:]
    assert gc.isenabled()
