"""The SQLite schema, its migrations, the connection settings, and sqlite3 error translation.

Why the schema looks like this (a 1,000,000-message backlog must stay cheap to work on):

* ``messages.id`` is AUTOINCREMENT, so ids are never reused and give the arrival order.
* ``messages.due_at`` means "when this row next needs attention": for a pending message when it
  falls due, for an in-flight one when its lease expires (a crashed claim comes back by itself).
  One partial index over the open rows (pending + in flight) therefore answers ``claim`` and
  ``next_due_at`` in O(log n), whichever state the due rows are in.
* Counting a million index entries is too slow for a stats call every few seconds, so triggers
  keep per-state counts (and a lifetime delivered total) in ``counters``: exact whoever writes
  (the daemon or the CLI), and cheap (docs/benchmarks.md).
* The message bodies (~2 KB each) live in ``message_payloads``, not in ``messages`` (v2). SQLite
  rewrites a whole row when any column changes, and a message changes state twice on its way
  (claimed, delivered): with the body inside, each change rewrote about a page per message into
  the WAL. With the body apart, ``messages`` rows are ~100 bytes, tens to a page, and claim + ack
  became about three times faster (docs/benchmarks.md). The body is written once and deleted
  with its message (cascade).
* ``messages.rank`` (v3) says how complete a message is, for the hold-and-supersede of exam
  attempts (see ``enqueue`` in :mod:`bridge.store.sqlite.queries`).
* ``PRAGMA user_version`` numbers the schema; :data:`MIGRATIONS` holds one script per version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.errors import StorageUnavailableError
from bridge.store.sqlite import exam_tests

SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

_V1 = """
CREATE TABLE webhooks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    code        TEXT NOT NULL,
    portal_id   TEXT,
    received_at REAL NOT NULL,
    raw_body    BLOB NOT NULL
);
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  INTEGER NOT NULL REFERENCES webhooks(id),
    message_id  TEXT NOT NULL UNIQUE,
    destination TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    payload     BLOB NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      REAL,  -- pending: due time; inflight: lease expiry; otherwise NULL
    enqueued_at REAL NOT NULL,
    delivered_at REAL,
    last_error  TEXT
);
CREATE INDEX messages_open_due ON messages(due_at) WHERE state IN ('pending', 'inflight');
CREATE INDEX messages_open_age ON messages(enqueued_at) WHERE state IN ('pending', 'inflight');
CREATE INDEX messages_delivered ON messages(delivered_at) WHERE state = 'delivered';
CREATE INDEX messages_webhook ON messages(webhook_id);

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  INTEGER NOT NULL REFERENCES webhooks(id),
    message_row INTEGER REFERENCES messages(id),  -- NULL: the whole webhook did not map
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    created_at  REAL NOT NULL
);
CREATE INDEX dead_letters_created ON dead_letters(created_at);
CREATE INDEX dead_letters_reason ON dead_letters(reason);
CREATE INDEX dead_letters_webhook ON dead_letters(webhook_id);
CREATE INDEX dead_letters_message ON dead_letters(message_row);

-- Message counts by class, so stats() is O(1) on a million rows. Triggers count inserts and
-- deletes. State changes are counted by the three statements that make them (ack, bury,
-- revive in sqlite_ops, one counter update per statement): a per-row update trigger doubled
-- the store's work per delivered message. "open" is pending + in flight together, so a claim
-- changes no count; the in-flight count comes from its own small partial index.
CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counters VALUES ('open', 0), ('delivered', 0), ('dead', 0), ('delivered_total', 0);
CREATE INDEX messages_inflight ON messages(due_at) WHERE state = 'inflight';
CREATE TRIGGER messages_count_insert AFTER INSERT ON messages BEGIN
    UPDATE counters SET n = n + 1 WHERE name =
        CASE WHEN NEW.state IN ('pending', 'inflight') THEN 'open' ELSE NEW.state END;
END;
CREATE TRIGGER messages_count_delete AFTER DELETE ON messages BEGIN
    UPDATE counters SET n = n - 1 WHERE name =
        CASE WHEN OLD.state IN ('pending', 'inflight') THEN 'open' ELSE OLD.state END;
END;

CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT INTO meta VALUES ('writable_probe', 0), ('last_delivered_at', NULL);
"""

_V2 = """
CREATE TABLE message_payloads (
    id      INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    payload BLOB NOT NULL  -- the Segment message, the exact JSON sent
);
INSERT INTO message_payloads (id, payload) SELECT id, payload FROM messages;
ALTER TABLE messages DROP COLUMN payload;
"""

#: v3: how complete a pending message is. An exam attempt's ``attempt.*`` message (rank 0, held
#: a few seconds) is replaced in place by the ``exam.*`` one (rank 1) of the same messageId
#: while it is still pending (bridge.store.Store.enqueue). Existing rows are rank 0.
_V3 = """
ALTER TABLE messages ADD COLUMN rank INTEGER NOT NULL DEFAULT 0;
"""

# v4: the indexes of the event search (``find_events``), each answering one of its fields in
# O(log n) on a million messages (docs/operations.md has the figures):
# * messages by user id; webhooks by receipt time, and by code then time (newest first);
# * ``webhook_refs``: the ids inside each body (``id``, ``attempt.id``, ``test.id`` /
#   ``objectId``, ``exam.id`` / ``objectId``, ``assignment.objectId``), extracted once when the
#   webhook is stored, by a trigger: every writer (intake, replay) keeps it, and the intake code
#   is not touched. Searching the bodies with json_extract at query time would parse every
#   stored body (1M x 2-8 KB) on each search. One json_extract with several paths parses a body
#   once. A body that is not JSON text, or an id that is not a string or integer, is skipped,
#   never an error: the trigger must never fail a commit. Rows go with their webhook (ON DELETE
#   CASCADE). Existing webhooks are back-filled by the last statement.
# Every statement is IF NOT EXISTS, so the step is safe to merge beside another step.
_V4 = """
CREATE INDEX IF NOT EXISTS messages_user ON messages(user_id);
CREATE INDEX IF NOT EXISTS webhooks_received ON webhooks(received_at);
CREATE INDEX IF NOT EXISTS webhooks_code_received ON webhooks(code, received_at);
CREATE TABLE IF NOT EXISTS webhook_refs (
    ref        TEXT NOT NULL,
    webhook_id INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    PRIMARY KEY (ref, webhook_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_refs_webhook ON webhook_refs(webhook_id);
CREATE TRIGGER IF NOT EXISTS webhooks_refs_insert AFTER INSERT ON webhooks BEGIN
    INSERT OR IGNORE INTO webhook_refs (ref, webhook_id)
    SELECT DISTINCT j.value, NEW.id FROM json_each(
        CASE WHEN json_valid(CAST(NEW.raw_body AS TEXT)) THEN json_extract(
            CAST(NEW.raw_body AS TEXT), '$.id', '$.attempt.id', '$.test.id', '$.test.objectId',
            '$.exam.id', '$.exam.objectId', '$.assignment.objectId')
        ELSE '[]' END) j
    WHERE j.type IN ('text', 'integer');
END;
INSERT OR IGNORE INTO webhook_refs (ref, webhook_id)
SELECT DISTINCT j.value, w.id FROM webhooks w, json_each(
    CASE WHEN json_valid(CAST(w.raw_body AS TEXT)) THEN json_extract(
        CAST(w.raw_body AS TEXT), '$.id', '$.attempt.id', '$.test.id', '$.test.objectId',
        '$.exam.id', '$.exam.objectId', '$.assignment.objectId')
    ELSE '[]' END) j
WHERE j.type IN ('text', 'integer');
"""

# v5: keep first, judge after. The receiver commits the raw webhook and a row in ``unmapped``;
# the mapping stage takes those rows in order, writes the messages (or the dead letter) and the
# refs, and deletes the row, in one transaction. ``tries`` is counted when a row is taken,
# before the mapping runs, so a webhook that kills its mapper is known by its count after a
# restart (poison isolation). ``unmapped`` rows are ~30 bytes: marking a webhook mapped never
# rewrites its body's pages. The refs move from the insert trigger (a json parse inside the
# receiver's commit) to the mapping stage, which has parsed the body anyway. Every webhook
# stored before v5 was mapped when it arrived, so the table starts empty.
_V5 = """
CREATE TABLE IF NOT EXISTS unmapped (
    webhook_id INTEGER PRIMARY KEY REFERENCES webhooks(id) ON DELETE CASCADE,
    tries      INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
DROP TRIGGER IF EXISTS webhooks_refs_insert;
"""

# v6: the portal the mapping read from a body goes to ``webhook_portals``, not into the webhook's
# own row. Why: a webhook row holds its ~6 KB body, and SQLite rewrites a whole record (its
# overflow pages too) when one column changes size, so setting ``portal_id`` after the fact cost
# ~12 KB of WAL per webhook, a quarter of what the mapping process wrote (docs/benchmarks.md).
# ``webhooks.portal_id`` stays what intake kept (the ``?portal=`` hint); readers show the mapped
# portal where there is one (:data:`bridge.store.rows.PORTAL`). Rows go with their webhook.
_V6 = """
CREATE TABLE IF NOT EXISTS webhook_portals (
    webhook_id INTEGER PRIMARY KEY REFERENCES webhooks(id) ON DELETE CASCADE,
    portal_id  TEXT
);
"""

#: ``MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(
    path: Path,
    *,
    synchronous: str,
    busy_timeout_secs: float,
    max_page_count: int | None = None,
    readonly: bool = False,
    autocheckpoint: bool = True,
) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT ourselves), WAL, foreign keys.

    ``autocheckpoint=False``: this connection's commits never checkpoint the WAL; something else
    must (:mod:`bridge.store.sqlite.checkpoint`).
    """
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
    conn = sqlite3.connect(
        path, timeout=busy_timeout_secs, isolation_level=None, cached_statements=256
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_secs * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            if not autocheckpoint:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
    except BaseException:
        conn.close()
        raise
    return conn


class DatabaseMissingError(StorageUnavailableError):
    """No bridge database where one must already be (an operator command on a mistyped path)."""

    code = "database_missing"


def migrate(conn: sqlite3.Connection, *, create: bool = True) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`, one transaction per step; the version.

    ``create=False``: a file without the bridge's schema (an empty or unrelated SQLite file) is
    refused instead of being given one.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == 0 and not create:
            raise DatabaseMissingError("the file is not a bridge database (it has no schema)")
        if version > SCHEMA_VERSION:
            raise StorageUnavailableError(
                f"database schema version {version} is newer than this bridge knows "
                f"({SCHEMA_VERSION}): upgrade the bridge"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[step]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
        exam_tests.create(conn)  # a table without a version step (bridge.store.sqlite.exam_tests)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    """Split a script into statements (executescript would COMMIT our transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [statement for statement in statements if statement]


_PLAIN_WORDS = {
    "SQLITE_FULL": "disk full (or the database size limit reached)",
    "SQLITE_BUSY": "database locked by another connection past busy_timeout",
    "SQLITE_LOCKED": "database table locked",
    "SQLITE_READONLY": "database is read-only",
    "SQLITE_IOERR": "I/O error",
    "SQLITE_CANTOPEN": "cannot open the database file",
    "SQLITE_CORRUPT": "database file is corrupt",
    "SQLITE_NOTADB": "file is not a database",
    "SQLITE_PERM": "permission denied",
}


class DatabaseCorruptError(StorageUnavailableError):
    """SQLite found the file malformed (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, a failed check).

    Waiting does not heal it: the store stays unready until an operator restores a sound
    file and restarts (docs/operations.md).
    """

    code = "database_corrupt"


#: At most this many of ``quick_check``'s findings are kept in the error.
CHECK_FINDINGS = 3


def check_sound(conn: sqlite3.Connection) -> None:
    """``PRAGMA quick_check`` at start: a malformed file is refused, never served.

    O(size of the file) without the index cross-checks of ``integrity_check``: about 0.6 s per GB
    in the page cache here. A restored backup copied over a live file is the case it catches.
    Not through a memory map, though it halves that time: every page of the file mapped would
    count in the process's resident size, and the peak RSS of ``serve`` would be the size of
    its database (2.1 GB with a backlog of 1,000,000 in ``make bench``) instead of ~85 MB.
    """
    findings = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    if findings != ["ok"]:
        shown = "; ".join(line.splitlines()[0] for line in findings[:CHECK_FINDINGS])
        raise DatabaseCorruptError(f"the database file is corrupt (quick_check: {shown})")


_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def is_busy(exc: BaseException) -> bool:
    """Waiting again would only wait another busy_timeout: do not retry item by item."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def translate(exc: BaseException, doing: str) -> StorageUnavailableError:
    """A sqlite3/OS error as the one exception the rest of the bridge knows about."""
    if isinstance(exc, StorageUnavailableError):
        return exc
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    base = name.split("_")[0:2]
    plain = _PLAIN_WORDS.get(name) or _PLAIN_WORDS.get("_".join(base), "storage error")
    kind = DatabaseCorruptError if name.startswith(_CORRUPT) else StorageUnavailableError
    error = kind(f"storage could not {doing}: {plain} ({name}: {exc})")
    error.__cause__ = exc  # as ``raise error from exc`` would, also when set on a future
    return error
