"""Does the database path still name the file the store opened?

Deleting the database file (``rm``, a clean-up script) or replacing it (``mv backup.db
bridge.db``) under a running ``serve`` does not stop SQLite: its open descriptors keep writing
into the old inode, which is gone once the process ends. Every webhook acknowledged after that
moment would be lost, with nothing in the log. So the store remembers the file's device and
inode when it opens it, and compares them with what the path names now:

* after every COMMIT, on the writer's thread, before anyone is answered: a commit that went
  into a file the path no longer names is not acknowledged (a ``stat`` per group commit, about
  a microsecond beside the commit's fsync);
* when the writer has been idle for :data:`IDLE_CHECK_SECS`, so an idle bridge notices too and
  says so in its log.

The checkpointer's and the reader's connections are opened lazily, by path: each checks first,
because a connection opened on a replacement file would take our ``-wal`` and ``-shm`` (same
names) for its own and copy our pages into the replacement.

Replaced: our ``-wal`` and ``-shm`` still sit beside the new file under the names SQLite looks
for, and SQLite opens an existing ``-wal`` whatever the database header says, so the next
opener (the restarted bridge) would read our old pages as the new file's and checkpoint them
into it. The moment the replacement is seen, both are moved aside (``<name>-wal.orphaned``),
if they are still the files this store opened (same inode).

Overwritten in place (``cp backup.db bridge.db``, ``truncate -s 0``): same device and inode,
so the comparison above does not see it, yet SQLite's pages under our WAL are gone and the next
checkpoint mixes both into a malformed file. The bridge never makes the file smaller (no
``VACUUM``, no auto-vacuum) and its first 16 bytes are SQLite's magic string, so each check
also compares the size with the largest seen and reads the magic through a descriptor on our
inode: a shrunk file, or one that no longer starts as SQLite, is lost (``how=overwritten``).
The companions are moved aside as for a replacement, no checkpoint copies our pages into the
restored file afterwards (the checkpointer asks first, and every connection of ours is told
not to checkpoint when it closes, :func:`no_checkpoint_on_close`), and nothing more is
acknowledged. A restored file at least as large as the live one, with the magic, is not seen
here: ``PRAGMA quick_check`` at the next start is the net (``schema.check_sound``).

Once lost, always lost: every write and read fails with :class:`DatabaseFileLostError` (a
:class:`~bridge.errors.StorageUnavailableError`, answered 503; ``/readyz`` fails) until the
process is restarted and opens whatever the path names then. Nothing is written into the old
file any more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sqlite3
import threading
from pathlib import Path

from bridge import logs
from bridge.errors import StorageUnavailableError

log = logs.get(__name__)

#: An idle writer checks the path at most this often (a busy one checks after every commit).
IDLE_CHECK_SECS = 1.0
#: The first 16 bytes of every SQLite database file.
MAGIC = b"SQLite format 3\x00"
#: ``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`` (sqlite3.h).
NO_CKPT_ON_CLOSE = 1006


class DatabaseFileLostError(StorageUnavailableError):
    """The database path no longer names the file this process opened."""

    code = "database_file_lost"


class FileIdentity:
    """The (device, inode) of the open database file, and whether the path still names it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._identity: tuple[int, int] | None = None
        self._companions: dict[Path, tuple[int, int]] = {}  # our -wal and -shm
        self._fd: int | None = None  # read-only, on our inode: for the magic
        self._largest = 0  # the file never shrinks while it is ours
        self._connections: list[sqlite3.Connection] = []  # three, for the life of the store
        self.lost: str | None = None  # why, once the path stopped naming our file
        self._asking = threading.Lock()

    def remember(self) -> None:
        """Right after the writer opened the file: this is the file we write."""
        self._identity = _identity(self.path)
        self.forget()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._largest = os.fstat(self._fd).st_size

    def forget(self) -> None:
        """Close the descriptor kept for the magic (when the store closes)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def watch(self, conn: sqlite3.Connection) -> None:
        """One of our connections: told not to checkpoint on close if the file is overwritten."""
        self._connections.append(conn)

    def remember_companions(self) -> None:
        """Once the schema is in place (the WAL exists): these are our -wal and -shm."""
        for suffix in ("-wal", "-shm"):
            companion = Path(f"{self.path}{suffix}")
            try:
                self._companions[companion] = _identity(companion)
            except FileNotFoundError:
                continue

    def refuse(self) -> None:
        """Raise if the file was found lost before (no system call: the cheap check)."""
        if self.lost is not None:
            raise DatabaseFileLostError(self.lost)

    def confirm(self) -> None:
        """Look at the path now; raise (and log once) if it no longer names our file.

        The writer and the checkpointer both ask: one at a time, so the loss is logged once.
        """
        with self._asking:
            self._confirm()

    def _confirm(self) -> None:
        self.refuse()
        if self._identity is None:
            return
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            how = "deleted"
        except OSError:  # cannot tell (say, permissions changed): not a reason to stop
            return
        else:
            if (found.st_dev, found.st_ino) != self._identity:
                how = "replaced"
            elif self._overwritten(found.st_size):
                how = "overwritten"
                for conn in list(self._connections):
                    no_checkpoint_on_close(conn)
            else:
                return
        self.lost = (
            f"the database file {self.path} was {how} while the bridge was running; "
            "nothing more is accepted until the bridge is restarted"
        )
        moved = self._move_companions_aside() if how != "deleted" else []
        log.error(
            "database_file_lost", path=str(self.path), how=how, moved_aside=moved, detail=self.lost
        )
        raise DatabaseFileLostError(self.lost)

    def _overwritten(self, size: int) -> bool:
        """Same inode, other content: shrunk, or no longer starting with SQLite's magic."""
        if size < self._largest:
            return True
        self._largest = size
        if self._fd is None or size < len(MAGIC):
            return False
        try:
            return os.pread(self._fd, len(MAGIC), 0) != MAGIC
        except OSError:
            return False

    def _move_companions_aside(self) -> list[str]:
        """Our -wal and -shm, away from the names the replacement's openers look for."""
        moved = []
        for companion, identity in self._companions.items():
            try:
                if _identity(companion) != identity:
                    continue  # not ours (the replacement brought its own)
                aside = companion.with_name(companion.name + ".orphaned")
                os.replace(companion, aside)
            except OSError:
                continue
            moved.append(str(aside))
        return moved


