"""The Makefile's installs: ``make run`` installs only what running needs, ``make test`` adds the
test extra, and a venv that ``make run`` made does not pass for a test venv.

The real ``make`` in dry-run mode (``-n``) against a venv path in tmp_path: it prints what it
would run and installs nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_INSTALL = "pip install --quiet -e .\n"
TEST_INSTALL = "pip install --quiet -e '.[test]'"


def dry_run(target: str, venv: Path) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


class TestInstalls:
    def test_run_installs_the_bridge_without_the_test_extra(self, tmp_path: Path) -> None:
        planned = dry_run("run", tmp_path / "venv")
        assert RUN_INSTALL in planned
        assert TEST_INSTALL not in planned
        assert "synap-bridge --config config.yaml serve" in planned

    def test_test_installs_the_test_extra(self, tmp_path: Path) -> None:
        planned = dry_run("pytest", tmp_path / "venv")
        assert RUN_INSTALL in planned
        assert TEST_INSTALL in planned

    def test_a_run_only_venv_does_not_satisfy_test(self, tmp_path: Path) -> None:
        venv = tmp_path / "venv"
        venv.mkdir()
        (venv / ".installed-run").touch()  # what make run leaves (newer than pyproject.toml)
        assert "pip install" not in dry_run("run", venv)
        planned = dry_run("pytest", venv)
        assert TEST_INSTALL in planned
        assert RUN_INSTALL not in planned

    def test_a_test_venv_serves_run_and_test_without_installing(self, tmp_path: Path) -> None:
        venv = tmp_path / "venv"
        venv.mkdir()
        (venv / ".installed-run").touch()
        (venv / ".installed-test").touch()
        assert "pip install" not in dry_run("pytest", venv)
        assert "pip install" not in dry_run("run", venv)
