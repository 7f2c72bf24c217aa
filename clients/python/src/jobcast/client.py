"""Producers: submit jobs over the HTTP API and follow their events over SSE.

:class:`Client` and :class:`AsyncClient` have the same methods; the async ones are awaited
(and ``follow`` is an async iterator). Errors are :class:`~jobcast.errors.APIError` (the
server's problem document) or :class:`~jobcast.errors.TransportError`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import (
    Any,
    AsyncIterator,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Union,
)

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from .errors import APIError, TransportError

#: Event types after which a job's stream ends.
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})
#: Ordinary requests: generous, but never forever.
REQUEST_TIMEOUT = httpx.Timeout(30.0)
#: Streams stay idle between events (the server's keep-alive comes every --heartbeat-secs).
STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)
#: Longest wait between two reconnection attempts of ``follow``.
MAX_RECONNECT_WAIT = 5.0

RunAt = Union[datetime, str]
#: Every POST is JSON, even without a body (the server refuses others: a foreign page can
#: send a form or text/plain POST without a CORS preflight).
_JSON_POST = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Job:
    """A job object of the API (``raw`` keeps every field, including ones added later)."""

    id: str
    kind: str
    queue: str
    status: str
    args: Any = None
    priority: int = 0
    progress: Optional[float] = None
    message: Optional[str] = None
    attempt: int = 0
    max_attempts: int = 3
    timeout_secs: Optional[int] = None
    result: Any = None
    error: Optional[Dict[str, Any]] = None
    run_at: Optional[str] = None
    created_at: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    updated_at: Optional[str] = None
    last_event_id: int = 0
    links: Dict[str, str] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Job":
        """Builds a Job from the API's JSON object."""
        known = {name for name in cls.__dataclass_fields__ if name != "raw"}
        values = {k: v for k, v in raw.items() if k in known}
        return cls(raw=dict(raw), **values)

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_EVENTS

    @property
    def events_url(self) -> str:
        """The path of its SSE stream (with a stream token when auth is on)."""
        return self.links.get("events", f"/v1/jobs/{self.id}/events")


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: ``id`` is its seq (1, 2, 3 … per job)."""

    id: int
    type: str
    data: Dict[str, Any]

    @property
    def terminal(self) -> bool:
        """Whether this event ends the job's stream."""
        return self.type in TERMINAL_EVENTS


def job_spec(
    kind: str,
    args: Any = None,
    *,
    queue: Optional[str] = None,
    priority: Optional[int] = None,
    run_at: Optional[RunAt] = None,
    max_attempts: Optional[int] = None,
    timeout_secs: Optional[int] = None,
) -> Dict[str, Any]:
    """The JSON body of ``POST /v1/jobs`` (also the spec of ``jobcast.enqueue_job``).

    Unset options are left out, so the server's defaults apply.
    """
    spec: Dict[str, Any] = {"kind": kind, "args": {} if args is None else args}
    if queue is not None:
        spec["queue"] = queue
    if priority is not None:
        spec["priority"] = priority
    if run_at is not None:
        spec["run_at"] = _rfc3339(run_at)
    if max_attempts is not None:
        spec["max_attempts"] = max_attempts
    if timeout_secs is not None:
        spec["timeout_secs"] = timeout_secs
    return spec


def _rfc3339(value: RunAt) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return value.isoformat()


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"title": response.reason_phrase, "status": response.status_code,
                   "detail": response.text[:500]}
    raise APIError(response.status_code, problem)


def _headers(api_key: Optional[str]) -> Dict[str, str]:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _event(sse: ServerSentEvent) -> Optional[Event]:
    if not sse.id or not sse.data:
        return None
    try:
        data = json.loads(sse.data)
    except ValueError:
        data = {"raw": sse.data}
    return Event(id=int(sse.id), type=sse.event, data=data)


def _should_reconnect(response: httpx.Response) -> bool:
    """5xx and 429 are passing states of the service; other errors will not go away."""
    return response.status_code >= 500 or response.status_code == 429


