"""deploy/compose.yaml, read by podman-compose (Debian's compose tool), starts a bridge that
stays up without a write key (dry-run) instead of a crash loop, and refuses to start without
the passwords it names.

podman-compose 1.0.3 (Debian 12) has no ``config`` command and its ``--dry-run`` still calls
podman, so the test uses its own interpolation (``podman_compose.rec_subs``, what ``up`` applies
to the file) in the system Python that ships it, then runs the real ``serve`` with the bridge
service's environment against the test PostgreSQL (the address of the ``db`` service replaced).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import basic_auth, fixture_body, polled
from tests.pgcluster import shared
from tests.process import BridgeProcess, write_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
SYSTEM_PYTHON = "/usr/bin/python3"
#: Interpolate the compose file as podman-compose does; print its services as JSON.
INTERPOLATE = """
import json, os, sys, yaml, podman_compose
doc = yaml.safe_load(open(sys.argv[1]))
try:
    print(json.dumps(podman_compose.rec_subs(doc, dict(os.environ))))
except RuntimeError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def compose_tool() -> str:
    found = shutil.which("podman-compose")
    if found is None:
        pytest.fail(
            "podman-compose is not installed: run `make compose-deps` (as root: apt-get install "
            "-y --no-install-recommends podman-compose)",
            pytrace=False,
        )
    return found


def interpolated(env: dict[str, str]) -> dict[str, Any]:
    compose_tool()
    ran = subprocess.run(
        [SYSTEM_PYTHON, "-c", INTERPOLATE, str(COMPOSE)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
        timeout=60,
    )
    doc: dict[str, Any] = json.loads(ran.stdout)
    return doc


def test_the_passwords_it_names_are_required() -> None:
    assert "set BRIDGE_AUTH__PASSWORD" in interpolated({"POSTGRES_PASSWORD": "p"})["error"]
    assert "set POSTGRES_PASSWORD" in interpolated({"BRIDGE_AUTH__PASSWORD": "p"})["error"]


async def test_a_replica_starts_and_stays_up_without_a_write_key(tmp_path: Path) -> None:
    secrets = {"POSTGRES_PASSWORD": "pg-pass-123", "BRIDGE_AUTH__PASSWORD": "a-long-password-xyz"}
    services = interpolated(secrets)["services"]
    env: dict[str, str] = {k: str(v) for k, v in services["bridge-1"]["environment"].items()}
    assert services["bridge-1"]["restart"] == "unless-stopped"
    assert "" not in env.values()  # an empty write key was refused: a crash loop
    assert not any("WRITE_KEY" in name for name in env)  # dry-run until one is added
    # The db service's address becomes the test cluster's; the rest is the file's.
    test_db = urlsplit(shared().new_database())
    compose_url = urlsplit(env["BRIDGE_STORAGE__URL"])
    assert compose_url.password == secrets["POSTGRES_PASSWORD"]
    env["BRIDGE_STORAGE__URL"] = compose_url._replace(
        netloc=f"{test_db.username}:{compose_url.password}@{test_db.hostname}:{test_db.port}",
        path=test_db.path,
    ).geturl()
    # What the image sets (Dockerfile ENV), with a free port.
    env.update(
        BRIDGE_SERVER__HOST="0.0.0.0",  # the container listens on every address, as the image
        BRIDGE_SERVER__PORT="0",
        BRIDGE_LOGGING__FORMAT="json",
    )
    bridge = BridgeProcess(write_config(tmp_path / "empty.yaml", {}), env)
    try:
        await bridge.start()
        (listening, *_) = bridge.events("listening")
        assert listening["dry_run"] is True
        async with aiohttp.ClientSession() as session:
            body = fixture_body("user.registered")
            headers = basic_auth(password=secrets["BRIDGE_AUTH__PASSWORD"])
            url = f"{bridge.url}/webhooks/synap/user.registered"
            async with session.post(url, json=body, headers=headers) as response:
                assert response.status == 200
            await polled(lambda: _has(bridge, "dry_run_message"), within=20)
            async with session.get(f"{bridge.url}/readyz") as response:
                assert response.status == 200  # the compose health check's question
        assert bridge.proc is not None
        assert bridge.proc.returncode is None  # still serving
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()


async def _has(bridge: BridgeProcess, event: str) -> bool:
    return bool(bridge.events(event))
