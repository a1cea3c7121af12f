"""Secrets from files: ``BRIDGE_<SETTING>_FILE`` variables and systemd credentials.

Docker and Kubernetes mount secrets as files and name them in ``<VARIABLE>_FILE``; systemd's
``LoadCredential=`` puts them in ``$CREDENTIALS_DIRECTORY`` (a private, root-provided tmpfs that
only the service sees). Both are folded here into plain ``BRIDGE_`` variables before the
configuration is read, so every other rule (validation, error naming) is the environment's:

* ``BRIDGE_SEGMENT__WRITE_KEY_FILE=/run/secrets/write_key`` sets ``segment.write_key``;
* a credential named after the setting's key, ``segment.write_key`` or
  ``routing.destinations.school_b.write_key`` (or with the ``synap-bridge_`` prefix systemd
  gives the files of a credential directory), sets that key.

Only secret settings (passwords, write keys, the token, the storage URL) come from files; a
``_FILE`` variable or a credential for anything else is an error that names it. A setting given
twice (a variable and a file, or a file and a credential) is an error too: which one wins would
be a guess. The file's content is taken verbatim except for one final line break (``echo`` and
editors add it). Errors name the variable and the path, never the content.

The files are read at each configuration load, so SIGHUP (:mod:`bridge.reload`) applies a new
write key or password put in them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from bridge.errors import ConfigError

PREFIX = "BRIDGE_"
SUFFIX = "_FILE"
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
#: The shipped unit loads a whole directory (``LoadCredential=synap-bridge:/etc/...``), which
#: systemd names ``synap-bridge_<file name>``; a credential loaded one by one has no prefix.
CREDENTIAL_PREFIX = "synap-bridge_"
#: A secret is small; a bigger file is a wrong path (a log, a database), not a key.
MAX_SECRET_BYTES = 64 * 1024

KeyPath = tuple[str, ...]


def resolve(
    environ: Mapping[str, str], is_secret: Callable[[KeyPath], bool]
) -> tuple[dict[str, str], dict[str, str]]:
    """``environ`` with every secret file read into its ``BRIDGE_`` variable, and, for each
    variable that came from a file, the name an error should give (the ``_FILE`` variable or
    the credential)."""
    resolved = {name: value for name, value in environ.items() if not _is_file_variable(name)}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for name, path in environ.items():
        if not _is_file_variable(name):
            continue
        target = name[: -len(SUFFIX)]
        _take(target, name, Path(path), resolved, sources, problems, is_secret)
    directory = environ.get(CREDENTIALS_DIRECTORY)
    if directory:
        for entry in _credentials(Path(directory), problems):
            setting = entry.name.removeprefix(CREDENTIAL_PREFIX)
            target = PREFIX + "__".join(setting.upper().split("."))
            label = f"credential {entry.name}"
            _take(target, label, entry, resolved, sources, problems, is_secret)
    if problems:
        raise ConfigError(problems)
    return resolved, sources


def _is_file_variable(name: str) -> bool:
    return name.startswith(PREFIX) and name.endswith(SUFFIX) and len(name) > len(PREFIX + SUFFIX)


def _credentials(directory: Path, problems: list[str]) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        problems.append(f"{CREDENTIALS_DIRECTORY}={directory}: cannot list ({exc.strerror})")
        return []


def _take(
    target: str,
    label: str,
    path: Path,
    resolved: dict[str, str],
    sources: dict[str, str],
    problems: list[str],
    is_secret: Callable[[KeyPath], bool],
) -> None:
    key = tuple(target[len(PREFIX) :].lower().split("__"))
    if not is_secret(key):
        problems.append(
            f"{label}: {'.'.join(key)} is not a secret setting (a file holds a secret only)"
        )
        return
    if target in resolved:
        other = sources.get(target, target)
        problems.append(f"{label}: {'.'.join(key)} is also set by {other}; set it once")
        return
    value = read_secret(path, label, problems)
    if value is not None:
        resolved[target] = value
        sources[target] = label


def read_secret(path: Path, label: str, problems: list[str]) -> str | None:
    """The file's text without one final line break, or None with a problem appended."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        problems.append(f"{label}: cannot read {path} ({exc.strerror or exc})")
        return None
    if len(raw) > MAX_SECRET_BYTES:
        problems.append(f"{label}: {path} is over {MAX_SECRET_BYTES} bytes: not a secret file")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{label}: {path} is not UTF-8 text (content not shown)")
        return None
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    return text