class _Follow:
    """Shared state of one ``follow``: the resume point and the reconnection delay."""

    def __init__(self, job_id: str, last_event_id: int, give_up_after: Optional[float]) -> None:
        self.path = f"/v1/jobs/{job_id}/events"
        self.last_event_id = last_event_id
        self.give_up_after = give_up_after
        self.retry = 1.0
        self.failures = 0
        self.failing_since: Optional[float] = None

    def headers(self, api_key: Optional[str]) -> Dict[str, str]:
        headers = _headers(api_key)
        headers["Accept"] = "text/event-stream"
        if self.last_event_id > 0:
            headers["Last-Event-ID"] = str(self.last_event_id)
        return headers

    def connected(self) -> None:
        self.failures = 0
        self.failing_since = None

    def seen(self, sse: ServerSentEvent) -> Optional[Event]:
        if sse.retry is not None:
            self.retry = max(0.05, sse.retry / 1000.0)
        event = _event(sse)
        if event is not None:
            self.last_event_id = event.id
        return event

    def next_wait(self, error: Exception) -> float:
        """Seconds before reconnecting; raises when the caller's patience is used up."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if self.give_up_after is not None and now - self.failing_since > self.give_up_after:
            raise TransportError(f"gave up following after {self.give_up_after} s: {error}") from error
        wait = min(self.retry * float(2 ** min(self.failures, 6)), MAX_RECONNECT_WAIT)
        self.failures += 1
        return wait


class Client:
    """A synchronous producer: ``Client("http://127.0.0.1:8080", api_key=None)``."""

    def __init__(
        self,
        url: str,
        api_key: Optional[str] = None,
        *,
        http: Optional[httpx.Client] = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._http = http or httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**_headers(self.api_key), **kwargs.pop("headers", {})}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as e:
            raise TransportError(f"{method} {path}: {e}") from e
        _raise_for_problem(response)
        return response

    def submit(
        self,
        kind: str,
        args: Any = None,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        run_at: Optional[RunAt] = None,
        max_attempts: Optional[int] = None,
        timeout_secs: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        """Submits one job (``POST /v1/jobs``). With ``idempotency_key``, the same key and
        body again return the existing job; another body raises APIError 409."""
        spec = job_spec(kind, args, queue=queue, priority=priority, run_at=run_at,
                        max_attempts=max_attempts, timeout_secs=timeout_secs)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.from_json(self._request("POST", "/v1/jobs", json=spec, headers=headers).json())

    def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> List[Job]:
        """Submits up to 1000 specs (see :func:`job_spec`) in one transaction: all or none."""
        body = {"jobs": [dict(spec) for spec in specs]}
        answer = self._request("POST", "/v1/jobs/batch", json=body).json()
        return [Job.from_json(job) for job in answer["jobs"]]

    def get(self, job_id: str) -> Job:
        """The job now (``GET /v1/jobs/ID``)."""
        return Job.from_json(self._request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        """Cancels a queued or running job; APIError 409 when it has already ended."""
        response = self._request("POST", f"/v1/jobs/{job_id}/cancel", headers=_JSON_POST)
        return Job.from_json(response.json())

    def follow(
        self,
        job_id: str,
        *,
        last_event_id: int = 0,
        give_up_after: Optional[float] = None,
    ) -> Iterator[Event]:
        """Every event of the job after ``last_event_id``, live, until its terminal event.

        A dropped connection (or a 5xx) is retried with ``Last-Event-ID``, so nothing is
        missed or repeated; ``give_up_after`` seconds of failing reconnections raise
        TransportError (default: keep trying, as EventSource does). Stops quietly at a 204
        (nothing more will come). An unknown job raises APIError 404.
        """
        state = _Follow(job_id, last_event_id, give_up_after)
        while True:
            try:
                with connect_sse(self._http, "GET", state.path, headers=state.headers(self.api_key),
                                 timeout=STREAM_TIMEOUT) as source:
                    response = source.response
                    if response.status_code == 204:
                        return
                    if _should_reconnect(response):
                        response.read()
                        raise TransportError(f"stream answered {response.status_code}")
                    if response.status_code >= 400:
                        response.read()
                        _raise_for_problem(response)
                    state.connected()
                    for sse in source.iter_sse():
                        event = state.seen(sse)
                        if event is None:
                            continue
                        yield event
                        if event.terminal:
                            return
                error: Exception = TransportError("the stream ended before the job did")
            except (httpx.TransportError, TransportError) as e:
                error = e
            time.sleep(state.next_wait(error))


class AsyncClient:
    """The asyncio twin of :class:`Client`: same methods, awaited."""

    def __init__(
        self,
        url: str,
        api_key: Optional[str] = None,
        *,
        http: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._http = http or httpx.AsyncClient(base_url=self.url, timeout=REQUEST_TIMEOUT)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**_headers(self.api_key), **kwargs.pop("headers", {})}
        try:
            response = await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as e:
            raise TransportError(f"{method} {path}: {e}") from e
        _raise_for_problem(response)
        return response

    async def submit(
        self,
        kind: str,
        args: Any = None,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        run_at: Optional[RunAt] = None,
        max_attempts: Optional[int] = None,
        timeout_secs: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        """See :meth:`Client.submit`."""
        spec = job_spec(kind, args, queue=queue, priority=priority, run_at=run_at,
                        max_attempts=max_attempts, timeout_secs=timeout_secs)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self._request("POST", "/v1/jobs", json=spec, headers=headers)
        return Job.from_json(response.json())

    async def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> List[Job]:
        """See :meth:`Client.submit_many`."""
        body = {"jobs": [dict(spec) for spec in specs]}
        answer = (await self._request("POST", "/v1/jobs/batch", json=body)).json()
        return [Job.from_json(job) for job in answer["jobs"]]

    async def get(self, job_id: str) -> Job:
        """See :meth:`Client.get`."""
        return Job.from_json((await self._request("GET", f"/v1/jobs/{job_id}")).json())

    async def cancel(self, job_id: str) -> Job:
        """See :meth:`Client.cancel`."""
        response = await self._request("POST", f"/v1/jobs/{job_id}/cancel", headers=_JSON_POST)
        return Job.from_json(response.json())

    async def follow(
        self,
        job_id: str,
        *,
        last_event_id: int = 0,
        give_up_after: Optional[float] = None,
    ) -> AsyncIterator[Event]:
        """See :meth:`Client.follow`."""
        state = _Follow(job_id, last_event_id, give_up_after)
        while True:
            try:
                async with aconnect_sse(self._http, "GET", state.path,
                                        headers=state.headers(self.api_key),
                                        timeout=STREAM_TIMEOUT) as source:
                    response = source.response
                    if response.status_code == 204:
                        return
                    if _should_reconnect(response):
                        await response.aread()
                        raise TransportError(f"stream answered {response.status_code}")
                    if response.status_code >= 400:
                        await response.aread()
                        _raise_for_problem(response)
                    state.connected()
                    async for sse in source.aiter_sse():
                        event = state.seen(sse)
                        if event is None:
                            continue
                        yield event
                        if event.terminal:
                            return
                error: Exception = TransportError("the stream ended before the job did")
            except (httpx.TransportError, TransportError) as e:
                error = e
            await asyncio.sleep(state.next_wait(error))
