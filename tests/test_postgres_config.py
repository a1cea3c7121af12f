"""Choosing PostgreSQL from the configuration, and the operator commands against it: the URL's
password is masked everywhere (check-config, errors, the commands' output), the example config
in deploy/ loads, ``migrate`` creates and then confirms the schema."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from bridge import config
from bridge.cli import command as cli
from bridge.store.factory import describe, open_store
from bridge.store.postgres.store import PostgresStore
from bridge.store.sqlite.store import SQLiteStore
from tests.pgcluster import Cluster, with_password

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "examples" / "postgres.yaml"
SECRET = "hunter2-not-for-logs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class TestSelection:
    def test_a_postgresql_url_selects_postgres(self) -> None:
        cfg = config.parse({"storage": {"url": "postgresql://u:p@db/bridge"}})
        assert isinstance(open_store(cfg.storage), PostgresStore)
        assert describe(cfg.storage) == "postgresql://u:***@db/bridge"

    def test_no_url_keeps_sqlite_at_its_path(self, tmp_path: Path) -> None:
        cfg = config.parse({"storage": {"path": str(tmp_path / "b.db")}})
        assert isinstance(open_store(cfg.storage), SQLiteStore)

    def test_the_url_comes_from_the_environment(self) -> None:
        cfg = config.load(None, {"BRIDGE_STORAGE__URL": "postgres://u:p@h/d"})
        assert cfg.storage.url is not None
        assert cfg.storage.url.get_secret_value() == "postgres://u:p@h/d"
        assert "p@h" not in repr(cfg)

    def test_another_scheme_is_refused_without_echoing_the_password(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = write(tmp_path, f"storage:\n  url: mysql://u:{SECRET}@h/d\n")
        assert cli.main(["--config", str(path), "check-config"]) == cli.EX_CONFIG
        err = capsys.readouterr().err
        assert "storage.url" in err
        assert SECRET not in err


class TestCheckConfig:
    def test_the_password_is_masked(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BRIDGE_STORAGE__URL", f"postgresql://bridge:{SECRET}@db:5432/bridge")
        out = io.StringIO()
        assert cli.main(["--config", str(write(tmp_path, "")), "check-config"], out=out) == 0
        assert SECRET not in out.getvalue()
        assert "url: postgresql://bridge:***@db:5432/bridge" in out.getvalue()

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            # An unencoded "?" in the password: before, printed whole.
            (
                "postgresql://bridge:pw?{s}@db:5432/bridge",
                "postgresql://bridge:***@db:5432/bridge",
            ),
            # sslpassword (the client key's passphrase): before, never masked.
            (
                "postgresql://bridge@db/bridge?sslmode=verify-full&sslpassword={s}",
                "postgresql://bridge@db/bridge?sslmode=verify-full&sslpassword=***",
            ),
            (
                "postgresql://bridge:a/b@c?{s}@db/bridge?password={s}",
                "postgresql://bridge:***@db/bridge?password=***",
            ),
        ],
    )
    def test_every_form_of_password_is_masked(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, shown: str
    ) -> None:
        monkeypatch.setenv("BRIDGE_STORAGE__URL", url.format(s=SECRET))
        out = io.StringIO()
        assert cli.main(["--config", str(write(tmp_path, "")), "check-config"], out=out) == 0
        assert SECRET not in out.getvalue()
        assert f"url: {shown}" in out.getvalue()

    def test_the_deploy_example_loads(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BRIDGE_AUTH__PASSWORD", "a-password-long-enough")
        out = io.StringIO()
        assert cli.main(["--config", str(EXAMPLE), "check-config"], out=out) == 0
        shown = yaml.safe_load(out.getvalue())
        assert shown["storage"]["url"].startswith("postgresql://bridge@db.internal:5432/")
        assert shown["server"]["host"] == "0.0.0.0"

    def test_the_compose_file_runs_two_replicas_on_one_database(self) -> None:
        compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
        services = compose["services"]
        assert {"db", "bridge-1", "bridge-2"} <= set(services)
        for name in ("bridge-1", "bridge-2"):
            assert "BRIDGE_STORAGE__URL" in services[name]["environment"]


class TestOperatorCommands:
    def test_migrate_then_stats(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: Cluster
    ) -> None:
        monkeypatch.setenv("BRIDGE_STORAGE__URL", with_password(postgres.new_database(), SECRET))
        path = str(write(tmp_path, ""))
        out = io.StringIO()
        assert cli.main(["--config", path, "migrate"], out=out) == 0
        assert "migrated from version 0" in out.getvalue()
        out = io.StringIO()
        assert cli.main(["--config", path, "migrate"], out=out) == 0
        assert "already current" in out.getvalue()
        out = io.StringIO()
        assert cli.main(["--config", path, "stats", "--json"], out=out) == 0
        assert '"pending": 0' in out.getvalue()
        out = io.StringIO()
        assert cli.main(["--config", path, "dead-letters", "list"], out=out) == 0
        assert "0 dead letter(s)" in out.getvalue()
        assert SECRET not in out.getvalue()

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://u:{s}@127.0.0.1:1/d",
            "postgresql://u:pw?{s}@127.0.0.1:1/d",
            "postgresql://u@127.0.0.1:1/d?sslpassword={s}",
        ],
    )
    def test_an_unreachable_database_is_reported_with_the_password_masked(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        url: str,
    ) -> None:
        monkeypatch.setenv("BRIDGE_STORAGE__URL", url.format(s=SECRET))
        monkeypatch.setenv("BRIDGE_STORAGE__CONNECT_TIMEOUT_SECS", "2")
        out = io.StringIO()
        assert cli.main(["--config", str(write(tmp_path, "")), "stats"], out=out) == 1
        err = capsys.readouterr().err
        assert "storage unavailable" in err
        assert SECRET not in err + out.getvalue()
