"""Secrets from files (``BRIDGE_<SETTING>_FILE``, systemd credentials), and SIGHUP applying a
new write key and webhook password from them in a real ``serve`` without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.config import load
from bridge.errors import ConfigError
from tests.conftest import USER, basic_auth, eventually, fixture_body
from tests.fakes import FakeSegment
from tests.process import BridgeProcess, write_config


def secret(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return str(path)


class TestFileVariables:
    def test_every_secret_setting_comes_from_its_file(self, tmp_path: Path) -> None:
        environ = {
            "BRIDGE_SEGMENT__WRITE_KEY_FILE": secret(tmp_path / "wk", "key-from-file\n"),
            "BRIDGE_AUTH__PASSWORD_FILE": secret(tmp_path / "pw", "a password #with spaces"),
            "BRIDGE_STORAGE__URL_FILE": secret(tmp_path / "url", "postgresql://b:p@db/b\r\n"),
            "BRIDGE_SYNAP__TOKEN_FILE": secret(tmp_path / "tok", "tok\n\n"),
            "BRIDGE_METRICS__PASSWORD_FILE": secret(tmp_path / "mp", "metrics-pass"),
        }
        config = load(None, environ)
        assert config.segment.write_key is not None
        assert config.segment.write_key.get_secret_value() == "key-from-file"
        assert config.auth.password is not None
        assert config.auth.password.get_secret_value() == "a password #with spaces"
        assert config.storage.url is not None
        assert config.storage.url.get_secret_value() == "postgresql://b:p@db/b"
        assert config.synap.token is not None
        assert config.synap.token.get_secret_value() == "tok\n"  # one final line break only
        assert config.metrics.password is not None

    def test_a_routed_destination_key_from_a_file(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path / "config.yaml",
            {"routing": {"destinations": {"school_b": {"portal_ids": ["p2"]}}}},
        )
        environ = {
            "BRIDGE_ROUTING__DESTINATIONS__SCHOOL_B__WRITE_KEY_FILE": secret(tmp_path / "k", "kb")
        }
        config = load(path, environ)
        key = config.routing.destinations["school_b"].write_key
        assert key is not None
        assert key.get_secret_value() == "kb"

    def test_errors_name_the_variable_and_path_never_the_content(self, tmp_path: Path) -> None:
        missing = tmp_path / "absent"
        with pytest.raises(ConfigError) as caught:
            load(None, {"BRIDGE_SEGMENT__WRITE_KEY_FILE": str(missing)})
        assert caught.value.problems == [
            f"BRIDGE_SEGMENT__WRITE_KEY_FILE: cannot read {missing} (No such file or directory)"
        ]
        empty = secret(tmp_path / "empty", "\n")
        with pytest.raises(ConfigError) as caught:
            load(None, {"BRIDGE_SEGMENT__WRITE_KEY_FILE": empty})
        (problem,) = caught.value.problems
        assert problem.startswith("BRIDGE_SEGMENT__WRITE_KEY_FILE (segment.write_key): must not")

    def test_a_setting_given_twice_or_not_secret_is_refused(self, tmp_path: Path) -> None:
        key = secret(tmp_path / "wk", "hidden-key-value")
        with pytest.raises(ConfigError) as caught:
            load(
                None,
                {"BRIDGE_SEGMENT__WRITE_KEY": "other", "BRIDGE_SEGMENT__WRITE_KEY_FILE": key},
            )
        assert "also set by BRIDGE_SEGMENT__WRITE_KEY" in caught.value.problems[0]
        with pytest.raises(ConfigError) as caught:
            load(None, {"BRIDGE_SERVER__HOST_FILE": key})
        assert caught.value.problems == [
            "BRIDGE_SERVER__HOST_FILE: server.host is not a secret setting"
            " (a file holds a secret only)"
        ]
        assert "hidden-key-value" not in str(caught.value.problems)


class TestSystemdCredentials:
    def test_credentials_are_read_by_setting_name(self, tmp_path: Path) -> None:
        creds = tmp_path / "creds"
        creds.mkdir()
        secret(creds / "segment.write_key", "cred-key\n")
        secret(creds / "synap-bridge_auth.password", "cred-password-long")  # a unit's directory
        config = load(None, {"CREDENTIALS_DIRECTORY": str(creds)})
        assert config.segment.write_key is not None
        assert config.segment.write_key.get_secret_value() == "cred-key"
        assert config.auth.password is not None
        assert config.auth.password.get_secret_value() == "cred-password-long"

    def test_the_credentials_flag_reads_them_for_a_command(self, tmp_path: Path) -> None:
        """``--credentials DIR``: an operator command sees the service's secrets."""
        creds = tmp_path / "creds"
        creds.mkdir()
        secret(creds / "synap-bridge_auth.password", "a-password-of-some-length\n")
        config = write_config(tmp_path / "config.yaml", {"server": {"host": "0.0.0.0"}})
        argv = [sys.executable, "-m", "bridge", "--config", str(config), "check-config"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        refused = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        assert refused.returncode == 78  # no password: must not listen beyond loopback
        argv[5:5] = ["--credentials", str(creds)]
        ran = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        assert ran.returncode == 0, ran.stderr
        assert "password: '***'" in ran.stdout
        assert "a-password-of-some-length" not in ran.stdout + ran.stderr

    def test_an_unknown_or_doubled_credential_is_an_error(self, tmp_path: Path) -> None:
        creds = tmp_path / "creds"
        creds.mkdir()
        secret(creds / "segment.write_kye", "x")
        with pytest.raises(ConfigError) as caught:
            load(None, {"CREDENTIALS_DIRECTORY": str(creds)})
        assert caught.value.problems == [
            "credential segment.write_kye: segment.write_kye is not a secret setting"
            " (a file holds a secret only)"
        ]
        (creds / "segment.write_kye").rename(creds / "segment.write_key")
        with pytest.raises(ConfigError) as caught:
            load(None, {"CREDENTIALS_DIRECTORY": str(creds), "BRIDGE_SEGMENT__WRITE_KEY": "y"})
        assert "also set by BRIDGE_SEGMENT__WRITE_KEY" in caught.value.problems[0]


async def _post(session: aiohttp.ClientSession, url: str, password: str, n: int) -> int:
    body = fixture_body("user.registered")
    body["objectId"] = f"usr_{n}"
    headers = basic_auth(USER, password)
    async with session.post(
        f"{url}/webhooks/synap/user.registered", json=body, headers=headers
    ) as r:
        return r.status


async def test_sighup_applies_a_new_write_key_and_password_from_files(
    tmp_path: Path, fake_segment: FakeSegment
) -> None:
    """A wrong write key (Segment answers 401) fixed in its file and a rotated webhook password
    take effect on SIGHUP; the reload line names them without their values; a changed storage
    path is refused as needing a restart, never reported as reloaded."""
    old_password, new_password = "first-password-0123456789", "second-password-9876543210"
    key_file = tmp_path / "write_key"
    password_file = tmp_path / "password"
    secret(key_file, "wrong-key\n")
    secret(password_file, old_password + "\n")
    data = {
        "server": {"port": 0},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "segment": {"endpoint": fake_segment.url},
        "logging": {"format": "json"},
        "delivery": {"retry": {"initial_backoff_secs": 60, "max_backoff_secs": 60}},
    }
    path = write_config(tmp_path / "config.yaml", data)
    env = {
        "BRIDGE_SEGMENT__WRITE_KEY_FILE": str(key_file),
        "BRIDGE_AUTH__PASSWORD_FILE": str(password_file),
    }
    bridge = BridgeProcess(path, env)
    try:
        url = f"http://127.0.0.1:{await bridge.start()}"
        assert bridge.proc is not None
        async with aiohttp.ClientSession() as session:
            assert await _post(session, url, old_password, 1) == 200
            # The bridge has recorded the refusal (not only the fake sent it): a reload before
            # that would see the old key's batch pause the new destination.
            await eventually(lambda: any(b["status"] == 401 for b in bridge.events("batch")))
            assert fake_segment.rejected[0][0] == 401

            secret(key_file, fake_segment.write_key + "\n")
            secret(password_file, new_password + "\n")
            write_config(path, {**data, "storage": {"path": str(tmp_path / "other.db")}})
            bridge.proc.send_signal(signal.SIGHUP)

            # serve's own line (its mapping process says "reloaded" too, for the mapping, and
            # its line may come first)
            def serves() -> list[dict[str, Any]]:
                return [line for line in bridge.events("reloaded") if "stage" not in line]

            await eventually(lambda: bool(serves()))
            (reloaded,) = serves()
            assert reloaded["changed"] == ["auth.password", "segment.write_key"]
            (restart,) = bridge.events("reload_needs_restart")
            assert restart["settings"] == ["storage.path"]

            assert await _post(session, url, old_password, 2) == 401
            assert await _post(session, url, new_password, 3) == 200
            await fake_segment.wait_for(2)  # the new webhook's messages, with the new key
        assert await bridge.terminate() == 0
    finally:
        await bridge.close()
    for line in bridge.raw:
        for value in (old_password, new_password, "wrong-key", fake_segment.write_key):
            assert value not in line
