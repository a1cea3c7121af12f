"""Which store backs the bridge: SQLite at ``storage.path`` unless ``storage.url`` names
PostgreSQL. The one place that chooses, so ``serve`` and every operator command agree."""

from __future__ import annotations

from bridge.config import StorageConfig
from bridge.store import Store


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
