"""requirements.lock: the runtime dependencies the image installs (``pip --require-hashes``).

A lock that no longer matches pyproject.toml would build an image without a new dependency, or
with a version the code was not written for. So: every dependency of pyproject.toml is pinned
there, at a version its range allows, and every pin carries hashes. ``make lock`` refreshes it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def pins() -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in PIN.findall(LOCK.read_text(encoding="utf-8"))}


def dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def test_every_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    for requirement in dependencies():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} is outside {requirement.specifier}: run `make lock`"
        )


def test_every_pin_has_hashes() -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text(encoding="utf-8"))
    pinned = [block for block in blocks if PIN.match(block)]
    assert len(pinned) == len(pins()) > len(dependencies())
    for block in pinned:
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_image_installs_from_it_with_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes" in dockerfile
    assert "-r requirements.lock" in dockerfile
    assert not dockerfile.startswith("# syntax="), "an offline builder cannot fetch a frontend"
