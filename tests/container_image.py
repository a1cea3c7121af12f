"""The container image, proven: buildah builds the Dockerfile, podman runs it, and we look.

Run by ``make image-test`` (which ``.ci/run`` calls), not by plain ``make test``: it takes about
a minute and a half and needs root, buildah and podman. The file name does not match pytest's
``test_*.py`` pattern on purpose, so a plain ``pytest`` never collects it; naming it on the
command line does. A missing tool is a failure that names the fix (``make image-deps``), never
a skip.

No container registry is reachable from our machines. When ``python:3.11-slim-bookworm`` is
neither in local storage nor pullable, a stand-in with that name is made (tests/standin.py):
Debian bookworm (debootstrap, from apt's own mirror) with Debian's Python 3.11 in a virtual
environment at ``/usr/local``, the layout of the official image. Then buildah builds
with ``--format docker`` (OCI drops HEALTHCHECK) and podman runs the image with ``runc`` and
the host's hard ulimits (tests/standin.py's containers.conf says why).

Checked: the process runs as uid 10001; ``/healthz`` answers through a published port; a
webhook is acknowledged and is still in the volume after the container is gone (read by the
image's own ``stats``); the HEALTHCHECK is ``python -m bridge.probe`` and passes both on the
default ``0.0.0.0`` and on ``BRIDGE_SERVER__HOST=::`` (where probing 127.0.0.1 fails); SIGTERM
(``podman stop``) ends the process with status 0 within the grace period.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD, PROCESS_POLL_SECS, basic_auth, fixture_body
from tests.standin import Podman, ensure_base_image

#: The whole module's bound (pytest-timeout; the project default of 60 s is per unit test):
#: the first test pays for the stand-in base (3 minutes on a busy machine) and the build.
pytestmark = [pytest.mark.timeout(540), pytest.mark.image]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/synap-bridge:image-test"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT = 480
#: A Segment endpoint that refuses connections: messages stay pending in the volume.
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    return Podman(tmp_path_factory.mktemp("containers"))


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = ensure_base_image(podman, tmp_path_factory.mktemp("standin"))
    build = [
        "buildah",
        "bud",
        "--format",
        "docker",
        "--pull=never",
        "--no-cache",
        "--force-rm",  # no working containers left behind by a failed step
        "--network",
        "host",
        *podman.ulimits,
        "--build-arg",
        f"BASE={base}",
        "--tag",
        IMAGE,
        "--file",
        str(ROOT / "Dockerfile"),
    ]
    if CA_BUNDLE.exists():
        # The host's CA bundle for pip during the build only: mounted, never copied.
        build += [
            "--volume",
            f"{CA_BUNDLE}:/run/host-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/host-ca.crt",
        ]
    podman.run(*build, str(ROOT), timeout=BUILD_TIMEOUT)
    yield IMAGE
    # The base image stays (the stand-in is the slow part); the image under test does not.
    podman.run("podman", "rmi", "--force", IMAGE, check=False)


class Container:
    """One running container of the image, removed (with its volume) by the fixture."""

    def __init__(self, podman: Podman, image: str, env: dict[str, str]) -> None:
        self.podman = podman
        self.name = f"synap-bridge-test-{uuid.uuid4().hex[:8]}"
        self.volume = f"{self.name}-data"
        argv = ["podman", "run", "--detach", "--name", self.name]
        argv += ["--publish", "127.0.0.1::8080", "--volume", f"{self.volume}:/var/lib/synap-bridge"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        podman.run(*argv, image)

    def inspect(self, template: str) -> str:
        return self.podman.run("podman", "inspect", "--format", template, self.name).stdout.strip()

    def port(self) -> int:
        out = self.podman.run("podman", "port", self.name, "8080/tcp").stdout.strip()
        return int(out.rsplit(":", 1)[1])

    def logs(self) -> str:
        done = self.podman.run("podman", "logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_listening(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if '"listening"' in self.logs():
                return
            if self.inspect("{{.State.Running}}") != "true":
                break
            time.sleep(PROCESS_POLL_SECS)  # another process's log: polled, bounded above
        pytest.fail(f"{self.name} did not start listening:\n{self.logs()}", pytrace=False)

    def remove(self) -> None:
        self.podman.run("podman", "rm", "--force", "--time", "0", self.name, check=False)
        self.podman.run("podman", "volume", "rm", "--force", self.volume, check=False)


@pytest.fixture
def start(podman: Podman, image: str) -> Iterator[Any]:
    started: list[Container] = []

    def starter(**env: str) -> Container:
        base = {"BRIDGE_AUTH__PASSWORD": PASSWORD}
        container = Container(podman, image, {**base, **env})
        started.append(container)
        container.wait_listening()
        return container

    yield starter
    for container in started:
        container.remove()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (a test URL)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **basic_auth()}
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return int(answer.status), json.loads(answer.read())


class TestImage:
    def test_healthcheck_is_kept_and_is_the_probe(self, podman: Podman, image: str) -> None:
        (described,) = json.loads(podman.run("podman", "image", "inspect", image).stdout)
        check = described["Healthcheck"]  # kept because the build used --format docker
        assert check["Test"] == ["CMD", "python", "-m", "bridge.probe"], check
        assert check["Timeout"] < check["Interval"], check
        assert described["Config"]["User"] == "10001:10001"

    def test_runs_stores_probes_and_stops_cleanly(self, start: Any, podman: Podman) -> None:
        box = start(BRIDGE_SEGMENT__WRITE_KEY="image-test-key", BRIDGE_SEGMENT__ENDPOINT=NOWHERE)
        status = podman.run("podman", "exec", box.name, "cat", "/proc/1/status").stdout
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {"10001"}, status

        base = f"http://127.0.0.1:{box.port()}"
        status_code, health_body = get(f"{base}/healthz")
        assert status_code == 200, health_body
        assert json.loads(health_body) == {"status": "ok"}
        code, answer = post(
            f"{base}/webhooks/synap/attempt.completed", fixture_body("attempt.completed")
        )
        assert code == 200, answer
        assert answer["accepted"] is True, answer

        health = podman.run("podman", "healthcheck", "run", box.name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr

        started = time.monotonic()
        podman.run("podman", "stop", "--time", "30", box.name, timeout=60)
        took = time.monotonic() - started
        assert box.inspect("{{.State.ExitCode}}") == "0", box.logs()
        assert took < 25, f"SIGTERM took {took:.1f}s: it was not a graceful stop but a SIGKILL"
        lines = [json.loads(line) for line in box.logs().splitlines() if line[:1] == "{"]
        # serve's own lines (its mapping process writes to stderr, interleaved by podman)
        events = [line.get("event") for line in lines if "stage" not in line]
        assert "stopping" in events, box.logs()
        assert events[-1] == "stopped", box.logs()

        # The acknowledged webhook outlived the container: the image's own CLI reads the volume.
        stats = podman.run(
            "podman", "run", "--rm", "--volume", f"{box.volume}:/var/lib/synap-bridge",
            IMAGE, "stats", "--json",
        )  # fmt: skip
        report = json.loads(stats.stdout)
        # Kept (and mapped, pending: the endpoint refuses connections) in the volume.
        kept = report["unmapped"] + report["pending"] + report["in_flight"]
        assert kept >= 1, report
        assert report["unmapped"] == 0, report  # mapped by the image's mapping process
        assert not [line for line in lines if line.get("event") == "stage_died"], box.logs()

    def test_healthcheck_follows_an_ipv6_listener(self, start: Any, podman: Podman) -> None:
        box = start(BRIDGE_SERVER__HOST="::")
        health = podman.run("podman", "healthcheck", "run", box.name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr + box.logs()
        # What the old HEALTHCHECK asked: IPv4 loopback, where nothing listens.
        old = podman.run(
            "podman", "exec", box.name, "python", "-c",
            "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=4)",
            check=False,
        )  # fmt: skip
        assert old.returncode != 0
