"""The exam tests the mapping is given (bridge.mapping.exam_tests): the store's rows, cached.

The cache is what a webhook's mapping reads, so an ``exam.*`` webhook's tests are known to the
very next ``attempt.*`` webhook the stage maps (added as soon as it is judged, before the
round's record); the store keeps them across restarts and shares them between replicas, re-read
every :data:`REFRESH_SECS`. Storing them is best effort: a failure is logged and the next
``exam.*`` webhook of the test teaches it again.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

from bridge import logs
from bridge.errors import StorageUnavailableError
from bridge.mapping.exam_tests import ExamTest
from bridge.store import MappingStore

log = logs.get(__name__)
#: How often the rows other replicas added are read again.
REFRESH_SECS = 30.0


@dataclass
class ExamTestCache:
    known: set[ExamTest] = field(default_factory=set)
    #: Monotonic time of the last read of the store; None: never read.
    read_at: float | None = None

    async def current(self, store: MappingStore) -> set[ExamTest]:
        now = time.monotonic()
        if self.read_at is None or now - self.read_at >= REFRESH_SECS:
            try:
                self.known |= await store.known_exam_tests()
                self.read_at = now
            except StorageUnavailableError as exc:
                log.warning("exam_tests_unreadable", detail=str(exc)[:300])
        return self.known

    def add(self, tests: Collection[ExamTest]) -> list[ExamTest]:
        """Known from now on (the next webhook's mapping sees them); those that were new."""
        fresh = [test for test in tests if test not in self.known]
        self.known.update(fresh)
        return fresh

    async def store(self, store: MappingStore, tests: Collection[ExamTest], at: float) -> None:
        if not tests:
            return
        try:
            await store.learn_exam_tests(tests, at)
        except StorageUnavailableError as exc:
            log.warning("exam_tests_not_stored", detail=str(exc)[:300])
