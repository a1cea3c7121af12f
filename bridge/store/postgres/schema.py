"""The PostgreSQL schema, its versioned migrations, and asyncpg error translation.

Why the schema looks like this (it mirrors SQLite's v3 so the two stores behave alike):

* ``messages.id`` comes from a sequence: it gives the arrival order claims follow.
* ``messages.due_at`` is "when this row next needs attention": the due time of a pending row, the
  lease expiry of an in-flight one. One partial index over the open rows (pending + in flight)
  answers ``claim`` (``FOR UPDATE SKIP LOCKED``, so replicas take disjoint rows) and
  ``next_due_at``; a lease that expires makes its row claimable by the same query, so no replica
  has to rescue another's claims.
* ``messages.lease`` is the fencing token: every claim increments it, and ``ack`` /
  ``retry_later`` / ``bury`` apply only where it still equals the claimer's token, so a replica
  whose lease expired cannot overwrite a newer outcome.
* Counts without counting rows: ``stats`` runs every second on every replica, and counting a
  million open rows costs ~0.1 s each time. One counter row would serialise every writer of
  every replica, so ``counts`` has 16 shards; the statement that changes a message's class
  (enqueue: +open; ack: -open +delivered; bury: -open; replay: +open) adds to one shard chosen
  at random, and ``stats`` sums them. Only the in-flight rows (a few batches per replica) are
  counted, through their own partial index.
* Bodies live in ``message_payloads`` (written once), so the state changes rewrite ~100-byte rows.
* Intake writes each webhook and its messages in one statement, so ``messages.webhook_id`` has
  no foreign key: its check cost about a fifth of the insert (measured with EXPLAIN ANALYZE on
  250-webhook batches), and the one statement that writes both rows cannot break the link.
  Bodies are compressed with lz4 where the server has it (pglz, the default, cost a third of
  the webhook insert).
* Queue tables vacuum early (scale factors 0.01/0.02 instead of 0.2): a queue is mostly dead rows.
* ``bridge_schema`` holds the version; :data:`MIGRATIONS` one script per step, applied in one
  transaction under ``pg_advisory_xact_lock`` so replicas starting together do not race (a
  transaction-level lock also works behind PgBouncer in transaction mode).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from bridge.config import masked_url
from bridge.errors import StorageUnavailableError

#: pg_advisory_xact_lock key for migrations: "synapbr" in ASCII, any constant would do.
MIGRATION_LOCK = 0x73796E61706272
SHARDS = 16

_V1 = f"""
CREATE TABLE webhooks (
    id          bigserial PRIMARY KEY,
    code        text NOT NULL,
    portal_id   text,
    received_at double precision NOT NULL,
    raw_body    bytea NOT NULL
);
CREATE TABLE messages (
    id           bigserial PRIMARY KEY,
    webhook_id   bigint NOT NULL,  -- webhooks(id); no FK: see the module docstring
    message_id   text NOT NULL UNIQUE,
    destination  text NOT NULL,
    user_id      text NOT NULL,
    state        text NOT NULL CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
    attempts     integer NOT NULL DEFAULT 0,
    rank         integer NOT NULL DEFAULT 0,
    lease        bigint NOT NULL DEFAULT 0,
    due_at       double precision,
    enqueued_at  double precision NOT NULL,
    delivered_at double precision,
    last_error   text
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.02);
CREATE INDEX messages_open_due ON messages (due_at, id) WHERE state IN ('pending', 'inflight');
CREATE INDEX messages_open_age ON messages (enqueued_at) WHERE state IN ('pending', 'inflight');
CREATE INDEX messages_inflight ON messages (due_at) WHERE state = 'inflight';
CREATE INDEX messages_delivered ON messages (delivered_at) WHERE state = 'delivered';
CREATE INDEX messages_webhook ON messages (webhook_id);
CREATE TABLE message_payloads (
    id      bigint PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    payload bytea NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.02);
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    webhook_id  bigint NOT NULL REFERENCES webhooks(id),
    message_row bigint REFERENCES messages(id),
    reason      text NOT NULL,
    detail      text NOT NULL,
    attempts    integer NOT NULL,
    created_at  double precision NOT NULL
);
CREATE INDEX dead_letters_created ON dead_letters (created_at);
CREATE INDEX dead_letters_reason ON dead_letters (reason);
CREATE INDEX dead_letters_webhook ON dead_letters (webhook_id);
CREATE INDEX dead_letters_message ON dead_letters (message_row);
CREATE TABLE counts (
    shard     integer PRIMARY KEY,
    open      bigint NOT NULL DEFAULT 0,  -- pending + in flight
    delivered bigint NOT NULL DEFAULT 0,  -- lifetime total (pruning does not subtract)
    last_at   double precision            -- the latest delivery
);
INSERT INTO counts (shard) SELECT generate_series(0, {SHARDS - 1});
DO $lz4$ BEGIN
    ALTER TABLE webhooks ALTER COLUMN raw_body SET COMPRESSION lz4;
    ALTER TABLE message_payloads ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN others THEN
    NULL;  -- a server built without lz4 keeps its default (pglz)
