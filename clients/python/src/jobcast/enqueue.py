"""Transactional enqueue: create a job with the caller's own psycopg connection, inside the
caller's transaction, so that the job exists (and wakes workers) only if that commits."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple

from psycopg import AsyncConnection, Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .client import RunAt, job_spec

# The job's columns plus `created`; (r.job).* spreads the composite out-parameter.
_ENQUEUE = "select (r.job).*, r.created from jobcast.enqueue_job(%s, %s, %s) r"
_ENQUEUE_FOR_TENANT = "select (r.job).*, r.created from jobcast.enqueue_job(%s, %s, %s, %s) r"


def _statement(
    kind: str,
    args: Any,
    queue: Optional[str],
    priority: Optional[int],
    run_at: Optional[RunAt],
    max_attempts: Optional[int],
    timeout_secs: Optional[int],
    idempotency_key: Optional[str],
    tenant: Optional[str],
) -> Tuple[str, Tuple[Any, ...]]:
    spec = job_spec(kind, args, queue=queue, priority=priority, run_at=run_at,
                    max_attempts=max_attempts, timeout_secs=timeout_secs)
    request_hash = request_fingerprint(spec) if idempotency_key is not None else None
    params: Tuple[Any, ...] = (Jsonb(spec), idempotency_key, request_hash)
    if tenant is None:
        return _ENQUEUE, params
    return _ENQUEUE_FOR_TENANT, params + (tenant,)


def request_fingerprint(spec: Dict[str, Any]) -> Optional[str]:
    """The HTTP API's fingerprint of a spec (compact JSON, keys sorted, defaults filled in,
    run_at in UTC with microseconds), stored with an idempotency key so that the same key
    and body submitted later over HTTP is a replay (200), not a conflict (409)."""
    full = {"kind": spec["kind"], "queue": spec.get("queue", "default"),
            "args": spec.get("args", {}), "priority": spec.get("priority", 0),
            "max_attempts": spec.get("max_attempts", 3),
            "timeout_secs": spec.get("timeout_secs")}
    if spec.get("run_at") is not None:
        at = _parse_rfc3339(str(spec["run_at"]))
        if at is None:
            return None
        full["run_at"] = at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(full, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?"
                     r"([Zz]|[+-]\d{2}:\d{2})$")


def _parse_rfc3339(text: str) -> Optional[datetime]:
    # datetime.fromisoformat before Python 3.11 takes neither "Z" nor 1-9 fraction digits.
    match = _RFC3339.match(text)
    if match is None:
        return None
    date, time, fraction, offset = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{time}.{micros}{offset}")
    except ValueError:
        return None


def _job(row: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if row is None:
        raise RuntimeError("jobcast.enqueue_job returned no row")
    row["id"] = str(row["id"])
    return row


def enqueue(
    conn: Connection[Any],
    kind: str,
    args: Any = None,
    *,
    queue: Optional[str] = None,
    priority: Optional[int] = None,
    run_at: Optional[RunAt] = None,
    max_attempts: Optional[int] = None,
    timeout_secs: Optional[int] = None,
    idempotency_key: Optional[str] = None,
    tenant: Optional[str] = None,
) -> Dict[str, Any]:
    """Enqueues a job through ``conn`` in its current transaction (``jobcast.enqueue_job``).

    Nothing is committed here: the job, its ``queued`` event and the workers' wake-up become
    visible when the caller commits, and vanish if it rolls back. Returns the job's row as a
    dict (``id`` as the API's string, ``created`` false when ``idempotency_key`` was taken).
    ``tenant`` is passed only when given (servers with API keys scope jobs by tenant).
    A spec that breaks a rule (kind format, max_attempts range …) raises psycopg's
    IntegrityError/DataError, which aborts the caller's transaction.
    """
    sql, params = _statement(kind, args, queue, priority, run_at, max_attempts, timeout_secs,
                             idempotency_key, tenant)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return _job(cur.fetchone())


async def enqueue_async(
    conn: AsyncConnection[Any],
    kind: str,
    args: Any = None,
    *,
    queue: Optional[str] = None,
    priority: Optional[int] = None,
    run_at: Optional[RunAt] = None,
    max_attempts: Optional[int] = None,
    timeout_secs: Optional[int] = None,
    idempotency_key: Optional[str] = None,
    tenant: Optional[str] = None,
) -> Dict[str, Any]:
    """:func:`enqueue` for an asyncio psycopg connection."""
    sql, params = _statement(kind, args, queue, priority, run_at, max_attempts, timeout_secs,
                             idempotency_key, tenant)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return _job(await cur.fetchone())
