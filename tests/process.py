"""Run the real ``synap-bridge serve`` as a subprocess, for crash, signal and notify tests.

The bridge is started with ``server.port: 0``; its JSON log line ``listening`` tells the port.
Its output is read continuously (a full pipe would block it) and kept for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class BridgeProcess:
    def __init__(
        self, config_path: Path, env: dict[str, str] | None = None, *, nofile: int | None = None
    ) -> None:
        self.config_path = config_path
        #: The child's descriptor limit (soft and hard), e.g. systemd's default of 1,024.
        self.nofile = nofile
        self.env = {**os.environ, **(env or {})}
        self.env.pop("BRIDGE_CONFIG", None)
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.port: int | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self, within: float = 20.0) -> int:
        self.lines.clear()
        self._listening = asyncio.Event()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "--config",
            str(self.config_path),
            "serve",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
            preexec_fn=self._limits if self.nofile is not None else None,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        waiter = asyncio.create_task(self._listening.wait())
        done, _ = await asyncio.wait(
            {waiter, self._reader}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            raise RuntimeError("the bridge did not start:\n" + "\n".join(self.raw[-30:]))
        assert self.port is not None
        return self.port

    def _limits(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            text = raw.decode(errors="replace").rstrip()
            self.raw.append(text)
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            self.lines.append(line)
            if line.get("event") == "listening" and not self._listening.is_set():
                self.port = int(line["port"])
                self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.wait()

    async def terminate(self, within: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return await self.wait(within)

    async def wait(self, within: float = 30.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        self.port = None
        return code

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                await self.wait()
