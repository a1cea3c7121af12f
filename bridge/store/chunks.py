"""The store's bulk writes in bounded chunks: one rule, both backends.

Deleting old rows (``prune_delivered``, the delivery loop's retention; ``purge_dead``) and
replaying dead letters touch any number of rows. Done in one transaction, they would hold
SQLite's single writer, or PostgreSQL's row locks, for as long as that takes, and intake would
wait behind them. So both backends do it in chunks of at most :data:`CHUNK` rows, each written
in its own short transaction. The loops are written here once; each backend brings only its
statements and how it runs a transaction. Pure: no driver is imported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from bridge.messages import OutgoingMessage
from bridge.store import DeadReason, Remapper, ReplayOutcome, Webhook

#: Rows per transaction for the bulk writes, so intake is never held up for long.
CHUNK = 2000

#: A dead letter to replay: (letter id, its webhook's row id, the webhook).
Source = tuple[int, int, Webhook]
#: Its remapped result: (letter id, webhook row id, the new messages or why it is still dead).
Remapped = tuple[int, int, Sequence[OutgoingMessage] | DeadReason]


async def delete_in_chunks(delete_chunk: Callable[[int], Awaitable[int]]) -> int:
    """Repeat ``delete_chunk(CHUNK)`` (one transaction deleting at most that many rows; how many
    it deleted) until a round deletes fewer than a chunk; the total. Bounded: each round deletes
    rows, and the rows it looks at only shrink."""
    total = 0
    while True:
        deleted = await delete_chunk(CHUNK)
        total += deleted
        if deleted < CHUNK:
            return total


async def replay_in_chunks(
    letters: Sequence[int],
    read_sources: Callable[[Sequence[int]], Awaitable[Sequence[Source]]],
    write_outcomes: Callable[[Sequence[Remapped]], Awaitable[tuple[int, int, int]]],
    remap: Remapper,
) -> ReplayOutcome:
    """Replay ``letters`` a chunk at a time: read the chunk's webhooks, remap them here, on the
    caller's loop, then write the outcomes in one transaction (``write_outcomes`` answers the
    chunk's replayed, still dead and messages counts); their sum."""
    replayed = still_dead = made = 0
    for start in range(0, len(letters), CHUNK):
        sources = await read_sources(letters[start : start + CHUNK])
        outcomes = [(letter, row, remap(webhook)) for letter, row, webhook in sources]
        done, failed, revived = await write_outcomes(outcomes)
        replayed, still_dead, made = replayed + done, still_dead + failed, made + revived
    return ReplayOutcome(replayed=replayed, still_dead=still_dead, messages=made)
