"""deploy/examples/*.yaml: each loads through the real CLI's ``check-config`` and says what its
comments promise (the EU endpoint; two schools, two Segment sources, chosen by portal).

Every example in the folder is checked (a new one is picked up without editing this file), with
the secrets its comments name given in the environment, as an operator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import config as config_module
from bridge.config import Config
from bridge.errors import UnmappableError
from bridge.mapping.routing import route

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
EU = "https://events.eu1.segmentapis.com"


def secrets_for(path: Path) -> dict[str, str]:
    """The environment an operator sets: the password and one write key per destination."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    env = {"BRIDGE_AUTH__PASSWORD": "example-password", "BRIDGE_SEGMENT__WRITE_KEY": "key-default"}
    for name in (data.get("routing") or {}).get("destinations") or {}:
        env[f"BRIDGE_ROUTING__DESTINATIONS__{name.upper()}__WRITE_KEY"] = f"key-{name}"
    return env


def check_config(path: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(secrets_for(path), BRIDGE_STORAGE__PATH=str(tmp_path / "bridge.db"))
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(path), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    return done, yaml.safe_load(done.stdout) if done.returncode == 0 else None


def loaded(name: str) -> Config:
    path = ROOT / "deploy" / "examples" / name
    return config_module.parse(config_module.read_yaml(path))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_check_config_accepts_it(path: Path, tmp_path: Path) -> None:
    done, effective = check_config(path, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert effective, done.stdout
    assert "example-password" not in done.stdout, "masked"
    assert "key-" not in done.stdout, "masked"


def test_every_example_is_commented() -> None:
    assert len(EXAMPLES) >= 2
    for path in EXAMPLES:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), path.name
        keys = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        comments = [line for line in lines if line.lstrip().startswith("#")]
        assert len(comments) >= len(keys) / 2, f"{path.name}: say why for each setting"


def test_eu_workspace_sends_to_the_eu_endpoint(tmp_path: Path) -> None:
    done, effective = check_config(ROOT / "deploy" / "examples" / "eu-workspace.yaml", tmp_path)
    assert done.returncode == 0, done.stderr
    assert effective["segment"]["endpoint"] == EU
    assert effective["server"]["host"] == "0.0.0.0"  # behind a proxy: the password is required
    assert effective["segment"]["write_key"] != "key-default"  # masked, but set
    assert f"default: {EU} (write key set" in done.stdout


class TestTwoSchools:
    def test_check_config_shows_each_school_and_no_fallback(self, tmp_path: Path) -> None:
        done, _ = check_config(ROOT / "deploy" / "examples" / "two-schools.yaml", tmp_path)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert (
            "northfield: https://api.segment.io (write key set) <- portals portal-northfield" in out
        )
        assert f"riverside: {EU} (write key set) <- portals portal-riverside" in out
        assert "anything else: dead letter (no_destination)" in out

    @pytest.mark.parametrize(
        ("portal", "destination"),
        [("portal-northfield", "northfield"), ("portal-riverside", "riverside")],
    )
    def test_each_portal_reaches_its_own_source(self, portal: str, destination: str) -> None:
        assert route(loaded("two-schools.yaml").routing, portal, None) == destination

    def test_another_portal_is_held_not_misrouted(self) -> None:
        with pytest.raises(UnmappableError) as caught:
            route(loaded("two-schools.yaml").routing, "portal-elsewhere", None)
        assert caught.value.code == "no_destination"
