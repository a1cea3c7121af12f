"""Prometheus metrics: one registry per running bridge (so tests can run several side by side).

Names follow Prometheus conventions: ``synap_bridge_`` prefix, ``_total`` for counters, base
units (``_seconds``, ``_bytes``). The gauges that describe the backlog (pending, oldest pending
age) are refreshed from the store when ``/metrics`` is scraped, so they are never stale; so are
the state gauges (ready, delivery running, intake refusing, destination paused), which are what
``/readyz`` and the delivery loop say at that moment. deploy/grafana and deploy/prometheus query
these names (tests/test_dashboards.py checks each against a real scrape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bridge.store import StoreStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "synap_bridge_webhooks_received",
            "Webhooks received, by Synap event code and outcome.",
            ["code", "outcome"],
            registry=r,
        )
        #: ``webhooks`` children by (code, outcome); bounded because both labels are.
        self._webhook_children: dict[tuple[str, str], Any] = {}
        self.request_seconds = Histogram(
            "synap_bridge_request_duration_seconds",
            "Time from request start to answer, webhook intake only.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.enqueued = Counter(
            "synap_bridge_messages_enqueued", "Segment messages committed to storage.", registry=r
        )
        self.delivered = Counter(
            "synap_bridge_messages_delivered",
            "Segment messages accepted by Segment, by destination.",
            ["destination"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "synap_bridge_dead_letters",
            "Webhooks or messages that became dead letters, by reason.",
            ["reason"],
            registry=r,
        )
        self.attempts = Counter(
            "synap_bridge_delivery_attempts",
            "Batch uploads to Segment, by result class (ok, transient, permanent).",
            ["result"],
            registry=r,
        )
        # Each result's series exists from the start at 0: a series born with its first
        # increment is invisible to increase() and rate(), so the first permanent refusal
        # would never fire SynapBridgeRejectedBySegment (found by tests/test_prometheus_real.py).
        for result in ("ok", "transient", "permanent"):
            self.attempts.labels(result)
        self.batch_messages = Histogram(
            "synap_bridge_batch_size_messages",
            "Messages per batch upload.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_bytes = Histogram(
            "synap_bridge_batch_size_bytes",
            "Bytes per batch upload (JSON, before gzip).",
            buckets=(1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5),
            registry=r,
        )
        self.pending = Gauge(
            "synap_bridge_pending_messages", "Messages waiting for delivery.", registry=r
        )
        self.oldest_pending_age = Gauge(
            "synap_bridge_oldest_pending_age_seconds",
            "Age of the oldest message waiting for delivery (0 when none).",
            registry=r,
        )
        self.connections_open = Gauge(
            "synap_bridge_connections_open",
            "Client connections open now (server.max_connections at most).",
            registry=r,
        )
        self.connections_refused = Counter(
            "synap_bridge_connections_refused",
            "Connections closed at once because server.max_connections were open.",
            registry=r,
        )
        self.dry_run_messages = Gauge(
            "synap_bridge_dry_run_messages",
            "Messages waiting, kept, because their destination has no write key (dry-run).",
            registry=r,
        )
        self.unknown_destination_messages = Gauge(
            "synap_bridge_unknown_destination_messages",
            "Messages waiting for destinations this replica is not configured with (left to "
            "the replicas that are; PostgreSQL only).",
            registry=r,
        )
        self.last_delivery = Gauge(
            "synap_bridge_last_delivery_timestamp_seconds",
            "Unix time of the last batch Segment accepted (0 before the first).",
            registry=r,
        )
        self.retried = Counter(
            "synap_bridge_messages_retried",
            "Messages handed back for a later try after a transient failure, by destination.",
            ["destination"],
            registry=r,
        )
        self.ack_retries = Counter(
            "synap_bridge_ack_retries",
            "Failed attempts to mark a delivered batch delivered (retried until its lease ends), "
            "by destination.",
            ["destination"],
            registry=r,
        )
        self.acks_lost = Counter(
            "synap_bridge_acks_lost",
            "Messages Segment accepted whose ack never landed within the lease: they go out "
            "again (duplicates), by destination.",
            ["destination"],
            registry=r,
        )
        self.pauses = Counter(
            "synap_bridge_destination_pauses",
            "Pauses begun after a transient failure (one per backoff), by destination.",
            ["destination"],
            registry=r,
        )
        self.paused = Gauge(
            "synap_bridge_destination_paused",
            "1 while a destination waits out a backoff (nothing is sent to it), else 0.",
            ["destination"],
            registry=r,
        )
        self.refused = Gauge(
            "synap_bridge_destination_refused",
            "1 while a destination's last answer refused its write key (401/403), else 0.",
            ["destination"],
            registry=r,
        )
        self.ready = Gauge(
            "synap_bridge_ready", "1 when /readyz answers ready, else 0.", registry=r
        )
        self.delivery_running = Gauge(
            "synap_bridge_delivery_running", "1 while the delivery task runs, else 0.", registry=r
        )
        self.mapped = Counter(
            "synap_bridge_webhooks_mapped",
            "Kept webhooks the mapping stage decided, by outcome (mapped, dead_lettered).",
            ["outcome"],
            registry=r,
        )
        self.mapping_failures = Counter(
            "synap_bridge_mapping_failures",
            "Mapping tries that raised or whose mapper died (poison isolation counts them).",
            registry=r,
        )
        self.unmapped = Gauge(
            "synap_bridge_unmapped_webhooks",
            "Webhooks kept and not mapped yet (shared queue on PostgreSQL: aggregate with max).",
            registry=r,
        )
        self.mapping_lag = Gauge(
            "synap_bridge_mapping_lag_seconds",
            "Age of the oldest webhook kept and not mapped yet (0 when none).",
            registry=r,
        )
        self.intake_paced = Counter(
            "synap_bridge_intake_paced",
            "Webhooks that waited for a turn because the mapping was catching up (pace_intake).",
            registry=r,
        )
        self.mapping_yielded = Counter(
            "synap_bridge_mapping_yielded_seconds",
            "Seconds the mapping paused to leave the machine to a busy intake during a burst"
            " (mapper.yield_to_intake).",
            registry=r,
        )
        self.stage_restarts = Counter(
            "synap_bridge_stage_restarts",
            "Stage processes restarted by serve after they died, by stage.",
            ["stage"],
            registry=r,
        )
        # Bounded label sets, exported at 0 from the start (a restart is then an increase).
        self.stage_restarts.labels("mapper")
        for outcome in ("mapped", "dead_lettered"):
            self.mapped.labels(outcome)
        self.intake_refusing = Gauge(
            "synap_bridge_intake_refusing",
            "1 while every webhook is answered 503 (back-pressure or shutdown), else 0.",
            registry=r,
        )

    def webhook_received(self, code: str, outcome: str) -> None:
        """Count one webhook. ``code`` and ``outcome`` must come from bounded sets (the caller
        maps unknown codes to ``unknown``): each pair's child is looked up once and kept, since
        ``labels(code=..., outcome=...)`` validates and hashes its keywords on every call (~3 µs
        of the event loop's time per webhook, against ~0.5 µs for the kept child)."""
        child = self._webhook_children.get((code, outcome))
        if child is None:
            child = self.webhooks.labels(code=code, outcome=outcome)
            self._webhook_children[code, outcome] = child
        child.inc()

    def observe_state(
        self,
        *,
        ready: bool,
        delivering: bool,
        refusing: bool,
        paused: Mapping[str, bool],
        refused: Mapping[str, bool] | None = None,
    ) -> None:
        """The state gauges, set at each scrape. ``paused`` and ``refused`` name the configured
        destinations, so the label sets are bounded by the configuration (a reload's removed
        ones disappear)."""
        self.ready.set(int(ready))
        self.delivery_running.set(int(delivering))
        self.intake_refusing.set(int(refusing))
        self.paused.clear()
        for destination, is_paused in paused.items():
            self.paused.labels(destination).set(int(is_paused))
        self.refused.clear()
        for destination, is_refused in (refused or {}).items():
            self.refused.labels(destination).set(int(is_refused))

    def observe_backlog(self, stats: StoreStats, now: float) -> None:
        # Mapping lag (issue 20): synap_bridge_mapping_lag_seconds is set here from
        # stats.oldest_unmapped_at, like the oldest pending age below; its alert sits beside
        # SynapBridgeBacklogOld and its fault in tests/test_prometheus_real.py.
        self.pending.set(stats.pending + stats.in_flight)
        oldest = stats.oldest_pending_at
        self.oldest_pending_age.set(max(0.0, now - oldest) if oldest is not None else 0.0)
        if stats.last_delivered_at is not None:
            self.last_delivery.set(stats.last_delivered_at)
        self.unmapped.set(stats.unmapped)
        lag = stats.oldest_unmapped_at
        self.mapping_lag.set(max(0.0, now - lag) if lag is not None else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