END $lz4$;
"""

# v2: the indexes of the event search (``find_events``), as SQLite's v4: messages by user id,
# webhooks by receipt time and by code then time, and ``webhook_refs`` (the ids inside each body:
# ``id``, ``attempt.id``, ``test.id``/``objectId``, ``exam.id``/``objectId``,
# ``assignment.objectId``) kept by a trigger, so every writer (intake, replay) fills it and a
# search never parses stored bodies. ``bridge_webhook_refs`` returns nothing for a body that is
# not UTF-8 JSON (the error is caught inside): the trigger must never fail a commit. Existing
# webhooks are back-filled by the last statement. IF NOT EXISTS / OR REPLACE: safe to re-run.
_V2 = """
CREATE INDEX IF NOT EXISTS messages_user ON messages (user_id);
CREATE INDEX IF NOT EXISTS webhooks_received ON webhooks (received_at);
CREATE INDEX IF NOT EXISTS webhooks_code_received ON webhooks (code, received_at);
CREATE TABLE IF NOT EXISTS webhook_refs (
    ref        text NOT NULL,
    webhook_id bigint NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    PRIMARY KEY (ref, webhook_id)
);
CREATE INDEX IF NOT EXISTS webhook_refs_webhook ON webhook_refs (webhook_id);
CREATE OR REPLACE FUNCTION bridge_webhook_refs(body bytea) RETURNS SETOF text
LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    doc jsonb;
BEGIN
    BEGIN
        doc := convert_from(body, 'UTF8')::jsonb;
    EXCEPTION WHEN others THEN
        RETURN;
    END;
    IF jsonb_typeof(doc) <> 'object' THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT DISTINCT v.j #>> '{}' FROM (VALUES
        (doc -> 'id'), (doc -> 'attempt' -> 'id'), (doc -> 'test' -> 'id'),
        (doc -> 'test' -> 'objectId'), (doc -> 'exam' -> 'id'), (doc -> 'exam' -> 'objectId'),
        (doc -> 'assignment' -> 'objectId')
    ) AS v(j)
    WHERE jsonb_typeof(v.j) = 'string'
       OR (jsonb_typeof(v.j) = 'number' AND v.j #>> '{}' ~ '^-?[0-9]+$');
END
$fn$;
CREATE OR REPLACE FUNCTION bridge_webhook_refs_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO webhook_refs (ref, webhook_id)
    SELECT r, NEW.id FROM bridge_webhook_refs(NEW.raw_body) AS r
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS webhooks_refs_insert ON webhooks;
CREATE TRIGGER webhooks_refs_insert AFTER INSERT ON webhooks
    FOR EACH ROW EXECUTE FUNCTION bridge_webhook_refs_insert();
INSERT INTO webhook_refs (ref, webhook_id)
SELECT r, w.id FROM webhooks w, bridge_webhook_refs(w.raw_body) AS r
ON CONFLICT DO NOTHING;
"""

# v3: intake writes ``webhook_refs`` itself, in the statement that stores the webhooks, from the
# receiver's parse of each body (bridge/store/refs.py), so the row trigger goes. Why: the trigger
# parsed every body again as jsonb, inside a plpgsql exception block (a subtransaction) per row:
# 220 of the ~340 µs of server CPU per 6 KB webhook (groups of 64, tools in docs/benchmarks.md).
# ``bridge_webhook_refs`` stays: the statement still calls it for a webhook whose refs the bridge
# could not tell exactly (a float id), and it is the reference the Python extraction is tested
# against. A v2 bridge still running after this step (a rolling upgrade) stores its webhooks
# without refs (its statement relied on the trigger): those are found by every other search
# field, not by ``--ref``; docs/operations.md says to replace the replicas promptly.
# ``ROWS 7`` (a body has at most seven refs): with the default estimate of 1000 rows, the generic
# plan of the enqueue statement looked costlier than a custom one, so PostgreSQL planned it
# again on every call (``pg_prepared_statements``: 0 generic plans); that re-planning cost ~100
# µs of server CPU per webhook in groups of 12, the size ``serve`` forms at 64 connections.
_V3 = """
DROP TRIGGER IF EXISTS webhooks_refs_insert ON webhooks;
DROP FUNCTION IF EXISTS bridge_webhook_refs_insert();
ALTER FUNCTION bridge_webhook_refs(bytea) ROWS 7;
"""

# v4: keep first, judge after (as SQLite's v5). The receiver's statement stores the raw webhook
# and its ``unmapped`` row and notifies ``bridge_unmapped`` (delivered at COMMIT, so a mapper
# never wakes for a row it cannot see yet). Mappers of every replica take rows with
# ``FOR UPDATE SKIP LOCKED``, counting the try and leasing the row until ``taken_until`` (the
# database's clock, so replicas' clocks do not matter); ``lease`` is the take's fencing token,
# so a mapper whose lease ran out cannot record over the replica that took the row after it.
# ``tag`` names the mapping configuration of the replica that kept the webhook (a digest of its
# ``mapping`` and ``routing``): during a rolling deploy a replica maps only what a replica of
# its own configuration kept, and another's only once it has waited ``kept_at`` + 30 s (that
# replica is gone or stuck), so an old replica never maps with routes it does not know.
# Webhooks stored before v4 were mapped on arrival: the table starts empty.
_V4 = """
CREATE TABLE IF NOT EXISTS unmapped (
    webhook_id  bigint PRIMARY KEY,  -- webhooks(id); no FK, as messages
    tries       integer NOT NULL DEFAULT 0,
    lease       bigint NOT NULL DEFAULT 0,
    taken_until double precision,
    last_error  text,
    tag         text NOT NULL DEFAULT '',
    kept_at     double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
-- The exam tests exam.* webhooks named (bridge.store.postgres.exam_tests), in the same step.
CREATE TABLE IF NOT EXISTS bridge_exam_tests (
    portal     text NOT NULL,
    test_id    text NOT NULL,
    learned_at double precision NOT NULL,
    PRIMARY KEY (portal, test_id)
);
"""

# v5: the portal the mapping read from a body goes to ``webhook_portals`` (as SQLite's v6), not
# into the webhook's row: an UPDATE there wrote a new version of the whole row with its body
# (and a dead one for vacuum) per webhook. ``webhooks.portal_id`` stays what intake kept; readers
# show the mapped portal where there is one (bridge.store.rows.PORTAL). A v4 replica still
# running during a rolling upgrade keeps updating the webhook row: readers show that when no
# ``webhook_portals`` row exists, so both agree.
# ``webhook_portals`` has no foreign key to ``webhooks`` (as ``messages`` and ``unmapped``):
# a key check runs a trigger and locks the webhook's row (``FOR KEY SHARE``, itself a write) for
# every mapped webhook; the statement that deletes webhooks deletes their portal too
# (queries._DELETE_ORPHANS). A v4 replica deletes webhooks without it: such a row names no
# webhook (ids are never reused) and nothing reads it.
_V5 = """
CREATE TABLE IF NOT EXISTS webhook_portals (
    webhook_id bigint PRIMARY KEY,  -- webhooks(id); no FK, as messages
    portal_id  text
);
"""

# v6: the take of webhooks tried before goes through an index of its own (a handful of rows: in
# flight, or failed and waiting to be tried alone); it read the whole ``unmapped`` table, to
# find nothing, before every take of new webhooks.
_V6 = """
CREATE INDEX IF NOT EXISTS unmapped_tried ON unmapped (webhook_id) WHERE tries > 0;
"""

# v7: ``webhook_refs`` and ``message_payloads`` lose their foreign keys (as ``messages``,
# ``unmapped`` and ``webhook_portals`` have none). Each key ran a trigger per inserted row that
# locked the parent row (``FOR KEY SHARE``, itself a write to the parent's page): three refs and
# a payload per mapped webhook cost ~16 µs of server CPU per webhook of the ~125 µs it spends
# in all (docs/benchmarks.md). The statements that delete webhooks and messages delete their
# refs and payloads with them (queries._DELETE_ORPHANS, prune_delivered, delete_letters). A
# ref written for a webhook deleted meanwhile names nothing and finds nothing; with the key,
# it failed the mapping's whole transaction. A v6 replica still running during a rolling upgrade
# prunes without them: its refs and payloads stay behind, naming ids that are never reused, and
# nothing reads them.
_V7 = """
DO $fk$
DECLARE
    key record;
BEGIN
    FOR key IN
        SELECT conrelid::regclass AS tab, conname FROM pg_constraint
        WHERE contype = 'f' AND conrelid IN ('webhook_refs'::regclass, 'message_payloads'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', key.tab, key.conname);
    END LOOP;
END $fk$;
"""

#: ``MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
SCHEMA_VERSION = len(MIGRATIONS)


async def schema_version(conn: Any) -> int:
    """The database's schema version (0: no bridge tables yet)."""
    exists = await conn.fetchval("SELECT to_regclass('bridge_schema') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT max(version) FROM bridge_schema")
    return int(version or 0)


async def ensure_service_state(conn: Any) -> None:
    """The ``service_state`` table (bridge.servicestate), outside the versioned steps: created
    only when missing, so a role without CREATE rights never runs DDL once it exists."""
    if await conn.fetchval("SELECT to_regclass('service_state')") is None:
        await conn.execute(SERVICE_STATE)


#: One row per serving replica (bridge.store.postgres.servicestate).
SERVICE_STATE = """
CREATE TABLE IF NOT EXISTS service_state (
    process    text PRIMARY KEY,
    state      text NOT NULL,
    updated_at double precision NOT NULL
)
"""


async def migrate(conn: Any) -> tuple[int, int]:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction: (before, after).

    Refuses (StorageUnavailableError) a schema newer than this code: an older bridge must not
    write into tables it does not understand.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        before = await schema_version(conn)
        if before > SCHEMA_VERSION:
            raise StorageUnavailableError(
                f"database schema version {before} is newer than this bridge knows "
                f"({SCHEMA_VERSION}): upgrade the bridge"
            )
        await ensure_service_state(conn)
        if before == SCHEMA_VERSION:
            return before, before  # no DDL: a role without CREATE rights may run the bridge
        await conn.execute("CREATE TABLE IF NOT EXISTS bridge_schema (version integer NOT NULL)")
        for step in range(before, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[step])
        await conn.execute("DELETE FROM bridge_schema")
        await conn.execute("INSERT INTO bridge_schema VALUES ($1)", SCHEMA_VERSION)
    return before, SCHEMA_VERSION


#: What asyncpg and the OS raise when PostgreSQL cannot do the job now (translated below).
#: InternalClientError: asyncpg's protocol state broke with the connection (seen when the pool
#: resets a connection whose server died mid-query, ``pg_ctl restart`` under load).
FOREIGN_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def translate(exc: BaseException, doing: str, url: str) -> StorageUnavailableError:
    """An asyncpg/OS error as the one exception the rest of the bridge knows, password masked."""
    if isinstance(exc, StorageUnavailableError):
        return exc
    name = type(exc).__name__
    text = str(exc)
    secret = _password(url)
    if secret:
        text = text.replace(secret, "***")
    text = text.replace(url, masked_url(url))
    error = StorageUnavailableError(f"storage could not {doing}: PostgreSQL {name}: {text}")
    error.__cause__ = exc
    return error


def _password(url: str) -> str | None:
    _, _, rest = url.partition("://")
    head = rest.partition("?")[0]
    userinfo, at, _ = head.rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2] or None


def is_retryable(exc: BaseException | None) -> bool:
    """A deadlock or serialisation failure: the same transaction may succeed if run again."""
    return isinstance(exc, asyncpg.DeadlockDetectedError | asyncpg.SerializationError)


def is_connection_problem(exc: BaseException | None) -> bool:
    """The server or the link failed (not this data): trying items one by one will not help."""
    return isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | asyncpg.OperatorInterventionError
        | asyncpg.ReadOnlySQLTransactionError
        | OSError
        | TimeoutError,
    )
