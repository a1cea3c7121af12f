"""run_in_daemon_thread: results and errors reach the awaiting task; the thread never holds
the interpreter's exit."""

from __future__ import annotations

import threading

import pytest

from bridge.delivery.threads import run_in_daemon_thread


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
