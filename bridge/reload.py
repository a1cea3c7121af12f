"""SIGHUP: load the configuration again (file, environment, secret files) and apply what can
change under a running bridge.

What applies in place (:data:`RELOADABLE`): the mapping, routing and destinations (a new write
key included), the webhook credentials (a new password), the log level and format, the metrics
credentials and the Synap API settings. Everything else (the listening address, the storage,
delivery tuning, ...) needs a restart: a reload that finds such a setting changed leaves it as
it was and says so in a ``reload_needs_restart`` line naming it; it is never reported as
reloaded. The ``reloaded`` line lists the settings that changed, by name, never their values.
A new configuration that does not load (or would listen beyond loopback without a password) is
refused whole with a ``reload_refused`` line and the old one kept.

The process environment cannot change under a running process: a secret meant to be reloaded
lives in a file (``BRIDGE_<SETTING>_FILE``, systemd credentials; :mod:`bridge.secretfiles`),
which each reload reads again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bridge import config as config_module
from bridge import logs, personal
from bridge.config import Config
from bridge.delivery.sinks import build_sinks
from bridge.errors import ConfigError
from bridge.receive.runtime import Runtime
from bridge.systemd import Notifier

log = logs.get(__name__)

#: What SIGHUP applies in place: whole sections, or ``section.setting``. Every other setting
#: needs a restart (:func:`restart_needed`), so one added to Config is covered without a list.
RELOADABLE = (
    "mapping",
    "routing",
    "segment",
    "logging",
    "auth",
    "synap",
    "metrics.username",
    "metrics.password",
)


def settings(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Every setting of ``model`` by dotted name (``routing.destinations.b.write_key``), with
    its value (secrets stay ``SecretStr``, which compare by value and never print it)."""
    flat: dict[str, Any] = {}
    for name in type(model).model_fields:
        _flatten(getattr(model, name), f"{prefix}{name}", flat)
    return flat


def _flatten(value: Any, name: str, flat: dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        flat.update(settings(value, f"{name}."))
    elif isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{name}.{key}", flat)
    else:
        flat[name] = value


def changed(old: Config, fresh: Config) -> list[str]:
    """The settings whose value differs (added and removed ones included), by name."""
    before, after = settings(old), settings(fresh)
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


def reloadable(name: str) -> bool:
    return any(name == entry or name.startswith(f"{entry}.") for entry in RELOADABLE)


def restart_needed(old: Config, fresh: Config) -> list[str]:
    """The changed settings a reload cannot apply."""
    return [name for name in changed(old, fresh) if not reloadable(name)]


def merged(old: Config, fresh: Config) -> Config:
    """``old`` with every reloadable setting taken from ``fresh``."""
    update: dict[str, Any] = {}
    for entry in RELOADABLE:
        section, _, field = entry.partition(".")
        if not field:
            update[section] = getattr(fresh, section)
        else:
            base = update.get(section, getattr(old, section))
            value = getattr(getattr(fresh, section), field)
            update[section] = base.model_copy(update={field: value})
    return old.model_copy(update=update)


def reload(runtime: Runtime, config_path: str | None, notifier: Notifier | None = None) -> None:
    """Apply the reloadable settings of a freshly loaded configuration, or keep the old one."""
    if notifier is not None:
        notifier.reloading()
    try:
        apply(runtime, config_path, os.environ)
    finally:
        if notifier is not None:
            notifier.ready()


def apply(runtime: Runtime, config_path: str | None, environ: Mapping[str, str]) -> None:
    path = str(Path(config_module.config_path(config_path, environ)))
    try:
        fresh = config_module.load(config_path, environ)
    except ConfigError as exc:
        log.error("reload_refused", problems=exc.problems, path=path)
        return
    old = runtime.config
    updated = merged(old, fresh)
    problem = updated.listen_problem()
    if problem is not None:
        log.error("reload_refused", problems=[problem], path=path)
        return
    frozen = restart_needed(old, fresh)
    if frozen:
        log.warning(
            "reload_needs_restart",
            settings=frozen,
            detail="not applied: these settings take effect at the next restart",
        )
    applied = changed(old, updated)
    runtime.config = updated
    logs.configure(updated.logging.level, updated.logging.format)
    personal.configure(full=updated.logging.dry_run_full)
    if runtime.delivery is not None and any(
        name.startswith(("segment.", "routing.")) for name in applied
    ):
        runtime.delivery.replace_sinks(build_sinks(updated))
    if runtime.supervisor is not None:  # the mapping process reloads its mapping and routing
        runtime.supervisor.signal(signal.SIGHUP)
    log.info("reloaded", changed=applied, dry_run=updated.dry_run, path=path)