def _identity(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return (found.st_dev, found.st_ino)


def no_checkpoint_on_close(conn: sqlite3.Connection) -> bool:
    """Tell ``conn`` not to copy the WAL into the database file when it closes.

    Closing the last connection checkpoints; into an overwritten file that would mix our pages
    with the restored ones. Python 3.12 has ``setconfig``; on 3.11 the call goes through the
    same ``libsqlite3`` the ``sqlite3`` module is linked with (``sqlite3_db_config`` on the
    handle, the first field after the object header). False when neither is possible.
    """
    setconfig = getattr(conn, "setconfig", None)
    if setconfig is not None:  # pragma: no cover - Python 3.12+
        setconfig(NO_CKPT_ON_CLOSE, True)
        return True
    lib = _libsqlite3()
    if lib is None:  # pragma: no cover - a statically linked sqlite3 module
        return False
    handle = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
    if not handle:
        return False
    done = lib.sqlite3_db_config(
        ctypes.c_void_p(handle), ctypes.c_int(NO_CKPT_ON_CLOSE), ctypes.c_int(1), None
    )
    return int(done) == 0


def _libsqlite3() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("sqlite3")
    if name is None:  # pragma: no cover
        return None
    lib = ctypes.CDLL(name)
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:  # pragma: no cover
        return None  # another copy than the module's: its handles are not ours to pass
    return lib
