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

A name is not enough, though: through a symlinked path the second ``serve`` locked another
``.lock`` beside the link, and with the ``.lock`` deleted it created and locked a new one; each
time it then released 32 and 66 of the first one's claims in flight. So the lock file sits
beside the database's *real* path (symlinks resolved), a lock file deleted and made again
between our ``open`` and ``flock`` is detected (same inode or try again), and the database
file itself (its inode, created empty if missing: SQLite takes an empty file as a new
database) is ``flock``-ed too, which no deleted or renamed name can bypass. ``flock`` and
SQLite's own POSIX locks do not interact on a local file system.
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
    real = Path(os.path.realpath(database))
    return real.with_name(real.name + ".lock")


#: A lock file replaced between our open and our flock: try again this many times.
ATTEMPTS = 5


class ServeLock:
    """``acquire()`` once at start-up; the lock goes with the process (or ``release()``)."""

    def __init__(self, database: Path) -> None:
        self.database = Path(database)
        self.path = lock_path(self.database)
        self._fds: list[int] = []

    def acquire(self) -> None:
        """Take both locks without waiting, or raise :class:`DatabaseInUseError`."""
        self.database.parent.mkdir(parents=True, exist_ok=True)
        self.path = lock_path(self.database)
        fd = self._lock_file()
        try:
            real = Path(os.path.realpath(self.database))
            data = os.open(real, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except BaseException:
            os.close(fd)
            raise
        try:
            fcntl.flock(data, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # The database is held though our lock file was free: its .lock was deleted.
            os.close(data)
            os.close(fd)
            raise DatabaseInUseError(self.path, "") from None
        except BaseException:
            os.close(data)
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fds = [fd, data]

    def _lock_file(self) -> int:
        for _ in range(ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise DatabaseInUseError(self.path, holder) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # deleted or replaced after our open: lock what the name is now
        raise DatabaseInUseError(self.path, "")

    def release(self) -> None:
        fds, self._fds = self._fds, []
        if fds:
            with contextlib.suppress(OSError):
                os.ftruncate(fds[0], 0)
        for fd in fds:
            os.close(fd)  # closing the descriptor drops the flock
