"""deploy/grafana and deploy/prometheus, checked against the bridge that exports the metrics.

A dashboard or an alert that names a metric the bridge does not export shows "no data" and never
fires, silently. So every ``synap_bridge_*`` name and every label the expressions use is looked
up in a real ``/metrics`` scrape of the app (after traffic that makes each labelled series
appear), and promtool (Debian's ``prometheus`` package; ``make promtool`` installs it) checks
the PromQL of the rules and of the dashboard, then runs the rules' unit tests (the example series
of deploy/prometheus/alerts.test.yml). A missing promtool is a failure that says how to install
it, never a skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import build_app
from bridge.config import Config
from bridge.receive.runtime import RUNTIME
from tests.conftest import basic_auth, eventually, fixture_body
from tests.fakes import FakeSegment

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "synap-bridge.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
METRIC = re.compile(r"\bsynap_bridge_[a-z0-9_]+\b")
#: Labels Prometheus adds at scrape time (and ``le`` of histogram buckets, checked by name).
TARGET_LABELS = {"instance", "job"}
#: Grafana's variables, replaced by what Grafana would send, so promtool can parse the PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$instance": ".*"}
PROMTOOL_TIMEOUT = 60


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: run `make monitoring-deps` (as root: apt-get install -y "
            "--no-install-recommends prometheus)",
            pytrace=False,
        )
    return found


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        cwd=cwd,
        check=False,
    )


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def grouping_labels(expr: str) -> set[str]:
    """Labels an expression groups by or matches on (``by (...)``, ``{name=...}``)."""
    names: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        names.update(n.strip() for n in group.split(",") if n.strip())
    for selector in re.findall(r"\{([^}]*)\}", expr):
        names.update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector))
    return names - TARGET_LABELS


@pytest.fixture
async def scrape(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, config_factory: Callable[..., Config]
) -> dict[str, set[str]]:
    """Every sample name of a real scrape, with the label names it carries. Traffic first: a
    transient failure (retries, pauses), stored webhooks, a dead letter, a delivery."""
    client = await aiohttp_client(build_app(config_factory(fake_segment.url)))
    fake_segment.fail(503, times=1)
    for code in ("attempt.completed", "user.registered"):
        answer = await client.post(
            f"/webhooks/synap/{code}", json=fixture_body(code), headers=basic_auth()
        )
        assert answer.status == 200
    assert (await client.post("/webhooks/synap/no.such", json={}, headers=basic_auth())).status
    await fake_segment.wait_for(3)

    registry = client.app[RUNTIME].metrics.registry
    await eventually(
        lambda: (
            registry.get_sample_value(
                "synap_bridge_messages_delivered_total", {"destination": "default"}
            )
            == 3
        )
    )
    text = await (await client.get("/metrics")).text()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def check_against_scrape(expr: str, samples: dict[str, set[str]]) -> None:
    names = set(METRIC.findall(expr))
    missing = names - samples.keys()
    assert not missing, f"{expr}\n  names metrics the bridge does not export: {sorted(missing)}"
    if not names:
        return
    offered = set().union(*(samples[n] for n in names))
    unknown = grouping_labels(expr) - offered
    assert not unknown, f"{expr}\n  uses labels the metrics do not carry: {sorted(unknown)}"


class TestDashboard:
    def test_parses_and_is_importable(self) -> None:
        board = dashboard()
        assert board["uid"] == "synap-bridge"
        assert board["title"]
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), "panel ids must be unique"
        for panel in panels(board):
            assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert ref_ids, panel["title"]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        variables = {v["name"] for v in board["templating"]["list"]}
        assert variables == {"datasource", "instance"}

    def test_covers_what_an_operator_looks_at(self) -> None:
        queried = set(METRIC.findall(" ".join(dashboard_exprs())))
        for needed in (
            "synap_bridge_webhooks_received_total",  # intake rate and outcomes
            "synap_bridge_pending_messages",  # backlog
            "synap_bridge_oldest_pending_age_seconds",
            "synap_bridge_messages_delivered_total",  # delivery rate
            "synap_bridge_messages_retried_total",  # retries by destination
            "synap_bridge_destination_pauses_total",  # pauses by destination
            "synap_bridge_destination_paused",
            "synap_bridge_dead_letters_total",  # dead letters by reason
            "synap_bridge_request_duration_seconds_bucket",  # latency
        ):
            assert needed in queried, needed

    async def test_every_query_names_exported_metrics(self, scrape: dict[str, set[str]]) -> None:
        exprs = dashboard_exprs()
        assert len(exprs) > 15
        for expr in exprs:
            check_against_scrape(expr, scrape)

    def test_promql_parses(self, tmp_path: Path) -> None:
        """promtool parses every dashboard query, written as recording rules."""
        rules = []
        for n, expr in enumerate(dashboard_exprs()):
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if expr.startswith("label_values("):
                expr = re.sub(r"label_values\((\w+),.*\)", r"\1", expr)
            rules.append({"record": f"dashboard:query_{n}", "expr": expr})
        path = tmp_path / "dashboard-queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        done = run_promtool("check", "rules", str(path), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr

    def test_a_wrong_name_is_caught(self) -> None:
        with pytest.raises(AssertionError, match="does not export"):
            check_against_scrape("rate(synap_bridge_webhooks_total[5m])", {"up": set()})
        samples = {"synap_bridge_dead_letters_total": {"reason"}}
        with pytest.raises(AssertionError, match="do not carry"):
            check_against_scrape("sum by (code) (synap_bridge_dead_letters_total)", samples)


class TestAlerts:
    def test_covers_the_operators_questions(self) -> None:
        names = {rule["alert"] for rule in alert_rules()}
        for needed in (
            "SynapBridgeBacklogOld",
            "SynapBridgeDestinationPaused",
            "SynapBridgeDeadLettersGrowing",
            "SynapBridgeIntakeRefusing",
            "SynapBridgeNotReady",
            "SynapBridgeDeliveryTaskDead",
        ):
            assert needed in names

    async def test_every_rule_names_exported_metrics(self, scrape: dict[str, set[str]]) -> None:
        for rule in alert_rules():
            expr = rule["expr"]
            if not METRIC.search(expr):
                assert expr.startswith("up{"), expr  # only target health is not ours
            check_against_scrape(expr, scrape)

    def test_promtool_check_rules(self) -> None:
        done = run_promtool("check", "rules", str(ALERTS), cwd=ALERTS.parent)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout

    def test_promtool_test_rules(self) -> None:
        done = run_promtool("test", "rules", str(ALERT_TESTS), cwd=ALERTS.parent)
        assert done.returncode == 0, done.stdout + done.stderr
        tested = {
            case["alertname"]
            for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
            for case in test["alert_rule_test"]
            if case["exp_alerts"]
        }
        assert tested == {rule["alert"] for rule in alert_rules()}, "every alert fires in a test"

    def test_the_unit_tests_catch_a_wrong_threshold(self, tmp_path: Path) -> None:
        shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
        old = "(synap_bridge_oldest_pending_age_seconds) > 900"
        broken = ALERTS.read_text().replace(old, "(synap_bridge_oldest_pending_age_seconds) > 9e9")
        assert broken != ALERTS.read_text()
        (tmp_path / ALERTS.name).write_text(broken)
        done = run_promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
        assert done.returncode != 0
        assert "SynapBridgeBacklogOld" in done.stdout + done.stderr
