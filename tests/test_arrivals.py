"""The arrivals latch on its own: thresholds, counting, tasks that end a wait, close."""

from __future__ import annotations

import asyncio
import time

from bridge.delivery.arrivals import Arrivals


class TestThreshold:
    async def test_every_arrival_fires_by_default(self) -> None:
        latch = Arrivals()
        latch.note()
        assert await latch.wait(5.0) is True
        assert latch.take() == 1

    async def test_fires_only_once_enough_arrived(self) -> None:
        latch = Arrivals()
        latch.restart(3)
        latch.note(2)
        started = time.monotonic()
        assert await latch.wait(0.05) is False  # two of three: the wait runs out
        assert time.monotonic() - started >= 0.05
        latch.note(1)
        assert await latch.wait(5.0) is True
        assert latch.take() == 3

    async def test_want_rechecks_what_was_counted_meanwhile(self) -> None:
        latch = Arrivals()
        latch.restart(10)
        latch.note(4)
        latch.want(4)  # the batch needs only four more: they are already here
        assert await latch.wait(5.0) is True

    async def test_restart_forgets_earlier_firings(self) -> None:
        latch = Arrivals()
        latch.note()
        latch.restart(2)
        assert latch.count == 0
        assert await latch.wait(0.01) is False

    async def test_settle_fires_for_arrivals_still_counted(self) -> None:
        latch = Arrivals()
        latch.restart(5)
        latch.note(1)
        latch.settle()  # back to one: the counted arrival must not be slept on
        assert await latch.wait(5.0) is True

    async def test_a_firing_is_consumed(self) -> None:
        latch = Arrivals()
        latch.poke()
        assert await latch.wait(5.0) is True
        assert await latch.wait(0.01) is False


class TestTasksAndClose:
    async def test_a_finished_task_ends_the_wait(self) -> None:
        latch = Arrivals()
        upload = asyncio.create_task(asyncio.sleep(0))  # done on the loop's next turn
        started = time.monotonic()
        assert await latch.wait(30.0, {upload}) is False
        assert upload.done()
        assert time.monotonic() - started < 10.0

    async def test_an_arrival_ends_a_wait_on_tasks(self) -> None:
        latch = Arrivals()
        stuck = asyncio.create_task(asyncio.Event().wait())  # never finishes by itself
        asyncio.get_running_loop().call_later(0.01, latch.note)
        try:
            assert await latch.wait(30.0, {stuck}) is True
        finally:
            stuck.cancel()

    async def test_close_makes_every_wait_return(self) -> None:
        latch = Arrivals()
        latch.close()
        assert latch.closed
        for _ in range(3):
            assert await latch.wait(30.0) is True
        latch.restart(5)  # a closed latch stays closed
        assert await latch.wait(30.0) is True
