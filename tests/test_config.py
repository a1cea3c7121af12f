"""Configuration: file, environment override, unknown keys, bad values, masking, exit 78."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from bridge import config
from bridge.app import WEBHOOK_ROUTE
from bridge.cli import command as cli
from bridge.errors import ConfigError
from bridge.synap.codes import CODE_PATTERN

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class TestLoad:
    def test_shipped_config_yaml_is_valid_and_complete(self) -> None:
        loaded = config.load(REPO / "config.yaml", {})
        assert loaded == config.Config()  # the file documents the defaults, nothing else

    def test_file_values(self, tmp_path: Path) -> None:
        path = write(tmp_path, "server:\n  port: 9001\nsegment:\n  gzip: false\n")
        loaded = config.load(path, {})
        assert loaded.server.port == 9001
        assert loaded.segment.gzip is False
        assert loaded.server.host == "127.0.0.1"

    def test_environment_wins_over_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, "server:\n  port: 9001\n")
        env = {
            "BRIDGE_SERVER__PORT": "9002",
            "BRIDGE_SEGMENT__WRITE_KEY": "wk",
            "BRIDGE_DELIVERY__BATCH__TIMEOUT_SECS": "0.25",
            "BRIDGE_AUTH__PASSWORD": "pw",
        }
        loaded = config.load(path, env)
        assert loaded.server.port == 9002
        assert loaded.segment.write_key is not None
        assert loaded.segment.write_key.get_secret_value() == "wk"
        assert loaded.delivery.batch.timeout_secs == 0.25
        assert not loaded.dry_run

    def test_path_precedence(self, tmp_path: Path) -> None:
        env_file = write(tmp_path, "server:\n  port: 1111\n")
        explicit = tmp_path / "explicit.yaml"
        explicit.write_text("server:\n  port: 2222\n")
        env = {"BRIDGE_CONFIG": str(env_file)}
        assert config.load(None, env).server.port == 1111
        assert config.load(explicit, env).server.port == 2222

    def test_named_file_missing_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="not found"):
            config.load(tmp_path / "nope.yaml", {})

    def test_unknown_key_in_file_is_named(self, tmp_path: Path) -> None:
        path = write(tmp_path, "segment:\n  writekey: x\n")
        with pytest.raises(ConfigError) as caught:
            config.load(path, {})
        assert caught.value.problems == ["segment.writekey: unknown key"]

    def test_unknown_environment_key_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as caught:
            config.load(write(tmp_path, ""), {"BRIDGE_SEGMENT__WRTIE_KEY": "x"})
        # Item 13 of issue 12: the variable is named (the file is not at fault).
        assert caught.value.problems == [
            "BRIDGE_SEGMENT__WRTIE_KEY (segment.wrtie_key): unknown key"
        ]

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("server:\n  port: http\n", "server.port"),
            ("server:\n  port: 70000\n", "server.port"),
            ("logging:\n  format: xml\n", "logging.format"),
            ("segment:\n  endpoint: api.segment.io\n", "segment.endpoint"),
            ("delivery:\n  batch:\n    max_events: 3000\n", "delivery.batch.max_events"),
        ],
    )
    def test_bad_value_names_the_key(self, tmp_path: Path, text: str, key: str) -> None:
        with pytest.raises(ConfigError) as caught:
            config.load(write(tmp_path, text), {})
        assert any(problem.startswith(f"{key}:") for problem in caught.value.problems)

    def test_not_a_mapping(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="mapping of sections"):
            config.load(write(tmp_path, "- a\n- b\n"), {})


class TestSegmentEndpoint:
    """A wrong endpoint answered 404 to every upload; now it is refused at load, by name."""

    @pytest.mark.parametrize(
        "endpoint",
        [
            "https://api.segment.io/v1",
            "https://api.segment.io/v1/batch",
            "https://api.segment.io/v1/",
            "http://api.segment.io",  # the write key in clear
            "https://api.segment.io?x=1",
            "https://user:pw@api.segment.io",
            "ftp://api.segment.io",
        ],
    )
    def test_wrong_endpoint_is_a_config_error_naming_the_key(
        self, tmp_path: Path, endpoint: str
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            config.load(write(tmp_path, f"segment:\n  endpoint: {endpoint}\n"), {})
        assert [p.split(":")[0] for p in caught.value.problems] == ["segment.endpoint"]

    def test_routed_destination_endpoint_is_checked_too(self, tmp_path: Path) -> None:
        text = "routing:\n  destinations:\n    eu:\n      endpoint: https://x.example/v1\n"
        with pytest.raises(ConfigError) as caught:
            config.load(write(tmp_path, text), {})
        assert caught.value.problems[0].startswith("routing.destinations.eu.endpoint:")

    @pytest.mark.parametrize(
        "endpoint",
        [
            "https://api.segment.io",
            "https://events.eu1.segmentapis.com/",
            "http://127.0.0.1:8081",
            "http://localhost:9000",
            "http://[::1]:9000",
            "https://proxy.example/segment",
        ],
    )
    def test_base_urls_pass(self, endpoint: str) -> None:
        loaded = config.parse({"segment": {"endpoint": endpoint}})
        assert loaded.segment.endpoint == endpoint.rstrip("/")

    def test_total_timeout_must_exceed_the_read_timeout(self) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse({"segment": {"timeout_secs": 20, "total_timeout_secs": 20}})
        assert caught.value.problems[0].startswith("segment.total_timeout_secs:")
        assert config.Config().segment.total_timeout_secs == 30.0


class TestSafety:
    def test_no_password_refuses_public_address(self) -> None:
        public = config.parse({"server": {"host": "0.0.0.0"}})
        problem = public.listen_problem()
        assert problem is not None
        assert "auth.password" in problem
        assert config.parse({"server": {"host": "::1"}}).listen_problem() is None
        secured = config.parse({"server": {"host": "0.0.0.0"}, "auth": {"password": "x"}})
        assert secured.listen_problem() is None

    def test_masked_hides_every_secret(self) -> None:
        loaded = config.parse(
            {
                "auth": {"password": "hunter2"},
                "segment": {"write_key": "wk-secret"},
                "metrics": {"password": "mp-secret"},
                "routing": {"destinations": {"b": {"write_key": "wk-b-secret"}}},
            }
        )
        text = repr(config.masked(loaded))
        for secret in ("hunter2", "wk-secret", "mp-secret", "wk-b-secret"):
            assert secret not in text
        assert config.masked(loaded)["auth"]["password"] == "***"


class TestCheckConfigCommand:
    def test_prints_masked_effective_config(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("BRIDGE_SEGMENT__WRITE_KEY", "wk-very-secret")
        monkeypatch.setenv("BRIDGE_SERVER__PORT", "8123")
        out = io.StringIO()
        status = cli.main(["--config", str(write(tmp_path, "")), "check-config"], out=out)
        assert status == 0
        assert "port: 8123" in out.getvalue()
        assert "wk-very-secret" not in out.getvalue()
        assert "write_key: '***'" in out.getvalue()

    def test_the_templates_placeholders_and_a_short_password_are_refused(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Issue 23: the secrets template's ``change-me`` passed check-config silently."""
        template = Path(__file__).resolve().parent.parent / "systemd" / "synap-bridge.env.example"
        env = dict(
            line.lstrip("#").strip().split("=", 1)
            for line in template.read_text().splitlines()
            if line.lstrip("#").strip().startswith("BRIDGE_")
        )
        path = write(tmp_path, "")
        with monkeypatch.context() as patched:
            for name, value in env.items():
                patched.setenv(name, value)
            assert cli.main(["--config", str(path), "check-config"]) == cli.EX_CONFIG
        err = capsys.readouterr().err
        assert f"invalid configuration ({path})" in err  # names the file given with --config
        for key in ("auth.password", "segment.write_key", "metrics.password"):
            assert f"{key}: still the template's placeholder" in err
        assert "auth.password: shorter than 16 characters" in err

        short = write(tmp_path, "auth:\n  password: fifteen-chars-x\n")
        assert cli.main(["--config", str(short), "check-config"]) == cli.EX_CONFIG
        assert "auth.password: shorter than 16" in capsys.readouterr().err
        long = write(tmp_path, "auth:\n  password: sixteen-chars-xy\n")
        assert cli.main(["--config", str(long), "check-config"], out=io.StringIO()) == 0

    def test_config_option_after_subcommand(self, tmp_path: Path) -> None:
        out = io.StringIO()
        path = write(tmp_path, "server:\n  port: 8124\n")
        assert cli.main(["check-config", "--config", str(path)], out=out) == 0
        assert "port: 8124" in out.getvalue()

    def test_bad_config_exits_78_naming_the_key(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = write(tmp_path, "server:\n  prot: 1\n")
        assert cli.main(["--config", str(path), "check-config"]) == cli.EX_CONFIG
        assert "server.prot: unknown key" in capsys.readouterr().err

    def test_serve_refuses_bad_config_with_78(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = write(tmp_path, "server:\n  port: -1\n")
        assert cli.main(["--config", str(path), "serve"]) == cli.EX_CONFIG
        assert "server.port" in capsys.readouterr().err

    def test_serve_refuses_public_address_without_password(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = write(tmp_path, f"server:\n  host: 0.0.0.0\nstorage:\n  path: {tmp_path}/db\n")
        assert cli.main(["--config", str(path), "serve"]) == cli.EX_CONFIG
        assert "auth.password" in capsys.readouterr().err
        assert not (tmp_path / "db").exists()  # refused before opening anything


class TestEventLoop:
    def test_serve_runs_on_uvloop(self) -> None:
        """``serve`` runs its coroutine on uvloop (the benchmark's event-loop share shrank)."""

        async def which_loop() -> int:
            return 1 if isinstance(asyncio.get_running_loop(), uvloop.Loop) else 0

        assert cli.run_event_loop(which_loop()) == 1


class TestCodePattern:
    def test_a_configured_code_is_one_the_route_accepts(self) -> None:
        """One pattern for both: a code the configuration accepts can always be posted to."""
        loaded = config.parse({"mapping": {"exam_results_released_code": "2exam.released"}})
        assert loaded.mapping.exam_results_released_code == "2exam.released"
        assert f"{{code:{CODE_PATTERN}}}" in WEBHOOK_ROUTE
        with pytest.raises(ConfigError, match="exam_results_released_code"):
            config.parse({"mapping": {"exam_results_released_code": ".starts-with-a-dot"}})


class TestEnvironmentValues:
    """Issue 12 item 13: a string setting from a variable is taken verbatim, never as YAML."""

    @pytest.mark.parametrize(
        "value",
        ["abc #def", '"quoted"', "'single'", "  spaced out  ", "yes", "123456", "null", "~", "[x"],
    )
    @pytest.mark.parametrize(
        ("variable", "read"),
        [
            ("BRIDGE_AUTH__PASSWORD", lambda c: c.auth.password),
            ("BRIDGE_SEGMENT__WRITE_KEY", lambda c: c.segment.write_key),
            ("BRIDGE_METRICS__PASSWORD", lambda c: c.metrics.password),
            (
                "BRIDGE_ROUTING__DESTINATIONS__B__WRITE_KEY",
                lambda c: c.routing.destinations["b"].write_key,
            ),
        ],
    )
    def test_secrets_are_verbatim(
        self, tmp_path: Path, variable: str, read: Callable[[config.Config], Any], value: str
    ) -> None:
        loaded = config.load(write(tmp_path, ""), {variable: value})
        secret = read(loaded)
        assert secret is not None
        assert secret.get_secret_value() == value

    def test_other_strings_are_verbatim(self, tmp_path: Path) -> None:
        env = {
            "BRIDGE_AUTH__USERNAME": "123",
            "BRIDGE_STORAGE__PATH": "/data/a #b.db",
            "BRIDGE_SERVER__HOST": "::1",
            "BRIDGE_LOGGING__LEVEL": "DEBUG",
        }
        loaded = config.load(write(tmp_path, ""), env)
        assert loaded.auth.username == "123"
        assert loaded.storage.path == Path("/data/a #b.db")
        assert loaded.server.host == "::1"
        assert loaded.logging.level == "debug"

    def test_non_string_settings_are_parsed(self, tmp_path: Path) -> None:
        env = {
            "BRIDGE_SERVER__PORT": "9002",
            "BRIDGE_SEGMENT__GZIP": "false",
            "BRIDGE_MAPPING__DROP_PROPERTIES": "[a, b]",
            "BRIDGE_MAPPING__CODES__FLAG.PLANTED__ENABLED": "no",
            "BRIDGE_SERVER__TRUSTED_PROXIES": "[10.0.0.0/8]",
        }
        loaded = config.load(write(tmp_path, ""), env)
        assert loaded.server.port == 9002
        assert loaded.segment.gzip is False
        assert loaded.mapping.drop_properties == ("a", "b")
        assert loaded.mapping.codes["flag.planted"].enabled is False
        assert [str(n) for n in loaded.server.trusted_proxies] == ["10.0.0.0/8"]

    @pytest.mark.parametrize(
        "variable",
        [
            "BRIDGE_AUTH__PASSWORD",
            "BRIDGE_SEGMENT__WRITE_KEY",
            "BRIDGE_METRICS__PASSWORD",
            "BRIDGE_ROUTING__DESTINATIONS__B__WRITE_KEY",
        ],
    )
    def test_an_empty_secret_is_an_error_naming_the_variable(
        self, tmp_path: Path, variable: str
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            config.load(write(tmp_path, ""), {variable: ""})
        (problem,) = caught.value.problems
        assert problem.startswith(f"{variable} (")
        assert "must not be empty" in problem

    def test_an_empty_secret_in_the_file_is_an_error_too(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as caught:
            config.load(write(tmp_path, 'auth:\n  password: ""\n'), {})
        assert caught.value.problems[0].startswith("auth.password:")
        # No value at all still means "not set" (authentication off, loopback only).
        assert config.load(write(tmp_path, "auth:\n  password:\n"), {}).auth.password is None

    def test_a_bad_variable_is_named_not_the_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("BRIDGE_SERVER__PORT", "eighty")
        path = write(tmp_path, "server:\n  host: 127.0.0.1\n")
        assert cli.main(["--config", str(path), "check-config"]) == cli.EX_CONFIG
        err = capsys.readouterr().err
        assert "BRIDGE_SERVER__PORT (server.port)" in err
        assert str(path) not in err


class TestYamlSyntaxErrors:
    """Issue 12 item 12: file, line and column; never the content (it may be a password)."""

    SECRET = "hunter2-Zx9-secret"

    def broken(self, tmp_path: Path) -> Path:
        return write(tmp_path, f"server:\n  port: 8080\nauth:\n  password: {self.SECRET}: [\n")

    def test_error_names_file_line_and_column_only(self, tmp_path: Path) -> None:
        path = self.broken(tmp_path)
        with pytest.raises(ConfigError) as caught:
            config.load(path, {})
        (problem,) = caught.value.problems
        assert problem.startswith(f"{path}: not valid YAML at line 4, column ")
        assert self.SECRET not in problem
        assert self.SECRET[:4] not in str(caught.value.__cause__ or "")

    def test_check_config_does_not_print_the_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = self.broken(tmp_path)
        assert cli.main(["--config", str(path), "check-config"]) == cli.EX_CONFIG
        out = capsys.readouterr()
        assert "line 4" in out.err
        assert self.SECRET not in out.out + out.err
