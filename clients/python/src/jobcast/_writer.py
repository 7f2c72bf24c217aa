"""Group commit for one Python worker, like the Rust worker's: every event, completion,
failure and release of all running attempts goes through one queue; while one transaction
is being written the next ops pile up and go out together. Each op is told whether it was
accepted (false: the attempt no longer holds the job — fencing), or why PostgreSQL refused
it (:class:`WriteFailed`).

Where the database has the `jobcast.worker_writes` ledger, each transaction first records
its batch id there: a batch retried after a lost connection (whose COMMIT may have gone
through) finds its earlier outcome instead of writing its events twice."""

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
    """A progress or custom event: ``element`` as record_events takes it, less ids."""

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
        self._ledger: Optional[bool] = None  # whether jobcast.worker_writes exists

    def start(self) -> None:
        """Starts writing (on the running loop)."""
        self._task = asyncio.ensure_future(self._run())

    async def submit(self, op: Op) -> bool:
        """Queues ``op``; true once committed, false if it was refused (fencing). Raises
        WriteFailed when PostgreSQL rejected the op itself."""
        if self._closing:
            raise WriteFailed("the worker has stopped writing")
        future: "asyncio.Future[bool]" = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))
        return await future

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
        """One transaction: the batch id (where there is a ledger), then events,
        completions, failures and releases. Returns, per op, whether it was accepted."""
        conn = await self._connector.get()
        if self._ledger is None:
            cur = await conn.execute("select to_regclass('jobcast.worker_writes') is not null")
            row = await cur.fetchone()
            self._ledger = bool(row and row[0])
        accepted = [False] * len(batch)
        events: List[Dict[str, Any]] = []
        event_positions: List[int] = []
        completions: List[Dict[str, Any]] = []
        completion_positions: List[Tuple[int, int]] = []
        releases: List[Tuple[int, int, int]] = []
        failures: List[Tuple[int, FailOp]] = []
        for position, (op, _) in enumerate(batch):
            if isinstance(op, EventOp):
                events.append({**op.element, "job_id": op.job_id, "attempt": op.attempt})
                event_positions.append(position)
            elif isinstance(op, CompleteOp):
                completions.append({"job_id": op.job_id, "attempt": op.attempt,
                                    "result": op.result})
                completion_positions.append((position, op.job_id))
            elif isinstance(op, FailOp):
                failures.append((position, op))
            else:
                releases.append((position, op.job_id, op.attempt))
        worker = self._worker_id
        async with conn.transaction():
            async with conn.cursor() as cur:
                if self._ledger:
                    # Taken first: a retry whose earlier try is still committing waits here.
                    await cur.execute("insert into jobcast.worker_writes (id) values (%s)"
                                      " on conflict (id) do nothing", (batch_id,))
                    if cur.rowcount == 0:
                        await cur.execute("select accepted from jobcast.worker_writes"
                                          " where id = %s", (batch_id,))
                        row = await cur.fetchone()
                        log.info("batch %s: a retried write had already committed", batch_id)
                        return list(row[0]) if row and row[0] else [False] * len(batch)
                if events:
                    await cur.execute("select idx from jobcast.record_events(%s, %s)",
                                      (worker, Jsonb(events)))
                    for (index,) in await cur.fetchall():
                        accepted[event_positions[index - 1]] = True
                if completions:
                    await cur.execute("select job_id from jobcast.complete_jobs(%s, %s)",
                                      (worker, Jsonb(completions)))
                    done = {row[0] for row in await cur.fetchall()}
                    for position, job_id in completion_positions:
                        accepted[position] = job_id in done
                for position, failure in failures:
                    await cur.execute(
                        "select id from jobcast.fail_job(%s, %s, %s, %s, %s, %s)",
                        (failure.job_id, failure.attempt, worker, Jsonb(failure.error),
                         failure.retryable, failure.delay_ms))
                    accepted[position] = await cur.fetchone() is not None
                if releases:
                    await cur.execute(
                        "select job_id from jobcast.release_jobs(%s, %s::bigint[], %s::integer[])",
                        (worker, [r[1] for r in releases], [r[2] for r in releases]))
                    released = {row[0] for row in await cur.fetchall()}
                    for position, job_id, _ in releases:
                        accepted[position] = job_id in released
                if self._ledger:
                    await cur.execute("update jobcast.worker_writes set accepted = %s"
                                      " where id = %s", (accepted, batch_id))
        return accepted


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
