"""run_in_daemon_thread: results and errors reach the awaiting task; the thread never holds
the interpreter's exit; workers are reused, a blocked one never delays another call, and idle
ones leave."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from bridge.delivery.threads import DaemonPool, run_in_daemon_thread
from tests.conftest import eventually


class TestDaemonThread:
    async def test_result(self) -> None:
        seen: list[threading.Thread] = []

        def work(a: int, b: int) -> int:
            seen.append(threading.current_thread())
            return a + b

        assert await run_in_daemon_thread("t", work, 2, 3) == 5
        assert seen[0] is not threading.main_thread()
        assert seen[0].daemon
        assert seen[0].name == "t"

    async def test_error_is_raised_in_the_caller(self) -> None:
        def fail() -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await run_in_daemon_thread("t", fail)


class TestPool:
    async def test_a_worker_is_used_again(self) -> None:
        """The worker counts itself idle before the result comes back, so the next call, made
        as soon as the first one's result arrives, always finds it (this raced before)."""

        def who() -> threading.Thread:
            return threading.current_thread()

        first = await run_in_daemon_thread("t-reuse", who)
        for _ in range(200):
            assert await run_in_daemon_thread("t-reuse", who) is first

    async def test_a_blocked_call_does_not_delay_another(self) -> None:
        """A stuck upload holds its worker; the next call gets a new one."""
        gate = threading.Event()
        stuck = run_in_daemon_thread("t-stuck", gate.wait, 30.0)
        try:
            assert await asyncio.wait_for(run_in_daemon_thread("t-stuck", sum, [1, 2]), 5) == 3
            assert not stuck.done()
        finally:
            gate.set()
        assert await stuck is True

    async def test_a_worker_that_cannot_start_leaves_no_call_behind(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Out of threads: the caller gets the error, and its call never runs later (on the
        next worker, after the caller has handed its batch back)."""
        pool = DaemonPool("t-nothread")
        ran: list[str] = []

        def refuse(_: threading.Thread) -> None:
            raise RuntimeError("can't start new thread")

        def call(name: str, hand_back: Callable[[], None]) -> Callable[[], Callable[[], None]]:
            def run() -> Callable[[], None]:
                ran.append(name)
                return hand_back

            return run

        with monkeypatch.context() as patched:
            patched.setattr(threading.Thread, "start", refuse)
            with pytest.raises(RuntimeError, match="can't start"):
                pool.submit(call("refused", lambda: None))
        done = threading.Event()
        pool.submit(call("next", done.set))
        assert await asyncio.to_thread(done.wait, 5)
        assert ran == ["next"]  # FIFO: a call left queued would have run first
        assert pool.workers == 1

    async def test_idle_workers_leave(self) -> None:
        pool = DaemonPool("t-idle", idle_secs=0.05)
        done = threading.Event()
        pool.submit(lambda: done.set)  # the hand-back sets it
        await asyncio.to_thread(done.wait, 5)
        await eventually(lambda: pool.workers == 0, within=5.0)
        again = threading.Event()
        pool.submit(lambda: again.set)  # a pool whose workers left starts a new one
        assert await asyncio.to_thread(again.wait, 5)
