"""Start, watch and stop the processes a benchmark needs: bridge, fake Segment, bare app.

Every process is ours, started with the venv's interpreter, logging to a file under
``bench/out/`` (a full pipe would stall it), and stopped by its own pid. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
WRITE_KEY = "bench-write-key"
USER = "synap"
PASSWORD = "bench-password"


def basic_auth() -> str:
    return "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - loopback only
        return orjson.loads(answer.read())


def post_json(url: str, doc: Any, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url, data=orjson.dumps(doc), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - loopback only
        return orjson.loads(answer.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1]
    utime, stime = fields.split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


class Proc:
    """One child process with its log file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, url: str = ""
    ) -> None:
        self.name = name
        self.url = url
        self.log_path = OUT / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # BRIDGE_* from the caller's shell would silently change the measured configuration.
            env={k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")} | (env or {}),
            cwd=REPO,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_http(self, url: str, within: float = 30.0) -> None:
        """Poll ``url`` until it answers 2xx; fail with the log's tail if the process dies."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=2),  # noqa: S310 - loopback only
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {url} within {within}s:\n{self.tail()}")

    def memory_kb(self) -> dict[str, int]:
        """VmHWM (peak resident) and VmRSS of the process, in kB, from /proc."""
        found: dict[str, int] = {}
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0])
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (from /proc/<pid>/stat)."""
        return cpu_seconds(self.pid)

    def tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, within: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(within)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def fake_segment(name: str = "fake") -> Proc:
    """The strict fake Segment (with arrival times) as its own process; ready when returned."""
    port = free_port()
    argv = python("-m", "bench.fake", "--port", str(port), "--write-key", WRITE_KEY)
    proc = Proc(name, argv, url=f"http://127.0.0.1:{port}")
    proc.wait_http(f"{proc.url}/_stats")
    return proc


def bridge_config(db: Path, port: int, segment_url: str | None, **overrides: Any) -> dict[str, Any]:
    """The bridge's configuration for a run: defaults but for paths, port, auth and log level."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"username": USER, "password": PASSWORD},
        "storage": {"path": str(db), "synchronous": "FULL"},
        "logging": {"level": "warning", "format": "json"},
    }
    if segment_url is not None:
        data["segment"] = {"write_key": WRITE_KEY, "endpoint": segment_url}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return data


def bridge(
    name: str, config: dict[str, Any], within: float = 60.0, tree: Path | None = None
) -> Proc:
    """``synap-bridge serve`` as its own process; returned once ``/healthz`` answers.

    ``tree``: a directory holding another ``bridge`` package (``git archive`` of an older
    commit) to run instead of this one, for the A/B benchmarks."""
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    url = f"http://127.0.0.1:{config['server']['port']}"
    argv = python("-m", "bridge", "--config", str(path), "serve")
    if tree is not None:
        code = (
            f"import sys; sys.path.insert(0, {str(tree.resolve())!r}); import runpy; "
            "runpy.run_module('bridge', run_name='__main__')"
        )
        argv = python("-c", code, "--config", str(path), "serve")
    proc = Proc(name, argv, url=url)
    proc.wait_http(f"{url}/healthz", within)
    return proc


def bare_app(name: str = "bare") -> Proc:
    port = free_port()
    proc = Proc(
        name, python("-m", "bench.bare", "--port", str(port)), url=f"http://127.0.0.1:{port}"
    )
    proc.wait_http(f"{proc.url}/healthz")
    return proc


def fresh_db(name: str) -> Path:
    """``bench/out/<name>.db`` with no file of an earlier run left (nor its -wal, -shm, lock)."""
    for stale in OUT.glob(f"{name}.db*"):
        stale.unlink()
    return OUT / f"{name}.db"


def durable_app(name: str = "durable", postgres: str | None = None) -> Proc:
    """The minimal durable receiver (bench/durable.py) on a fresh database in bench/out/, or on
    the PostgreSQL database ``postgres`` (a URL)."""
    port = free_port()
    store = ["--postgres", postgres] if postgres else ["--db", str(fresh_db(name))]
    proc = Proc(
        name,
        python("-m", "bench.durable", "--port", str(port), *store),
        url=f"http://127.0.0.1:{port}",
    )
    proc.wait_http(f"{proc.url}/healthz")
    return proc


def tree_of(commit: str, *paths: str, prefix: str = "ab-") -> Path:
    """``paths`` of ``commit`` (``git archive``) in a temporary directory outside the repository
    (no linter or type checker reads it): another tree for the A/B benchmarks to run."""
    tree = Path(tempfile.mkdtemp(prefix=prefix))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, *paths],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree
