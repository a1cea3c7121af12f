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

Once lost, always lost: every write and read fails with :class:`DatabaseFileLostError` (a
:class:`~bridge.errors.StorageUnavailableError`, answered 503; ``/readyz`` fails) until the
process is restarted and opens whatever the path names then. Nothing is written into the old
file any more.
"""

from __future__ import annotations

import os
from pathlib import Path

from bridge import logs
from bridge.errors import StorageUnavailableError

log = logs.get(__name__)

#: An idle writer checks the path at most this often (a busy one checks after every commit).
IDLE_CHECK_SECS = 1.0


class DatabaseFileLostError(StorageUnavailableError):
    """The database path no longer names the file this process opened."""

    code = "database_file_lost"


class FileIdentity:
    """The (device, inode) of the open database file, and whether the path still names it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._identity: tuple[int, int] | None = None
        self._companions: dict[Path, tuple[int, int]] = {}  # our -wal and -shm
        self.lost: str | None = None  # why, once the path stopped naming our file

    def remember(self) -> None:
        """Right after the writer opened the file: this is the file we write."""
        self._identity = _identity(self.path)

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
        """Look at the path now; raise (and log once) if it no longer names our file."""
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
            if (found.st_dev, found.st_ino) == self._identity:
                return
            how = "replaced"
        self.lost = (
            f"the database file {self.path} was {how} while the bridge was running; "
            "nothing more is accepted until the bridge is restarted"
        )
        moved = self._move_companions_aside() if how == "replaced" else []
        log.error(
            "database_file_lost", path=str(self.path), how=how, moved_aside=moved, detail=self.lost
        )
        raise DatabaseFileLostError(self.lost)

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
