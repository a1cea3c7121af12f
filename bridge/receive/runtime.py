"""The state one running bridge shares between its handlers and background tasks.

Handlers reach it as ``request.app[RUNTIME]``. ``config`` is replaced whole on SIGHUP (mapping,
routing, log level), so a request in flight keeps the configuration it started with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from bridge.config import Config
from bridge.metrics import Metrics
from bridge.receive.pacing import Pacer
from bridge.receive.throttle import Throttle
from bridge.store import Store

if TYPE_CHECKING:
    from bridge.delivery.loop import Delivery
    from bridge.mapper.stage import MappingStage
    from bridge.mapper.supervisor import MapperSupervisor


#: Webhooks being received at once from which intake counts as busy: the mapping stage then
#: leaves part of the machine to it during a burst (bridge.mapper.stage.yield_secs). A steady
#: rate answered in a few milliseconds keeps a handful in flight; 64 clients at full speed
#: keep ~50.
BUSY_IN_FLIGHT = 16


@dataclass
class Runtime:
    config: Config
    store: Store
    metrics: Metrics
    clock: Callable[[], float]
    delivery: Delivery | None = None
    delivery_task: asyncio.Task[None] | None = None
    #: Why intake refuses right now (back-pressure), refreshed by the watcher; None = accepting.
    backpressure: str | None = None
    stopping: bool = False
    #: Monotonic time by which shutdown must be done (set by serve on SIGTERM): the requests in
    #: flight and the delivery's batch share one ``shutdown.grace_secs``, not one each.
    shutdown_deadline: float | None = None
    #: Why the last write (the periodic probe or a webhook's commit) failed; None: it worked.
    #: What /readyz reports, without a query of its own.
    storage_problem: str | None = None
    #: Keeps refusal lines (401, 404, 405, refused connections) to one a second per kind.
    throttle: Throttle = field(default_factory=Throttle)
    #: Intake's turns while the mapping catches up (``mapper.pace_intake``).
    pacer: Pacer = field(default_factory=Pacer)
    #: Webhook requests being handled now (authenticated or not), for :data:`BUSY_IN_FLIGHT`.
    webhooks_in_flight: int = 0

    def refusal(self) -> str | None:
        if self.stopping:
            return "the bridge is shutting down"
        return self.backpressure

    def grace_left(self) -> float:
        """What remains of the shutdown grace (the whole grace when no deadline is set)."""
        if self.shutdown_deadline is None:
            return self.config.shutdown.grace_secs
        return max(0.0, self.shutdown_deadline - time.monotonic())

    @property
    def delivering(self) -> bool:
        return self.delivery_task is not None and not self.delivery_task.done()

    #: Wakes the mapping stage after a commit (in process, or a byte down the child's pipe),
    #: saying whether intake is busy.
    mapping_waker: Callable[[bool], None] | None = None
    #: The mapping stage when it runs in this process (tests wait on it), or the supervisor of
    #: its child process.
    mapping: MappingStage | None = None
    supervisor: MapperSupervisor | None = None
    _tag_of: Config | None = field(default=None, repr=False)
    _tag: str = field(default="", repr=False)

    def stages_healthy(self) -> bool:
        """What the systemd watchdog vouches for: the event loop (it runs this) and the
        mapping child, which must have been heard from recently."""
        return self.supervisor is None or self.supervisor.healthy()

    def mapping_tag(self) -> str:
        """``config.mapping_tag``, worked out once per configuration (a reload replaces it)."""
        if self._tag_of is not self.config:
            self._tag_of, self._tag = self.config, self.config.mapping_tag
        return self._tag

    def wake_mapping(self) -> None:
        if self.mapping_waker is not None:
            self.mapping_waker(self.webhooks_in_flight >= BUSY_IN_FLIGHT)

    def wake_delivery(self, arrived: int) -> None:
        if self.delivery is not None:
            self.delivery.wake(arrived)


RUNTIME = web.AppKey("runtime", Runtime)
