"""A worker's background duties, each on a connection of its own: the LISTEN connection
(wake-ups and cancellations), the heartbeat that extends leases, and the maintenance that
any worker may do (taking back expired leases, pruning finished jobs)."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, List, Sequence, Tuple

import psycopg

from ._db import Connector

log = logging.getLogger("jobcast.worker")

#: Channel on which enqueues wake workers (payload: the queue).
JOBS_CHANNEL = "jobcast_jobs"
#: Channel on which cancellations of running jobs are announced (payload: the job id).
CANCEL_CHANNEL = "jobcast_cancel"
#: Rows handled per maintenance statement, so maintenance never holds many locks at once.
MAINTENANCE_BATCH = 500
PRUNE_EVERY = 60.0

Held = List[Tuple[int, int]]


async def listen(url: str, queues: Sequence[str], wake: asyncio.Event,
                 cancel: Callable[[int], None]) -> None:
    """LISTEN for wake-ups of ``queues`` and cancellations; reconnects with backoff, and
    wakes the claim loop after each (re)connection to catch up on what it missed."""
    backoff = 0.1
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, application_name="jobcast-py-listen")
            async with conn:
                await conn.execute(f"listen {JOBS_CHANNEL}")
                await conn.execute(f"listen {CANCEL_CHANNEL}")
                backoff = 0.1
                wake.set()
                async for notify in conn.notifies():
                    if notify.channel == CANCEL_CHANNEL:
                        if notify.payload.isdigit():
                            cancel(int(notify.payload))
                    elif notify.payload in queues:
                        wake.set()
        except psycopg.Error as e:
            log.warning("LISTEN connection lost; reconnecting in %.1f s: %s", backoff, e)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


async def heartbeat(url: str, worker_id: str, lease_secs: float, held: Callable[[], Held],
                    lost: Callable[[int, int], None]) -> None:
    """Every third of a lease, extends the leases of every attempt ``held()`` returns in one
    statement; an attempt missing from the answer was cancelled or taken away: ``lost``."""
    connector = Connector(url, "jobcast-py-heartbeat")
    try:
        while True:
            await asyncio.sleep(max(lease_secs / 3.0, 0.1))
            attempts = held()
            if not attempts:
                continue
            try:
                conn = await connector.get()
                cur = await conn.execute(
                    "select job_id from jobcast.heartbeat_jobs("
                    "%s, %s::bigint[], %s::integer[], %s)",
                    (worker_id, [a[0] for a in attempts], [a[1] for a in attempts], lease_secs))
                still_held = {row[0] for row in await cur.fetchall()}
            except psycopg.Error as e:
                log.warning("heartbeat failed: %s", e)
                await connector.reset()
                continue
            for job_id, attempt in attempts:
                if job_id not in still_held:
                    lost(job_id, attempt)
    finally:
        await connector.close()


ANNOUNCE_EVERY = 5.0


async def announce(url: str, worker_id: str, queues: Sequence[str], kinds: Sequence[str],
                   concurrency: int, running: Callable[[], int]) -> None:
    """Every few seconds, tells the database which queues and kinds this worker takes
    (``jobcast.announce_worker``: the console's workers list and its "no worker takes kind
    X" hints); removes the row when cancelled. A schema without the function is skipped."""
    connector = Connector(url, "jobcast-py-announce")
    try:
        while True:
            try:
                conn = await connector.get()
                cur = await conn.execute(
                    "select to_regprocedure("
                    "'jobcast.announce_worker(text, text[], text[], integer, integer)') is not null")
                row = await cur.fetchone()
                if not (row and row[0]):
                    return
                await conn.execute(
                    "select jobcast.announce_worker(%s, %s, %s, %s, %s)",
                    (worker_id, list(queues), list(kinds), concurrency, running()))
            except psycopg.Error as e:
                log.warning("announcing the worker failed: %s", e)
                await connector.reset()
            await asyncio.sleep(ANNOUNCE_EVERY)
    except asyncio.CancelledError:
        try:
            conn = await connector.get()
            await conn.execute("select jobcast.retire_worker(%s)", (worker_id,))
        except (psycopg.Error, OSError):
            pass
        raise
    finally:
        await connector.close()


async def maintain(url: str, lease_secs: float, retry_base_ms: int,
                   retention_days: float) -> None:
    """Takes back attempts whose lease ran out (any worker's) at least twice per lease, as
    the Rust worker does, and prunes jobs finished over ``retention_days`` ago (0: never)."""
    connector = Connector(url, "jobcast-py-maintenance")
    reclaim_every = min(max(lease_secs / 2.0, 0.25), 5.0)
    since_prune = PRUNE_EVERY
    try:
        while True:
            try:
                conn = await connector.get()
                while True:
                    cur = await conn.execute("select jobcast.reclaim_expired_leases(%s, %s)",
                                             (retry_base_ms, MAINTENANCE_BATCH))
                    row = await cur.fetchone()
                    reclaimed = row[0] if row else 0
                    if reclaimed:
                        log.warning("took back %d jobs whose lease expired", reclaimed)
                    if reclaimed < MAINTENANCE_BATCH:
                        break
                if retention_days > 0 and since_prune >= PRUNE_EVERY:
                    since_prune = 0.0
                    await conn.execute("select jobcast.prune_finished_jobs("
                                       "make_interval(secs => %s::float8 * 86400), %s)",
                                       (retention_days, MAINTENANCE_BATCH))
            except psycopg.Error as e:
                log.warning("maintenance failed: %s", e)
                await connector.reset()
            await asyncio.sleep(reclaim_every)
            since_prune += reclaim_every
    finally:
        await connector.close()
