"""The store contract: behaviour every :class:`bridge.store.Store` backend must have.

Each test in this package takes the ``store`` fixture, which is parametrized over every backend
in :data:`BACKENDS`: a new backend only adds a factory here to run the whole contract. Tests use
only the protocol (no SQL, no file paths); backend-only behaviour (WAL, checkpoints, file faults,
advisory locks) lives in that backend's own test module.

Nothing here depends on a backend's timing: times are passed in (``now``), and every wait is on
an awaited call. ``recover()`` is not in the contract: SQLite releases every claim it finds at
start (one ``serve`` per file), a store shared by live replicas releases none and relies on lease
expiry; each backend's own module tests its meaning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bridge.store import Store
from bridge.store.postgres.store import PostgresStore
from bridge.store.sqlite.store import SQLiteStore
from tests import pgcluster

StoreFactory = Callable[[], Awaitable[Store]]


async def _sqlite(tmp_path: Path) -> Store:
    return SQLiteStore(tmp_path / "contract.db")


async def _postgres(tmp_path: Path) -> Store:  # noqa: ARG001 - BACKENDS' factory signature
    """A fresh database in the session's throwaway cluster (tests/pgcluster.py)."""
    return PostgresStore(pgcluster.shared().new_database(), pool_size=4)


#: backend name -> how to make a fresh, empty, not yet opened store of it in tmp_path.
BACKENDS: dict[str, Callable[[Path], Awaitable[Store]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await BACKENDS[request.param](tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
