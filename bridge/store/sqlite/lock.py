"""One ``serve`` per SQLite database: an OS lock on ``<database>.lock`` for the process's life.

Why: two ``serve`` processes on one file both deliver, and each releases the other's claims at
start-up (``recover``), so messages go out twice and leases mean nothing. The operator commands
(``stats``, ``dead-letters``) do not take the lock: WAL lets them work beside the one ``serve``.

Why ``flock``: the kernel drops the lock when the process ends, however it ends (SIGKILL
included), so a stale lock can never block a restart. Why a file of its own: the database file
may be deleted or replaced under a running ``serve`` (:mod:`bridge.store.sqlite.identity`), and a
lock on it would go with it; the lock file is never deleted (deleting it would let two processes
lock two different files of one name). It holds the holder's pid, for the message the second
``serve`` gives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from bridge.errors import StorageUnavailableError


class DatabaseInUseError(StorageUnavailableError):
    """Another process holds the database's serve lock."""

    code = "database_in_use"

    def __init__(self, lock_path: Path, holder: str) -> None:
        who = f"pid {holder}" if holder else "another process"
        super().__init__(
            f"another synap-bridge serve ({who}) is using this database; it holds {lock_path}. "
            "Only one serve may run per SQLite file: stop the other one first"
        )
        self.lock_path = lock_path
        self.holder = holder


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class ServeLock:
    """``acquire()`` once at start-up; the lock goes with the process (or ``release()``)."""

    def __init__(self, database: Path) -> None:
        self.path = lock_path(Path(database))
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting, or raise :class:`DatabaseInUseError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DatabaseInUseError(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor drops the flock
