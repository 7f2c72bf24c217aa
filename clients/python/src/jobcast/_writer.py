"""Group commit for one Python worker, like the Rust worker's: every event, completion,
failure and release of all running attempts goes through one queue; while one transaction
is being written the next ops pile up and go out together. Each op is told whether it was
accepted (false: the attempt no longer holds the job — fencing)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import psycopg
from psycopg.types.json import Jsonb

from ._db import Connector

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

    def start(self) -> None:
        """Starts writing (on the running loop)."""
        self._task = asyncio.ensure_future(self._run())

    async def submit(self, op: Op) -> bool:
        """Queues ``op``; true once committed, false if it was refused."""
        future: "asyncio.Future[bool]" = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))
        return await future

    async def close(self, timeout: float) -> None:
        """Writes what is queued and stops; after ``timeout`` s of an unreachable database,
        refuses what is left."""
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
                await self._write_until_done(batch)
        await self._connector.close()

    async def _write_until_done(self, batch: List[_Queued]) -> None:
        """Retries while the database is unreachable: an op a handler was told nothing
        about yet must not be lost."""
        backoff = 0.05
        while True:
            try:
                accepted = await self._write(batch)
            except psycopg.OperationalError as e:
                log.warning("cannot write job updates; retrying in %.2f s: %s", backoff, e)
                await self._connector.reset()
            except psycopg.Error as e:
                # One bad op must not sink the others: write them one by one.
                log.error("batch write failed (%s); writing %d ops one by one", e, len(batch))
                if len(batch) > 1:
                    for queued in batch:
                        await self._write_until_done([queued])
                else:
                    _reply(batch, [False])
                return
            else:
                _reply(batch, accepted)
                return
            if self._give_up.is_set():
                _reply(batch, [False] * len(batch))
                return
            try:
                await asyncio.wait_for(self._give_up.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 2.0)

    async def _write(self, batch: List[_Queued]) -> List[bool]:
        """One transaction: events, then completions, failures and releases."""
        conn = await self._connector.get()
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
        return accepted


def _reply(batch: List[_Queued], accepted: List[bool]) -> None:
    for (_, future), ok in zip(batch, accepted):
        if not future.done():
            future.set_result(ok)
