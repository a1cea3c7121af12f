"""Drive an HTTP endpoint with wrk (C, event-driven) and ``post.lua``; read its summary line.

Why wrk: a Python load generator on the same two cores would measure itself. wrk runs with one
thread (``-t1``), which drives 64 connections easily, so the server under test keeps the other
core. Latency is measured by wrk from request written to response read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import orjson

from bench import body
from bench.procs import OUT, REPO

SCRIPT = REPO / "bench" / "post.lua"
TEMPLATE = OUT / "exam.completed.template.json"


@dataclass(frozen=True)
class WrkResult:
    connections: int
    requests: int
    seconds: float
    errors: int  # connect/read/write errors, timeouts and non-2xx/3xx answers
    status_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def acknowledged(self) -> int:
        """Answers that were 2xx/3xx (wrk counts completed requests, errors among them)."""
        return self.requests - self.status_errors

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def available() -> bool:
    return shutil.which("wrk") is not None


def write_template() -> None:
    TEMPLATE.write_text(body.template(), encoding="utf-8")


def parse(output: str, connections: int) -> WrkResult:
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            doc = orjson.loads(line.removeprefix("BENCH_JSON "))
            errors = sum(
                doc[key]
                for key in (
                    "connect_errors",
                    "read_errors",
                    "write_errors",
                    "status_errors",
                    "timeouts",
                )
            )
            return WrkResult(
                connections=connections,
                requests=doc["requests"],
                seconds=doc["duration_us"] / 1e6,
                errors=errors,
                status_errors=doc["status_errors"],
                p50_ms=doc["p50_us"] / 1000,
                p99_ms=doc["p99_us"] / 1000,
                max_ms=doc["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no summary:\n{output}")


def run(url: str, connections: int, seconds: float, tag: str, auth: str | None = None) -> WrkResult:
    """POST fresh exam.completed bodies to ``url`` for ``seconds`` over ``connections``."""
    if not TEMPLATE.exists():
        write_template()
    env = {
        **os.environ,
        "BENCH_TEMPLATE": str(TEMPLATE),
        "BENCH_AUTH": auth or "",
        "BENCH_TAG": tag,
    }
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        url,
    ]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse(done.stdout, connections)
