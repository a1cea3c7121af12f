"""Where a sustained window goes, second by second.

    python -m bench.timeline --secs 60

Why: ``bench.ab_sustained`` gives one rate per 60 s window, and the same tree reads up to 20 %
apart in windows minutes apart. A window has three phases, each bound by something else:
a burst (intake at the pace of a durable write, the mapping yielding to it), the catch-up
(once the mapping lag passes ``mapper.catch_up_after_secs``: the mapping takes a core, intake
is paced to it) and the steady state (intake and mapping at one rate, a lag under a second).
This runs one ``bench.sustained`` window on this tree and prints, each second, from
``serve``'s ``/metrics``: webhooks accepted, mapped, messages delivered, the mapping lag and
the webhooks unmapped, webhooks paced and the seconds the mapping yielded; and from /proc:
the cores used by ``serve``, its mapping process and the fake Segment, and the machine's idle
cores. Each line is a sample: what a phase costs and which resource it waits for.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench import procs, sustained
from bench.intake_parts import children

#: The counters (per second) and gauges (as they are) a line shows, by their short names.
COUNTERS = {
    "accepted": "synap_bridge_webhooks_received",
    "mapped": "synap_bridge_webhooks_mapped",
    "delivered": "synap_bridge_messages_delivered",
    "paced": "synap_bridge_intake_paced",
    "yielded": "synap_bridge_mapping_yielded_seconds",
}
GAUGES = {"lag": "synap_bridge_mapping_lag_seconds", "unmapped": "synap_bridge_unmapped_webhooks"}


def scrape(url: str) -> dict[str, float]:
    """The samples a line needs from ``/metrics`` (counters summed over their labels; the
    received counter only for accepted webhooks)."""
    with urllib.request.urlopen(url + "/metrics", timeout=2) as answer:  # noqa: S310 - loopback
        text = answer.read().decode()
    wanted = {*COUNTERS.values(), *GAUGES.values()}
    found: dict[str, float] = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket", "_count", "_sum")):
                continue
            if family.name == COUNTERS["accepted"] and sample.labels["outcome"] != "accepted":
                continue
            found[family.name] += sample.value
    return found


def idle_cores() -> float:
    """The machine's idle CPU time so far, in core-seconds (/proc/stat: idle + iowait)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Timeline:
    """Samples taken each second while a window runs (:meth:`watch`); ``lines`` to print."""

    lines: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def watch(self, bridge: procs.Proc, fake: procs.Proc) -> Iterator[None]:
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(bridge, fake, stop), daemon=True)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join(5)

    def _sample(self, bridge: procs.Proc, fake: procs.Proc, stop: threading.Event) -> None:
        started = time.monotonic()
        before: tuple[dict[str, float], dict[str, float]] | None = None
        wait = 0.0  # the first sample at once, then one on each second
        while not stop.wait(wait):
            wait = 1.0 - (time.monotonic() - started) % 1.0
            with contextlib.suppress(OSError, ValueError):  # a scrape that failed: next second
                now = self._now(bridge, fake)
                if before is not None:
                    self.lines.append(_line(time.monotonic() - started, *before, *now))
                before = now

    @staticmethod
    def _now(bridge: procs.Proc, fake: procs.Proc) -> tuple[dict[str, float], dict[str, float]]:
        mappers = children(bridge.pid)
        cpu = {
            "serve": bridge.cpu_seconds(),
            "mapper": sum(procs.cpu_seconds(pid) for pid in mappers),
            "fake": fake.cpu_seconds(),
            "idle": idle_cores(),
            "at": time.monotonic(),
        }
        return scrape(bridge.url), cpu


def _line(
    at: float,
    before: dict[str, float],
    cpu_before: dict[str, float],
    after: dict[str, float],
    cpu_after: dict[str, float],
) -> str:
    secs = max(cpu_after["at"] - cpu_before["at"], 1e-6)
    rates = {short: (after[name] - before[name]) / secs for short, name in COUNTERS.items()}
    cores = {
        key: (cpu_after[key] - cpu_before[key]) / secs
        for key in ("serve", "mapper", "fake", "idle")
    }
    return (
        f"{at:5.0f} s  accepted {rates['accepted']:6,.0f}/s  mapped {rates['mapped']:6,.0f}/s  "
        f"delivered {rates['delivered']:6,.0f}/s  lag {after[GAUGES['lag']]:5.1f} s  "
        f"unmapped {after[GAUGES['unmapped']]:7,.0f}  paced {rates['paced']:5,.0f}/s  "
        f"yielded {rates['yielded']:4.2f}  cores: serve {cores['serve']:.2f} "
        f"mapper {cores['mapper']:.2f} fake {cores['fake']:.2f} idle {cores['idle']:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--secs", type=float, default=60.0)
    args = parser.parse_args(argv)
    procs.OUT.mkdir(parents=True, exist_ok=True)
    timeline = Timeline()
    result = sustained.run(args.secs, name="timeline", watch=timeline.watch)
    print("\n".join(timeline.lines))
    print(
        f"window: delivered {result.delivered_rate:,.0f}/s, acknowledged "
        f"{result.intake.rate:,.0f}/s, backlog {result.backlog_at_end:,}, "
        f"caught up {result.catch_up_secs:.1f} s after"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
