"""Group commit for PostgreSQL: concurrent ``enqueue`` calls of one process share a transaction.

Why: a commit costs a WAL flush (and, with synchronous standbys, a network round trip); one per
webhook caps intake at a few thousand per second, while ten or more per commit reach the disk's
limit (docs/benchmarks.md). A few flusher tasks each take whatever calls are waiting (at most
``max_batch``) and commit them together; while they commit, the next calls gather. There is no
artificial delay: under light load a call commits alone at once.

Nobody is answered before COMMIT returns. If the shared transaction fails for the *data* (say a
value PostgreSQL refuses), each call is tried again in its own transaction so one bad item cannot
fail its neighbours; if it fails for the *server* (connection lost, even during COMMIT: the
outcome is unknown), every call gets StorageUnavailableError (503) and Synap's resend is absorbed
by the messageId. A deadlock between two replicas' batches is retried a few times.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

from bridge.errors import StorageUnavailableError
from bridge.store.postgres import queries as ops
from bridge.store.postgres.schema import is_connection_problem, is_retryable

#: A connection scope that translates foreign errors (``PostgresStore._connection``).
Connect = Callable[[str], AbstractAsyncContextManager[Any]]
DEADLOCK_RETRIES = 3

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupWriter(Generic[Item, Result]):
    """``op(conn, items)`` commits a group atomically (one statement or its own transaction):
    :func:`~bridge.store.postgres.queries.enqueue` by default, ``keep`` for the receiver."""

    def __init__(
        self,
        connect: Connect,
        *,
        flushers: int = 2,
        max_batch: int = 256,
        op: Callable[[Any, list[Item]], Awaitable[list[Result]]] | None = None,
    ) -> None:
        self._connect = connect
        self._flushers = flushers
        self._max_batch = max_batch
        self._op: Callable[[Any, list[Any]], Awaitable[list[Any]]] = op or ops.enqueue
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.commits = 0  # group transactions committed (fewer than enqueue calls under load)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"postgres-writer-{n}")
            for n in range(self._flushers)
        ]

    async def stop(self) -> None:
        """Commit what is queued, then stop the flushers."""
        for _ in self._tasks:
            self._queue.put_nowait(None)
        tasks, self._tasks = self._tasks, []
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)

    async def submit(self, item: Item) -> Result:
        if not self._tasks:
            raise StorageUnavailableError("storage could not store the webhook: store not open")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is None:
                    stop = True
                    break
                batch.append(job)
            live = [job for job in batch if not job[1].done()]
            if live:
                await self._commit(live)
            if stop:
                return

    async def _commit(self, jobs: Sequence[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            receipts = await self._transaction([item for item, _ in jobs])
        except Exception as exc:
            if len(jobs) > 1 and not _server_side(exc):
                for job in jobs:  # one bad item must not fail its neighbours
                    await self._commit([job])
                return
            for _, future in jobs:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), receipt in zip(jobs, receipts, strict=True):
            if not future.done():  # a caller that went away: its webhook is stored all the same
                future.set_result(receipt)

    async def _transaction(self, items: list[Item]) -> list[Result]:
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                async with self._connect("store the webhook") as conn:
                    receipts: list[Result] = await self._op(conn, items)  # atomic
                self.commits += 1
                return receipts
            except StorageUnavailableError as exc:
                if attempt == DEADLOCK_RETRIES or not is_retryable(exc.__cause__):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


def _server_side(exc: BaseException) -> bool:
    return isinstance(exc, StorageUnavailableError) and (
        exc.__cause__ is None or is_connection_problem(exc.__cause__) or is_retryable(exc.__cause__)
    )
