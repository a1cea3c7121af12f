"""The test tiers: marks follow what a test uses, and a test that hides a process fails.

Both run the real pytest as a subprocess (so this module is in the ``process`` tier itself).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.tiers import FAST

ROOT = Path(__file__).resolve().parent.parent


def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def collected(expression: str, *paths: str) -> set[str]:
    done = pytest_run("--collect-only", "-m", expression, *paths)
    assert done.returncode in (0, 5), done.stdout + done.stderr
    return {
        line.split("::")[0] + ("[postgres]" in line) * "[postgres]"
        for line in done.stdout.splitlines()
        if "::" in line
    }


def test_the_fast_tier_is_units_mapping_and_the_contract_on_sqlite() -> None:
    paths = (
        "tests/test_wire.py",
        "tests/test_crash.py",
        "tests/test_ack_retry.py",
        "tests/contract/test_claim.py",
        "tests/test_makefile.py",
    )
    assert collected(FAST, *paths) == {"tests/test_wire.py", "tests/contract/test_claim.py"}
    assert collected("process", *paths) == {"tests/test_crash.py", "tests/test_makefile.py"}
    assert collected("postgres", *paths) == {
        "tests/test_ack_retry.py",
        "tests/contract/test_claim.py[postgres]",
    }


def test_a_test_that_starts_a_process_unmarked_fails(tmp_path: Path) -> None:
    """The guard sees a process the static marking could not (here: started through a name
    the marker does not know), and fails the test naming it."""
    (tmp_path / "test_sneaky.py").write_text(
        "import os\n"
        "run = getattr(__import__('sub' + 'process'), 'run')\n"
        "def test_hidden() -> None:\n"
        "    run(['true'], check=True)\n"
        "def test_plain() -> None:\n"
        "    assert os.sep\n",
        encoding="utf-8",
    )
    done = pytest_run("-p", "tests.conftest", "--rootdir", str(tmp_path), str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 passed, 1 error" in done.stdout  # test_hidden passes, its teardown fails
    assert "ERROR at teardown of test_hidden" in done.stdout
    assert "without the process mark" in done.stdout
