"""SIGHUP against the real process: the mapping is reloaded without a restart, a bad new
configuration is refused with a log line and the old one kept, and no request is dropped."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from bridge.app import build_app
from bridge.config import Config, MappingConfig, ServerConfig, ShutdownConfig, load
from bridge.receive.runtime import RUNTIME
from bridge.reload import RELOADABLE, apply, restart_needed
from tests.conftest import PASSWORD, USER, basic_auth, eventually, fixture_body
from tests.process import BridgeProcess, write_config


def config_data(tmp_path: Path, *, flag_enabled: bool, level: str = "info") -> dict[str, Any]:
    return {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "logging": {"format": "json", "level": level},
        "mapping": {"codes": {"flag.planted": {"enabled": flag_enabled}}},
    }


async def post_flag(session: aiohttp.ClientSession, url: str, n: int) -> int:
    body = fixture_body("flag.planted")
    body["objectId"] = f"flag-{n}"
    async with session.post(
        f"{url}/webhooks/synap/flag.planted", json=body, headers=basic_auth()
    ) as response:
        return response.status


async def kept_flag(session: aiohttp.ClientSession, url: str, n: int) -> str:
    """Post flag ``n``; the webhook id it was kept as."""
    body = fixture_body("flag.planted")
    body["objectId"] = f"flag-{n}"
    async with session.post(
        f"{url}/webhooks/synap/flag.planted", json=body, headers=basic_auth()
    ) as response:
        assert response.status == 200
        return str((await response.json())["webhook_id"])


async def test_sighup_reloads_mapping_and_refuses_a_bad_config(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", config_data(tmp_path, flag_enabled=False))
    bridge = BridgeProcess(path)
    try:
        url = f"http://127.0.0.1:{await bridge.start()}"
        assert bridge.proc is not None

        def verdict(webhook_id: str) -> str | None:
            for event in ("webhook_mapped", "webhook_dead_lettered"):
                if any(line["webhook_id"] == webhook_id for line in bridge.events(event)):
                    return event
            return None

        def both(event: str) -> bool:  # serve and its mapping process each said it
            return {"stage" in line for line in bridge.events(event)} == {True, False}

        async with aiohttp.ClientSession() as session:
            first = await kept_flag(session, url, 1)
            await eventually(lambda: verdict(first) == "webhook_dead_lettered")  # switched off

            write_config(path, config_data(tmp_path, flag_enabled=True))
            # Requests keep flowing while the reload happens: none may be dropped.
            posting = asyncio.gather(*(post_flag(session, url, n) for n in range(10, 40)))
            bridge.proc.send_signal(signal.SIGHUP)
            statuses = await posting
            assert set(statuses) == {200}
            await eventually(lambda: both("reloaded"))
            second = await kept_flag(session, url, 2)
            await eventually(lambda: verdict(second) == "webhook_mapped")  # mapped now
            (started,) = bridge.events("started")  # the start line says what runs
            assert started["version"]
            assert started["config"] == str(path)
            assert started["destinations"] == {"default": "dry-run"}

            path.write_text("server:\n  port: [not a port\n", encoding="utf-8")
            bridge.proc.send_signal(signal.SIGHUP)
            # serve refuses it and passes nothing on: its mapping process keeps its config too
            await eventually(lambda: bool(bridge.events("reload_refused")))
            third = await kept_flag(session, url, 3)
            await eventually(lambda: verdict(third) == "webhook_mapped")  # the old config stays
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200
        assert await bridge.terminate() == 0
        (left,) = bridge.events("left")  # the stop line says what waits for the next start
        assert left["pending"] >= 1
    finally:
        await bridge.close()


class TestRestartNeeded:
    """Which changed settings a SIGHUP reports as needing a restart (the reload_needs_restart
    line): every section of the model that is not reloaded, derived, not listed by hand."""

    def test_restart_only_sections_are_reported(self) -> None:
        old = Config()
        fresh = old.model_copy(
            update={
                "server": ServerConfig(port=9001),
                "shutdown": ShutdownConfig(grace_secs=3.0),
                "mapping": MappingConfig(trait_prefix="x_"),
            }
        )
        assert restart_needed(old, fresh) == ["server.port", "shutdown.grace_secs"]
        assert restart_needed(old, old) == []

    def test_a_new_section_is_covered_without_a_list(self) -> None:
        class Wider(Config):
            extra: ShutdownConfig = ShutdownConfig()

        old = Wider()
        fresh = old.model_copy(update={"extra": ShutdownConfig(grace_secs=3.0)})
        assert restart_needed(old, fresh) == ["extra.grace_secs"]
        assert set(Config.model_fields) >= {entry.split(".")[0] for entry in RELOADABLE}


async def test_a_refused_reload_does_not_log_the_broken_line(tmp_path: Path) -> None:
    """Issue 12 item 12: a YAML syntax error on the password's line is logged by file, line
    and column; the password never reaches the log."""
    secret = "pw-reload-Q7v-secret"
    path = write_config(tmp_path / "config.yaml", config_data(tmp_path, flag_enabled=True))
    bridge = BridgeProcess(path)
    try:
        await bridge.start()
        assert bridge.proc is not None
        text = path.read_text(encoding="utf-8")
        path.write_text(text + f"extra:\n  password: {secret}: [\n", encoding="utf-8")
        bridge.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: bool(bridge.events("reload_refused")))
        (refused,) = bridge.events("reload_refused")
        assert "not valid YAML at line" in refused["problems"][0]
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()
    assert not [line for line in bridge.raw if secret in line]


class TestApply:
    """bridge.reload.apply on a built app's runtime: what it logs and what it keeps."""

    def test_a_reload_that_would_listen_open_is_refused_whole(self, tmp_path: Path) -> None:
        data = config_data(tmp_path, flag_enabled=True)
        data["server"] = {"port": 0, "host": "0.0.0.0"}
        path = write_config(tmp_path / "config.yaml", data)
        runtime = build_app(load(path, {}))[RUNTIME]
        before = runtime.config
        del data["auth"]["password"]  # no password while listening beyond loopback
        data["logging"]["level"] = "debug"
        write_config(path, data)
        with capture_logs() as lines:
            apply(runtime, str(path), {})
        (refused,) = [line for line in lines if line["event"] == "reload_refused"]
        assert "auth.password is not set" in refused["problems"][0]
        assert runtime.config is before  # nothing applied, not even the log level
