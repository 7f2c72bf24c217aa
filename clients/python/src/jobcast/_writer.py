"""Group commit for one Python worker, like the Rust worker's: every event, completion,
failure and release of all running attempts goes through one queue; while one transaction
is being written the next ops pile up and go out together. Each op is told whether it was
accepted (false: the attempt no longer holds the job — fencing), or why PostgreSQL refused
it (:class:`WriteFailed`).

Each batch is one call of ``jobcast.write_batch`` (docs/protocol.md), which records the
batch id in the ``jobcast.worker_writes`` ledger first: a batch retried after a lost
connection (whose COMMIT may have gone through) finds its earlier outcome instead of
writing its events twice."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import psycopg
from psycopg.types.json import Jsonb

from ._db import Connector
from .errors import WriteFailed

log = logging.getLogger("jobcast.worker")

#: Most ops written in one transaction.
MAX_BATCH = 1000


@dataclass
class EventOp:
    """A progress, custom or output event: ``element`` as record_events takes it, less
    the ids."""

    job_id: int
    attempt: int
    element: Dict[str, Any]


@dataclass
class CompleteOp:
    """The attempt succeeded with ``result``."""

    job_id: int
    attempt: int
    result: Any


@dataclass
class FailOp:
    """The attempt failed; retried after ``delay_ms`` when ``retryable`` and attempts remain."""

    job_id: int
    attempt: int
    error: Dict[str, Any]
    retryable: bool
    delay_ms: int


@dataclass
class ReleaseOp:
    """Hand the attempt back without counting it (shutdown)."""

    job_id: int
    attempt: int


Op = Union[EventOp, CompleteOp, FailOp, ReleaseOp]



_Queued = Tuple[Op, "asyncio.Future[bool]"]


class Writer:
    """The writer task of one worker process."""

    def __init__(self, connector: Connector, worker_id: str) -> None:
        self._connector = connector
        self._worker_id = worker_id
        self._queue: "asyncio.Queue[Optional[_Queued]]" = asyncio.Queue()
        self._give_up = asyncio.Event()
        self._task: Optional["asyncio.Task[None]"] = None
        self._batches = 0
        self._closing = False

    def start(self) -> None:
        """Starts writing (on the running loop)."""
        self._task = asyncio.ensure_future(self._run())

    async def submit(self, op: Op) -> bool:
        """Queues ``op``; true once committed, false if it was refused (fencing). Raises
        WriteFailed when PostgreSQL rejected the op itself."""
        return await self.enqueue(op)

    def enqueue(self, op: Op) -> "asyncio.Future[bool]":
        """Queues ``op`` at once (call on the worker's loop) and returns the future that
        :meth:`submit` awaits. Ops are written in the order they were queued: an op queued
        after another is in the same transaction or a later one."""
        future: "asyncio.Future[bool]" = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(WriteFailed("the worker has stopped writing"))
            return future
        self._queue.put_nowait((op, future))
        return future

    async def close(self, timeout: float) -> None:
        """Writes what is queued and stops; after ``timeout`` s of an unreachable database,
        refuses what is left."""
        self._closing = True
        self._queue.put_nowait(None)
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            self._give_up.set()
            await self._task

    async def _run(self) -> None:
        closing = False
        while not closing:
            first = await self._queue.get()
            if first is None:
                closing = True
                batch: List[_Queued] = []
            else:
                batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    closing = True
                else:
                    batch.append(item)
            if batch:
                self._batches += 1
                await self._write_until_done(batch, f"{self._worker_id}/{self._batches}")
        await self._connector.close()

    async def _write_until_done(self, batch: List[_Queued], batch_id: str) -> None:
        """Retries while the database is unreachable: an op a handler was told nothing
        about yet must not be lost."""
        backoff = 0.05
        while True:
            try:
                accepted = await self._write(batch, batch_id)
            except psycopg.OperationalError as e:
                log.warning("cannot write job updates; retrying in %.2f s: %s", backoff, e)
                await self._connector.reset()
            except psycopg.Error as e:
                if len(batch) > 1:
                    # One bad op must not sink the others: write them one by one.
                    log.warning("batch write failed (%s); writing %d ops one by one",
                                e, len(batch))
                    for n, queued in enumerate(batch):
                        await self._write_until_done([queued], f"{batch_id}.{n}")
                else:
                    log.warning("PostgreSQL refused a job update: %s", e)
                    _fail(batch, _describe(e))
                return
            else:
                _reply(batch, accepted)
                return
            if self._give_up.is_set():
                _fail(batch, "the database stayed unreachable while the worker stopped")
                return
            try:
                await asyncio.wait_for(self._give_up.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 2.0)

    async def _write(self, batch: List[_Queued], batch_id: str) -> List[bool]:
        """One statement, so one round trip and one transaction: ``jobcast.write_batch``
        takes the batch id in the ledger, writes the events, then completions, failures and
        releases, and returns, per op, whether it was accepted. A batch id already in the
        ledger (a retry after a lost COMMIT) writes nothing and returns that outcome."""
        conn = await self._connector.get()
        ops = [_op_json(op) for op, _ in batch]
        cur = await conn.execute("select jobcast.write_batch(%s, %s, %s)",
                                 (batch_id, self._worker_id, Jsonb(ops)))
        row = await cur.fetchone()
        accepted = list(row[0]) if row and row[0] is not None else []
        if len(accepted) != len(batch):
            accepted = (accepted + [False] * len(batch))[:len(batch)]
        return [bool(ok) for ok in accepted]


def _op_json(op: Op) -> Dict[str, Any]:
    """An element of write_batch's ``p_ops`` (docs/protocol.md)."""
    if isinstance(op, EventOp):
        return {**op.element, "op": "event", "job_id": op.job_id, "attempt": op.attempt}
    if isinstance(op, CompleteOp):
        return {"op": "complete", "job_id": op.job_id, "attempt": op.attempt,
                "result": op.result}
    if isinstance(op, FailOp):
        return {"op": "fail", "job_id": op.job_id, "attempt": op.attempt, "error": op.error,
                "retryable": op.retryable, "retry_delay_ms": op.delay_ms}
    return {"op": "release", "job_id": op.job_id, "attempt": op.attempt}


def _fail(batch: List[_Queued], reason: str) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(WriteFailed(reason))


def _describe(error: psycopg.Error) -> str:
    diag = error.diag
    text = diag.message_primary or str(error)
    if diag.sqlstate:
        text += f" (SQLSTATE {diag.sqlstate})"
    if diag.message_detail:
        text += f": {diag.message_detail}"
    return text


def _reply(batch: List[_Queued], accepted: List[bool]) -> None:
    for (_, future), ok in zip(batch, accepted):
        if not future.done():
            future.set_result(ok)
