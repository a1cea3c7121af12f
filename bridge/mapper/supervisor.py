"""``serve``'s side of the mapping process: start it, wake it, hear it, restart it, stop it.

One ``serve`` is one service: the supervisor runs inside the ``serve`` process (intake and
delivery) and keeps one mapping child (:mod:`bridge.mapper.child`) alive:

- wake-ups: after a commit the receiver calls :meth:`wake`; at most one byte per
  :data:`WAKE_INTERVAL_SECS` goes down the child's stdin, however many webhooks were kept
  meanwhile (a write per commit cost ~3 % of intake's CPU under load, and a mapper that is
  mapping needs no wake-up: it takes the next batch as soon as it has recorded one);
- reports: each round the child recorded comes back as a JSON line; the supervisor counts it in
  the metrics (the child has no ``/metrics`` of its own) and wakes delivery for the new messages;
- death: a child that exits while serving is restarted after a backoff (0.5 s doubling to
  :data:`MAX_BACKOFF_SECS`), counted in ``synap_bridge_stage_restarts_total{stage="mapper"}``
  and logged with its exit status; intake goes on meanwhile (webhooks are kept unmapped, the
  mapping lag shows it). Deciding to restart here rather than exit for systemd keeps intake up
  through a mapper crash loop (a poison webhook is dead-lettered after ``mapper.max_tries``);
- health: :meth:`healthy` is False when the child has not said it is alive within
  :data:`STALE_SECS` (stuck, not dead): the systemd watchdog then stops being pinged;
- stop: SIGTERM to the child, which maps what was kept and exits; SIGKILL past the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

import orjson

from bridge import logs
from bridge.mapper.child import WAKE, WAKE_BUSY
from bridge.mapper.stage import Report

log = logs.get(__name__)

MAX_BACKOFF_SECS = 10.0
FIRST_BACKOFF_SECS = 0.5
#: A child that ran this long before dying restarts at the first backoff again.
STABLE_SECS = 30.0
#: No heartbeat for this long: the child is stuck (its heartbeat comes every second).
STALE_SECS = 15.0
#: At most one wake-up byte this often.
WAKE_INTERVAL_SECS = 0.002


class MapperSupervisor:
    """Keeps the mapping child running while ``serve`` serves."""

    def __init__(
        self,
        config_path: str | None,
        on_report: Callable[[Report], None],
        on_restart: Callable[[], None],
        *,
        stale_secs: float = STALE_SECS,
        nice: int = 0,
    ) -> None:
        self._config_path = config_path
        self._nice = nice
        self._stale_secs = stale_secs
        self._on_report = on_report
        self._on_restart = on_restart
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake_scheduled = False
        self._wake_busy = False
        self._last_wake = 0.0
        self._stopping = False
        self._last_alive = time.monotonic()
        self._ready = asyncio.Event()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, ready_within: float) -> None:
        """Start the child and wait (bounded) until its store is open."""
        self._task = asyncio.create_task(self._keep_running(), name="mapper-supervisor")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ready_within):
                await self._ready.wait()

    def wake(self, intake_busy: bool = False) -> None:
        """One byte down the child's stdin, at most every ``WAKE_INTERVAL_SECS``: ``b`` when
        any webhook kept since the last byte was kept while intake was busy, else ``w``."""
        self._wake_busy = self._wake_busy or intake_busy
        if self._wake_scheduled:
            return
        self._wake_scheduled = True
        wait = self._last_wake + WAKE_INTERVAL_SECS - time.monotonic()
        loop = asyncio.get_running_loop()
        if wait > 0:
            loop.call_later(wait, self._send_wake)
        else:
            loop.call_soon(self._send_wake)

    def healthy(self) -> bool:
        """Alive and heard from recently, or being restarted (a crash is not a hang)."""
        return time.monotonic() - self._last_alive < self._stale_secs

    def signal(self, signum: int) -> None:
        """Pass a signal on (SIGHUP: the child reloads its mapping configuration)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def stop(self, grace_secs: float) -> None:
        """SIGTERM: the child maps what was kept and exits; SIGKILL past ``grace_secs``."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_secs):
                    await process.wait()
            except TimeoutError:
                log.error("mapper_killed", detail=f"still mapping after {grace_secs} s")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _send_wake(self) -> None:
        self._wake_scheduled = False
        self._last_wake = time.monotonic()
        byte, self._wake_busy = (WAKE_BUSY if self._wake_busy else WAKE), False
        process = self._process
        if process is None or process.stdin is None or process.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            process.stdin.write(byte)

    async def _keep_running(self) -> None:
        backoff = FIRST_BACKOFF_SECS
        while not self._stopping:
            started = time.monotonic()
            status = await self._run_once()
            if self._stopping:
                return
            ran = time.monotonic() - started
            if ran >= STABLE_SECS:
                backoff = FIRST_BACKOFF_SECS
            self.restarts += 1
            self._on_restart()
            log.error(
                "stage_died",
                stage="mapper",
                exit_status=status,
                ran_secs=round(ran, 1),
                restart_in_secs=backoff,
            )
            self._last_alive = time.monotonic() + backoff  # restarting is not hanging
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_SECS, backoff * 2)

    async def _run_once(self) -> int | None:
        command = [sys.executable, "-m", "bridge.mapper.child", "--parent", str(os.getpid())]
        if self._nice:
            command += ["--nice", str(self._nice)]
        if self._config_path is not None:
            command += ["--config", self._config_path]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            log.error("stage_not_started", stage="mapper", error=str(exc))
            return None
        self._process = process
        self._last_alive = time.monotonic()
        log.info("stage_started", stage="mapper", pid=process.pid)
        self.wake()  # whatever was kept while it was down
        assert process.stdout is not None
        try:
            async for line in process.stdout:
                self._heard(line)
        finally:
            status = await process.wait()
        return status

    def _heard(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        self._last_alive = time.monotonic()
        if not isinstance(message, dict):
            return
        if message.get("ready"):
            self._ready.set()
        report = message.get("report")
        if isinstance(report, dict):
            self._on_report(Report.from_dict(report))
