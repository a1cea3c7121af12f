"""Which store backs the bridge: SQLite at ``storage.path`` unless ``storage.url`` names
PostgreSQL. The one place that chooses, so ``serve`` and every operator command agree, and the
one place outside ``bridge/store`` that knows a backend: it also answers "may this ``serve``
start on it" (:func:`serve_guard`) and "how much disk is left" (:func:`free_disk_bytes`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from bridge.config import StorageConfig
from bridge.store import Store
from bridge.store.sqlite.lock import DatabaseInUseError, ServeLock
from bridge.store.sqlite.schema import DatabaseMissingError

__all__ = [
    "DatabaseInUseError",
    "DatabaseMissingError",
    "ServeGuard",
    "describe",
    "free_disk_bytes",
    "open_store",
    "serve_guard",
]


class ServeGuard(Protocol):
    """Held for a ``serve``'s life: ``acquire`` raises DatabaseInUseError when another holds it."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...


class _Shared:
    """PostgreSQL: replicas share the queue, nothing to hold."""

    def acquire(self) -> None:
        return None

    def release(self) -> None:
        return None


def serve_guard(storage: StorageConfig) -> ServeGuard:
    """One ``serve`` per SQLite file (its lock); none needed on PostgreSQL."""
    if storage.url is not None:
        return _Shared()
    return ServeLock(storage.path)


def free_disk_bytes(storage: StorageConfig) -> int | None:
    """Free bytes where the SQLite file lives; None on PostgreSQL (the database server's disk is
    its own to watch) or when the folder cannot be read."""
    if storage.url is not None:
        return None
    folder = storage.path.parent if storage.path.parent != Path("") else Path(".")
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def open_store(storage: StorageConfig, *, create: bool = True) -> Store:
    """The configured store, not opened yet (``await store.open()``). ``create=False``: a SQLite
    file must already hold a bridge database (operator commands on a mistyped path)."""
    if storage.url is not None:
        from bridge.store.postgres.store import PostgresStore  # asyncpg only when used

        return PostgresStore.from_config(storage)
    from bridge.store.sqlite.store import SQLiteStore

    return SQLiteStore.from_config(storage, create=create)


def describe(storage: StorageConfig) -> str:
    """Where the data lives, safe to print (a PostgreSQL URL's password is masked)."""
    if storage.url is not None:
        from bridge.config import masked_url

        return masked_url(storage.url.get_secret_value())
    return str(storage.path)
