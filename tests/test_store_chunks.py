"""The bulk-write rule both store backends share (:mod:`bridge.store.chunks`), at its edges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from bridge.messages import OutgoingMessage
from bridge.store import DeadReason, ReplayOutcome, Webhook
from bridge.store.chunks import CHUNK, Remapped, Source, delete_in_chunks, replay_in_chunks


async def test_deletes_until_a_round_deletes_less_than_a_chunk() -> None:
    left = 2 * CHUNK  # exactly two chunks: a third round finds nothing
    rounds: list[int] = []

    async def delete_chunk(limit: int) -> int:
        nonlocal left
        deleted = min(limit, left)
        left -= deleted
        rounds.append(deleted)
        return deleted

    assert await delete_in_chunks(delete_chunk) == 2 * CHUNK
    assert rounds == [CHUNK, CHUNK, 0]


async def test_one_short_round_is_the_last() -> None:
    rounds: list[int] = []

    async def delete_chunk(limit: int) -> int:
        rounds.append(limit)
        return 3

    assert await delete_in_chunks(delete_chunk) == 3
    assert rounds == [CHUNK]


async def test_replay_reads_remaps_and_writes_a_chunk_at_a_time() -> None:
    letters = list(range(1, CHUNK + 3))
    read: list[Sequence[int]] = []
    written: list[Sequence[Remapped]] = []
    dead = DeadReason("unmappable", "still")

    async def read_sources(chunk: Sequence[int]) -> list[Source]:
        read.append(chunk)
        return [(letter, 100 + letter, Webhook("c", "p", 1.0, b"%d" % letter)) for letter in chunk]

    async def write_outcomes(outcomes: Sequence[Remapped]) -> tuple[int, int, int]:
        written.append(outcomes)
        failed = sum(isinstance(result, DeadReason) for _, _, result in outcomes)
        return len(outcomes) - failed, failed, 2 * (len(outcomes) - failed)

    def remap(webhook: Webhook) -> Sequence[OutgoingMessage] | DeadReason:
        return dead if webhook.raw_body == b"1" else []

    outcome = await replay_in_chunks(letters, read_sources, write_outcomes, remap)
    assert [list(chunk) for chunk in read] == [letters[:CHUNK], letters[CHUNK:]]
    assert [len(chunk) for chunk in written] == [CHUNK, 2]
    assert written[0][0] == (1, 101, dead)
    assert written[1][-1] == (CHUNK + 2, CHUNK + 102, [])
    assert outcome == ReplayOutcome(replayed=CHUNK + 1, still_dead=1, messages=2 * (CHUNK + 1))


async def test_no_letters_no_transaction() -> None:
    async def never(_: Sequence[object]) -> NoReturn:
        raise AssertionError("no chunk to read or write")

    assert await replay_in_chunks([], never, never, lambda _: []) == ReplayOutcome(0, 0, 0)
