"""A real Prometheus (Debian's ``prometheus``, the server of the package that brings promtool)
for the tests: started on loopback with a generated configuration that scrapes real ``serve``
processes every second and evaluates ``deploy/prometheus/alerts.yml`` every second.

The rules are the shipped file with its durations scaled from minutes to seconds (a
``for: 5m`` becomes ``for: 5s``, a ``[15m]`` window ``[15s]``, and the age thresholds in
seconds, 900, 1800 and 60, become 15, 30 and 1): the expressions, the metric names and the
labels are the real ones; only the clock runs sixty times faster, so one fault takes seconds.
A rule the scaling does not recognise fails the test (see :func:`scaled_rules`), so the file
and the test cannot drift apart silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import polled
from tests.pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
JOB = "synap-bridge"
#: Thresholds in seconds inside the expressions, scaled like the durations (minutes -> seconds).
AGE_THRESHOLDS = {"> 900": "> 15", "> 1800": "> 30", "> 60": "> 1"}


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail(
            "prometheus is not installed: run `make monitoring-deps` (as root: apt-get install -y "
            "--no-install-recommends prometheus)",
            pytrace=False,
        )
    return found


def scaled_rules(text: str) -> str:
    """alerts.yml with every duration in minutes read as seconds (see the module docstring)."""
    for before, after in AGE_THRESHOLDS.items():
        if text.count(before) != 1:
            pytest.fail(f"alerts.yml: expected {before!r} once (the test scales it to {after!r})")
        text = text.replace(before, after)
    text = re.sub(r"(\bfor:\s*)(\d+)m\b", r"\1\2s", text)
    text = re.sub(r"\[(\d+)m\]", r"[\1s]", text)
    text = re.sub(r"(\boffset\s+)(\d+)m\b", r"\1\2s", text)
    left = re.findall(r"\bfor:\s*\d+[hd]\b|\[\d+[hd]\]|\boffset\s+\d+[mhd]\b", text)
    if left:
        pytest.fail(f"alerts.yml: durations the test does not scale: {left}")
    return text


class Prometheus:
    """One throwaway Prometheus; ``targets`` are ``host:port`` of bridges serving ``/metrics``."""

    def __init__(self, targets: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bridge-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        (self.root / "alerts.yml").write_text(scaled_rules(ALERTS.read_text()), encoding="utf-8")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "scrape_timeout": "900ms",
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        path = self.root / "prometheus.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    async def start(self) -> None:
        config = self.write_config()
        with (self.root / "out.log").open("wb") as out:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; waited below
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/-/ready") as response:
                        return response.status == 200
                return False

            await polled(ready, within=30)

    async def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}?{query}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            doc = json.loads(await response.text())
        if doc.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {doc}")
        return doc["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def firing(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = (await self.api("alerts"))["alerts"]
        return [alert for alert in alerts if alert["state"] == "firing"]

    async def wait_firing(self, name: str, within: float, **labels: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        async def fires() -> bool:
            found[:] = [a for a in await self.firing() if _matches(a, name, labels)]
            return bool(found)

        try:
            await polled(fires, within=within)
        except TimeoutError:
            raise AssertionError(f"{name} {labels} did not fire: {await self.firing()}") from None
        return found[0]

    async def wait_resolved(self, name: str, within: float, **labels: str) -> None:
        async def quiet() -> bool:
            return not [a for a in await self.firing() if _matches(a, name, labels)]

        try:
            await polled(quiet, within=within)
        except TimeoutError:
            raise AssertionError(f"{name} {labels} still firing") from None

    async def wait_scraped(self, within: float = 20) -> None:
        """Every target has been scraped and is up."""

        async def up() -> bool:
            result = await self.query(f'up{{job="{JOB}"}} == 1')
            return len(result) == len(self.targets)

        await polled(up, within=within)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        shutil.rmtree(self.root, ignore_errors=True)


def _matches(alert: dict[str, Any], name: str, labels: dict[str, str]) -> bool:
    got = alert["labels"]
    return got.get("alertname") == name and all(got.get(k) == v for k, v in labels.items())
