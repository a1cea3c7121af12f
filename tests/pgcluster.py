"""A throwaway PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder.

Why not pytest-postgresql: initdb and postgres refuse to run as root (CI runs as root), so as
root the server runs as the ``postgres`` user (``runuser -u postgres --``) on a folder chowned to
it. The server listens on a Unix socket in that folder and on a free loopback port; fsync is off
(a test cluster needs no durability across power cuts, and it makes the suite fast). Each test
gets its own database, copied from a template in a few milliseconds (``CREATE DATABASE ...
TEMPLATE``). A missing PostgreSQL is an error naming the command that installs it, never a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

INSTALL = "apt-get update && apt-get install -y postgresql  (or: make postgres-deps)"


def bindir() -> Path:
    """The PostgreSQL server programs (``pg_config --bindir``, else the newest Debian one)."""
    found = shutil.which("pg_config")
    candidates: list[Path] = []
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise RuntimeError(f"PostgreSQL server programs (initdb, pg_ctl) not found: {INSTALL}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One server: ``url(db)`` for clients, ``restart()`` for outage tests, ``stop()`` to remove."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o700)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.socket_dir.mkdir()
        if self.as_user:
            os.chown(self.socket_dir, pwd.getpwnam("postgres").pw_uid, -1)
        self.started = False
        self.user = "postgres" if self.as_user else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self, *, durable: bool = False) -> Cluster:
        """``durable``: fsync and synchronous commit on, as in production (the benchmarks);
        off for the tests, which need no durability across a power cut."""
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "-U",
            self.user,
        )
        options = {
            "fsync": "on" if durable else "off",
            "synchronous_commit": "on" if durable else "off",
            "full_page_writes": "on" if durable else "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            for key, value in options.items():
                conf.write(f"{key} = {value}\n")
        self.pg_ctl("start", "-w", "-t", "60", "-o", f"-p {self.port} -h 127.0.0.1")
        self.started = True
        self.psql("postgres", "CREATE DATABASE template_bridge")
        return self

    def pg_ctl(self, action: str, *args: str) -> None:
        self._run(
            str(self.bin / "pg_ctl"), action, "-D", str(self.data), "-l", str(self.log), *args
        )

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def psql(self, database: str, sql: str) -> str:
        result = subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {result.stderr}")
        return result.stdout.strip()

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database (from the template); its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql("postgres", f"CREATE DATABASE {name} TEMPLATE template_bridge")
        return self.url(name)

    def restart(self) -> None:
        self.pg_ctl("restart", "-m", "fast", "-w", "-t", "60", "-o", f"-p {self.port} -h 127.0.0.1")

    def running(self) -> bool:
        status = subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "status", "-D", str(self.data)],
            capture_output=True,
            check=False,
            timeout=30,
        )
        return status.returncode == 0

    def ensure_running(self) -> None:
        """Start the server again after a test stopped it (no-op when it runs)."""
        if not self.running():
            self.pg_ctl("start", "-w", "-t", "60", "-o", f"-p {self.port} -h 127.0.0.1")

    def stop(self) -> None:
        if self.started:
            try:
                self.pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
            finally:
                self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


def with_password(url: str, secret: str) -> str:
    """``url`` with a password: the cluster trusts local clients, so it is accepted and
    ignored, which is enough to prove that it never shows in output or logs."""
    scheme, _, rest = url.partition("://")
    user, _, hosts = rest.partition("@")
    return f"{scheme}://{user}:{secret}@{hosts}"


_shared: Cluster | None = None


def shared() -> Cluster:
    """The session's cluster, started on first use (tests/conftest.py stops it at the end)."""
    global _shared
    if _shared is None:
        _shared = Cluster().start()
    return _shared


def stop_shared() -> None:
    global _shared
    cluster, _shared = _shared, None
    if cluster is not None:
        cluster.stop()
