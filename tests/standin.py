"""podman and buildah for tests/container_image.py, and the base image when no registry answers.

Facts of our machines that shape this (found by trying):

- podman must use ``runc``: crun refuses the host's hybrid cgroup layout.
- Containers get ulimits at the host's hard limits (``default_ulimits``; buildah takes them as
  ``--ulimit``): podman's defaults ask for more than the host allows, and raising a limit is
  not permitted here. The process limit is also capped at what conmon passes on (32768).
- No container registry is reachable. ``python:3.11-slim-bookworm`` is made locally instead:
  ``debootstrap --variant=minbase bookworm`` from apt's configured mirror, Debian's python3.11
  in a virtual environment at ``/usr/local`` (so ``python`` and ``pip`` are on PATH as in the
  official image), imported with ``podman import`` as :data:`STANDIN_IMAGE`: never under the
  official name, which would pass it off as the real image to every later build on the host
  (a stand-in an earlier version left under that name is renamed). It stays in local storage,
  so only the first run pays for it (about a minute); the Dockerfile's ``BASE`` names it.

Every command has a timeout; a failure shows the command and its output.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
STANDIN_IMAGE = "localhost/synap-bridge-test-base:python3.11-slim-bookworm"
STANDIN_COMMENT = "stand-in for python:3.11-slim-bookworm (tests/standin.py)"
TOOLS = ("buildah", "podman", "runc", "debootstrap")
COMMAND_TIMEOUT = 120
PULL_TIMEOUT = 60
STANDIN_TIMEOUT = 420
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: The process limit podman's conmon hands to the container (seen on podman 4.3, Debian 12),
#: whatever the caller's own: the container's init cannot raise it (no CAP_SYS_RESOURCE).
CONMON_NPROC = 32768
SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
STANDIN_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


def containers_conf(hard_nofile: int, hard_nproc: int) -> str:
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={hard_nofile}:{hard_nofile}", '
        f'"nproc={hard_nproc}:{hard_nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        "[network]\n"
        'network_backend = "netavark"\n'
    )


def _limit(which: int) -> int:
    soft, hard = resource.getrlimit(which)
    return hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)


class Podman:
    """Runs podman/buildah (and the stand-in's tools) with our containers.conf."""

    def __init__(self, workdir: Path) -> None:
        missing = [name for name in TOOLS if shutil.which(name) is None]
        if missing:
            pytest.fail(
                f"{', '.join(missing)} not installed: run `make image-deps` (as root: apt-get "
                "install buildah podman runc conmon netavark aardvark-dns iptables debootstrap)",
                pytrace=False,
            )
        if os.geteuid() != 0:
            pytest.fail("the image test runs podman as root (sudo make image-test)", pytrace=False)
        nofile = _limit(resource.RLIMIT_NOFILE)
        nproc = min(_limit(resource.RLIMIT_NPROC), CONMON_NPROC)
        conf = workdir / "containers.conf"
        conf.write_text(containers_conf(nofile, nproc))
        #: buildah ignores containers.conf's ulimits for RUN steps: it takes them as options.
        self.ulimits = [
            "--ulimit",
            f"nofile={nofile}:{nofile}",
            "--ulimit",
            f"nproc={nproc}:{nproc}",
        ]
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(
        self,
        *argv: str,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"timed out after {timeout}s: {' '.join(argv)}\n{exc.output}", pytrace=False
            )
        if check and done.returncode != 0:
            pytest.fail(
                f"exit {done.returncode}: {' '.join(argv)}\n{done.stdout[-4000:]}\n"
                f"{done.stderr[-4000:]}",
                pytrace=False,
            )
        return done


def apt_mirror() -> str:
    """The Debian mirror apt is configured with (reachable where apt works), else the default."""
    files: list[Path] = []
    for source in SOURCES:
        files += sorted(source.iterdir()) if source.is_dir() else [source]
    for path in files:
        if not path.is_file() or path.suffix not in {".list", ".sources"}:
            continue
        text = path.read_text(errors="replace")
        deb822 = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.MULTILINE)
        one_line = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s+bookworm\b", text, re.M)
        found = deb822 or one_line
        if found:
            return found.group(1)
    return DEFAULT_MIRROR


def _exists(podman: Podman, image: str) -> bool:
    return podman.run("podman", "image", "exists", image, check=False).returncode == 0


def ensure_base_image(podman: Podman, workdir: Path) -> str:
    """The base to build on (the Dockerfile's ``BASE``): the official image if present or
    pulled, else the local stand-in (made once)."""
    if _exists(podman, BASE_IMAGE):
        comment = podman.run(
            "podman", "image", "inspect", "--format", "{{.Comment}}", BASE_IMAGE, check=False
        ).stdout.strip()
        if comment != STANDIN_COMMENT:
            return BASE_IMAGE
        # An earlier run's stand-in under the official name: give it its own name.
        podman.run("podman", "tag", BASE_IMAGE, STANDIN_IMAGE)
        podman.run("podman", "untag", BASE_IMAGE, BASE_IMAGE)
        return STANDIN_IMAGE
    pulled = podman.run("podman", "pull", "--quiet", BASE_IMAGE, timeout=PULL_TIMEOUT, check=False)
    if pulled.returncode == 0:
        return BASE_IMAGE
    if not _exists(podman, STANDIN_IMAGE):
        build_standin(podman, workdir / "rootfs")
    return STANDIN_IMAGE


def build_standin(podman: Podman, root: Path) -> None:
    try:
        _build_standin(podman, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # 200 MB; the image keeps what we need


def _build_standin(podman: Podman, root: Path) -> None:
    mirror = apt_mirror()
    podman.run(
        "debootstrap", "--variant=minbase", "bookworm", str(root), mirror, timeout=STANDIN_TIMEOUT
    )
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    apt = ("chroot", str(root), "apt-get", "-o", "Acquire::Retries=3")
    podman.run(*apt, "install", "-y", "--no-install-recommends", "python3.11-venv", timeout=240)
    podman.run("chroot", str(root), "python3.11", "-m", "venv", "/usr/local", timeout=120)
    podman.run(*apt, "clean")
    shutil.rmtree(root / "var" / "lib" / "apt" / "lists", ignore_errors=True)
    (root / "etc" / "resolv.conf").unlink()
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        done = subprocess.run(
            [
                "podman", "import",
                "--change", f"ENV PATH={STANDIN_PATH}",
                "--change", "ENV LANG=C.UTF-8",
                "--change", 'CMD ["python3"]',
                "--message", STANDIN_COMMENT,
                "-", STANDIN_IMAGE,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=podman.env,
            check=False,
        )  # fmt: skip
    finally:
        tar.stdout.close()
        tar.wait(timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        pytest.fail(f"podman import failed:\n{done.stderr}", pytrace=False)
