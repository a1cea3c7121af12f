"""The mapping stage as a process of its own: ``python -m bridge.mapper.child --config PATH``.

``serve`` starts it (:mod:`bridge.mapper.supervisor`) so that mapping runs on another core than
intake: the GIL is per process. It loads the same configuration (file and environment) as its
parent, opens the same store, and talks to the parent over its standard streams:

- stdin: one byte per wake-up (webhooks were kept): ``b`` while intake is busy, else ``w``
  (:func:`bridge.mapper.stage.yield_secs`); end of file: the parent is gone, stop;
- stdout: JSON lines, ``{"ready": true}`` once the store is open, ``{"report": {...}}`` after
  each round that recorded something (the parent counts metrics and wakes delivery), and
  ``{"alive": true}`` every :data:`HEARTBEAT_SECS` (the parent's systemd watchdog covers it);
- stderr: its log lines, with ``stage=mapper``, as the parent's.

``--nice N`` (``mapper.nice``, from ``serve``) applies before anything else is imported, so the
child's start (half a second of imports) already yields to intake and delivery; the modules that
need the configuration are therefore imported in :func:`run`, not at the top.

SIGTERM: finish the round, map what is left within ``shutdown.grace_secs``, exit 0. SIGHUP:
reload the configuration (the mapping applies to the next webhook). The kernel sends SIGKILL if
the parent dies (``PR_SET_PDEATHSIG``), so a mapper never outlives its ``serve``. ``ps``
shows it as ``bridge-mapper`` (``PR_SET_NAME``) with this module in its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.config import Config
    from bridge.mapper.stage import MappingStage

HEARTBEAT_SECS = 1.0
#: The wake-up bytes on stdin: webhooks were kept, while intake was busy or not.
WAKE, WAKE_BUSY = b"w", b"b"
PROCESS_NAME = b"bridge-mapper"
#: The GIL switch interval of the mapping process (Python's default: 5 ms). Catching up, the
#: main thread maps (CPU, holding the GIL) while the writer thread records the part before;
#: each of the writer's statements gives the GIL up and asks for it back, and at 5 ms a
#: record of 512 waited ~5 s in 65 s of full load for its own thread's turns (docs/benchmarks.md).
SWITCH_INTERVAL_SECS = 0.0005
#: The collector's young generation in the mapping process, in objects (Python's default: 700).
#: Mapping reads each body into a few hundred dicts and lists that their last reference frees,
#: so at 700 the collector ran every ~3 webhooks, and its fuller passes walked the take in hand.
GC_YOUNG_OBJECTS = 10_000
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _linux_process_settings(parent: int | None) -> None:
    """Die with the parent, and be named in ``ps -o comm`` / ``top``. Linux only; elsewhere
    nothing happens (the stdin end-of-file still stops the stage). ``parent``: the pid of the
    ``serve`` that started us (in a container it is pid 1, so "reparented to init" cannot be
    told from the parent's pid alone)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)  # the C library is already loaded
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(PROCESS_NAME), 0, 0, 0)
    if parent is not None and os.getppid() != parent:  # it died before the first prctl
        os._exit(1)


def _emit(message: dict[str, Any]) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


async def run(config_path: str | None) -> int:
    from bridge import config as config_module
    from bridge import logs
    from bridge.errors import StorageUnavailableError
    from bridge.mapper.stage import MappingStage
    from bridge.store.factory import open_store

    log = logs.get(__name__)
    config = config_module.load(config_path, os.environ)
    logs.configure(config.logging.level, config.logging.format, stream=sys.stderr)
    logs.bind_process(stage="mapper")
    current: list[Config] = [config]
    store = open_store(config.storage, create=False)
    try:
        await store.open()
    except StorageUnavailableError as exc:
        log.error("storage_unavailable", error=str(exc))
        return 1
    stage = MappingStage.configured(
        store,
        lambda: current[0],
        on_report=lambda report: _emit({"report": report.as_dict()}),
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, current, config_path)
    await _read_wakes(stage, stop)
    listen = getattr(store, "listen", None)
    if listen is not None:
        await listen(stage.wake)
    _collector()
    _emit({"ready": True})
    runner = asyncio.create_task(stage.run(), name="mapping")
    beat = asyncio.create_task(_heartbeat(), name="heartbeat")
    try:
        await stop.wait()
    finally:
        beat.cancel()
        await stage.stop(time.monotonic() + current[0].shutdown.grace_secs)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        left = await stage.drain(time.monotonic() + current[0].shutdown.grace_secs)
        log.info("mapper_stopped", rounds_at_stop=left)
        await store.close()
    return 0


async def _read_wakes(stage: MappingStage, stop: asyncio.Event) -> None:
    """Each chunk read from stdin is one wake-up; end of file stops the stage."""

    class Wakes(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            stage.wake(intake_busy=WAKE_BUSY in data)

        def eof_received(self) -> bool:
            stop.set()
            return False

        def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
            stop.set()

    await asyncio.get_running_loop().connect_read_pipe(Wakes, sys.stdin)


async def _heartbeat() -> None:
    while True:
        _emit({"alive": True})
        await asyncio.sleep(HEARTBEAT_SECS)


def _reload(current: list[Config], config_path: str | None) -> None:
    from bridge import config as config_module
    from bridge import logs
    from bridge.errors import ConfigError

    log = logs.get(__name__)
    try:
        fresh = config_module.load(config_path, os.environ)
    except ConfigError as exc:
        log.error("reload_refused", problems=exc.problems)
        return
    current[0] = current[0].model_copy(update={"mapping": fresh.mapping, "routing": fresh.routing})
    log.info("reloaded", sections=["mapping", "routing"])


def _collector() -> None:
    """Fewer passes of Python's cycle collector in the mapping process: what start-up loaded
    (modules, configuration, the open store) is collected once and frozen, never walked again,
    and a pass waits for :data:`GC_YOUNG_OBJECTS` new objects. Measured on 30,000 webhooks
    mapped at the catch-up pace, 3 runs each: 211-213 passes took 127-140 ms (4.2-4.7 µs a
    webhook, ~3.5 % of the mapping thread), then one took 1-2 ms; 5,017-5,354 -> 5,444-5,723
    webhooks/s (docs/benchmarks.md). What the mapping builds goes with its last reference (no
    cycles), so the longer wait between passes keeps no more memory."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_OBJECTS, older, oldest)


def _scheduling(nice: int) -> None:
    """Intake first when both want the CPU (``mapper.nice``); within the process, the writer
    thread gets the GIL back soon while the event loop maps (:data:`SWITCH_INTERVAL_SECS`)."""
    if nice:
        os.nice(nice)
    sys.setswitchinterval(SWITCH_INTERVAL_SECS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridge-mapper")
    parser.add_argument("--config")
    parser.add_argument("--parent", type=int, help="the pid of the serve that starts this")
    parser.add_argument("--nice", type=int, default=0, help="niceness to add (mapper.nice)")
    args = parser.parse_args(argv)
    _linux_process_settings(args.parent)
    _scheduling(args.nice)
    from bridge.cli.command import run_event_loop

    return run_event_loop(run(args.config))


if __name__ == "__main__":
    sys.exit(main())
