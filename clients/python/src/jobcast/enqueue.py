"""Transactional enqueue: create a job with the caller's own psycopg connection, inside the
caller's transaction, so that the job exists (and wakes workers) only if that commits.

Tenants: a job belongs to one tenant. A server without API keys puts every request in the
tenant ``default``, and so does :func:`enqueue` unless told otherwise. A server WITH API
keys (``--api-keys-file``) shows each key only its own tenant's jobs: enqueue with
``tenant="…"`` (the tenant named in the keys file), or the job is in ``default``, which
no key sees (``404`` over HTTP, absent from lists and streams)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional, Tuple

from psycopg import AsyncConnection, Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ._models import RunAt, job_spec

# The job's columns plus `created`; (r.job).* spreads the composite out-parameter.
_ENQUEUE = "select (r.job).*, r.created from jobcast.enqueue_job(%s, %s, %s, %s) r"

#: The tenant of every job on a server without API keys.
DEFAULT_TENANT = "default"


def _statement(
    kind: str,
    args: Any,
    queue: Optional[str],
    priority: Optional[int],
    run_at: Optional[RunAt],
    max_attempts: Optional[int],
    timeout_secs: Optional[int],
    idempotency_key: Optional[str],
    tenant: str,
    options: Dict[str, Any],
) -> Tuple[str, Tuple[Any, ...]]:
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("tenant must be a tenant name (see the keys file); "
                         f"{DEFAULT_TENANT!r} without API keys")
    spec = job_spec(kind, args, queue=queue, priority=priority, run_at=run_at,
                    max_attempts=max_attempts, timeout_secs=timeout_secs, **options)
    request_hash = request_fingerprint(spec) if idempotency_key is not None else None
    return _ENQUEUE, (Jsonb(spec), idempotency_key, request_hash, tenant)


def request_fingerprint(spec: Dict[str, Any]) -> Optional[str]:
    """The HTTP API's fingerprint of a spec (compact JSON, keys sorted, defaults filled in,
    run_at in UTC with microseconds), stored with an idempotency key so that the same key
    and body submitted later over HTTP is a replay (200), not a conflict (409)."""
    full = {"kind": spec["kind"], "queue": spec.get("queue", "default"),
            "args": spec.get("args", {}), "priority": spec.get("priority", 0),
            "max_attempts": spec.get("max_attempts", 3),
            "timeout_secs": spec.get("timeout_secs")}
    # Fields newer than the first spec count only when set, as the server leaves them out.
    for name in ("tags", "concurrency_key", "concurrency_limit"):
        if spec.get(name) is not None:
            full[name] = spec[name]
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


def _options(tags: Optional[Mapping[str, str]], concurrency_key: Optional[str],
             concurrency_limit: Optional[int]) -> Dict[str, Any]:
    return {"tags": tags, "concurrency_key": concurrency_key,
            "concurrency_limit": concurrency_limit}


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
    tags: Optional[Mapping[str, str]] = None,
    concurrency_key: Optional[str] = None,
    concurrency_limit: Optional[int] = None,
    idempotency_key: Optional[str] = None,
    tenant: str = DEFAULT_TENANT,
) -> Dict[str, Any]:
    """Enqueues a job through ``conn`` in its current transaction (``jobcast.enqueue_job``).

    Nothing is committed here: the job, its ``queued`` event and the workers' wake-up become
    visible when the caller commits, and vanish if it rolls back. Returns the job's row as a
    dict (``id`` as the API's string, ``created`` false when ``idempotency_key`` was taken).
    Options as for :meth:`Client.submit` (``tags`` included).

    ``tenant``: the job's tenant, ``"default"`` unless given. That is right for a server
    without API keys, and wrong for one with keys: there each key sees only its tenant's
    jobs, so pass the tenant its keys belong to (a job in ``default`` is invisible to them).

    A spec that breaks a rule (kind format, max_attempts range …) raises psycopg's
    IntegrityError/DataError, which aborts the caller's transaction.
    """
    sql, params = _statement(kind, args, queue, priority, run_at, max_attempts, timeout_secs,
                             idempotency_key, tenant, _options(tags, concurrency_key,
                                                               concurrency_limit))
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
    tags: Optional[Mapping[str, str]] = None,
    concurrency_key: Optional[str] = None,
    concurrency_limit: Optional[int] = None,
    idempotency_key: Optional[str] = None,
    tenant: str = DEFAULT_TENANT,
) -> Dict[str, Any]:
    """:func:`enqueue` for an asyncio psycopg connection (``psycopg.AsyncConnection``):
    the same arguments, the same transaction rules (nothing committed here; the job exists
    once the caller commits), awaited::

        async with await psycopg.AsyncConnection.connect(DATABASE_URL) as conn:
            async with conn.transaction():
                await conn.execute("insert into orders …")
                job = await enqueue_async(conn, "invoice.send", {"order": 7})
    """
    sql, params = _statement(kind, args, queue, priority, run_at, max_attempts, timeout_secs,
                             idempotency_key, tenant, _options(tags, concurrency_key,
                                                               concurrency_limit))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return _job(await cur.fetchone())
