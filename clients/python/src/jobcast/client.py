"""Producers: submit jobs over the HTTP API, wait for them, follow their events over SSE,
mint stream tokens for web pages, and manage schedules.

:class:`Client` and :class:`AsyncClient` have the same methods; the async ones are awaited
(and ``follow``/``follow_events``/``iter_jobs`` are async iterators). Each request is built
once (:class:`_Requests`) and only sent differently. Errors are
:class:`~jobcast.errors.APIError` (the server's problem document) or
:class:`~jobcast.errors.TransportError`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterator,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)
from urllib.parse import quote, urlencode

import httpx
from httpx_sse import aconnect_sse, connect_sse

from . import _sse
from ._models import (
    TERMINAL_EVENTS,
    Event,
    Job,
    JobPage,
    RunAt,
    Schedule,
    StreamToken,
    check_tags,
    job_spec,
    tag_params,
)
from .errors import APIError, TransportError

__all__ = ["AsyncClient", "Client", "Event", "Job", "JobPage", "RunAt", "Schedule",
           "StreamToken", "TERMINAL_EVENTS", "job_spec"]

#: Ordinary requests: generous, but never forever.
REQUEST_TIMEOUT = httpx.Timeout(30.0)
#: Streams stay idle between events (the server's keep-alive comes every --heartbeat-secs).
STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)
#: The longest ``?wait=`` the server takes (API.md): longer waits are several requests.
MAX_WAIT_PER_REQUEST = 60
#: A POST without a body still says JSON (the server refuses other content types on
#: requests that carry one; this keeps every POST alike).
_JSON_POST = {"Content-Type": "application/json"}


def _segment(value: str) -> str:
    return quote(str(value), safe=":")


@dataclass
class _Call:
    """One HTTP request, as both clients send it."""

    method: str
    path: str
    params: List[Any] = field(default_factory=list)
    json: Any = None
    headers: Dict[str, str] = field(default_factory=dict)
    timeout: Union[httpx.Timeout, None] = None


class _Deadline:
    """A ``wait=SECONDS`` spread over requests of at most 60 s each, never past the end."""

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 1:
            raise ValueError("wait is a number of seconds, at least 1")
        self.end = time.monotonic() + seconds
        #: The first request's ``?wait=`` (the clock has moved on a little by the time it
        #: is sent; measured from now, a wait of 1 s would be none at all).
        self.first = min(MAX_WAIT_PER_REQUEST, int(seconds))

    def next(self) -> Optional[int]:
        """Seconds for the next request's ``?wait=``; None once less than one is left."""
        remaining = self.end - time.monotonic()
        if remaining < 1:
            return None
        return min(MAX_WAIT_PER_REQUEST, int(remaining))


def _pause_after(job: Job, seconds: int, asked: float) -> float:
    """A server that ignores ``?wait=`` (older than waiting) answers at once: poll it
    gently rather than in a tight loop."""
    if job.terminal or time.monotonic() - asked >= seconds / 2:
        return 0.0
    return 0.5


def _wait_timeout(seconds: int) -> httpx.Timeout:
    return httpx.Timeout(30.0, read=seconds + 30.0)


class _Requests:
    """The requests of the API, built once for both clients."""

    @staticmethod
    def submit(spec: Dict[str, Any], idempotency_key: Optional[str],
               wait: Optional[int]) -> _Call:
        call = _Call("POST", "/v1/jobs", json=spec)
        if idempotency_key:
            call.headers["Idempotency-Key"] = idempotency_key
        if wait is not None:
            call.params.append(("wait", str(wait)))
            call.timeout = _wait_timeout(wait)
        return call

    @staticmethod
    def get(job_id: str, wait: Optional[int]) -> _Call:
        call = _Call("GET", f"/v1/jobs/{_segment(job_id)}")
        if wait is not None:
            call.params.append(("wait", str(wait)))
            call.timeout = _wait_timeout(wait)
        return call

    @staticmethod
    def list_jobs(tags: Optional[Mapping[str, str]], queue: Optional[str],
                  kind: Optional[str], status: Optional[str], limit: Optional[int],
                  cursor: Optional[str]) -> _Call:
        params: List[Any] = tag_params(tags)
        for name, value in (("queue", queue), ("kind", kind), ("status", status),
                            ("limit", limit), ("cursor", cursor)):
            if value is not None:
                params.append((name, str(value)))
        return _Call("GET", "/v1/jobs", params=params)

    @staticmethod
    def output(job_id: str, stream: str, attempt: Optional[int]) -> _Call:
        call = _Call("GET", f"/v1/jobs/{_segment(job_id)}/output/{_segment(stream)}")
        call.headers["Accept"] = "text/plain"
        if attempt is not None:
            call.params.append(("attempt", str(attempt)))
        return call

    @staticmethod
    def token(jobs: Optional[Sequence[str]], firehose: bool, queue: Optional[str],
              kind: Optional[str], tags: Optional[Mapping[str, str]],
              ttl_secs: Optional[int]) -> _Call:
        chosen = sum([jobs is not None, bool(firehose), tags is not None])
        if chosen != 1:
            raise ValueError("a stream token is for jobs=[…], firehose=True or tags={…}: "
                             "exactly one of them")
        body: Dict[str, Any]
        if jobs is not None:
            body = {"jobs": [str(j) for j in jobs]}
        elif tags is not None:
            body = {"tags": check_tags(tags)}
        else:
            body = {"firehose": True}
            if queue is not None:
                body["queue"] = queue
            if kind is not None:
                body["kind"] = kind
        if (queue is not None or kind is not None) and not firehose:
            raise ValueError("queue= and kind= restrict a firehose token only")
        if ttl_secs is not None:
            body["ttl_secs"] = ttl_secs
        return _Call("POST", "/v1/tokens", json=body)

    @staticmethod
    def schedule(name: str, job: Union[str, Mapping[str, Any]], cron: Optional[str],
                 every: Optional[str], timezone: Optional[str], overlap: Optional[str],
                 catch_up: Optional[str]) -> _Call:
        if (cron is None) == (every is None):
            raise ValueError("a schedule has either cron='…' or every='30s', not both")
        spec = job_spec(job) if isinstance(job, str) else dict(job)
        body: Dict[str, Any] = {"name": name, "job": spec}
        for key, value in (("cron", cron), ("every", every), ("timezone", timezone),
                           ("overlap", overlap), ("catch_up", catch_up)):
            if value is not None:
                body[key] = value
        return _Call("POST", "/v1/schedules", json=body)

    @staticmethod
    def events(tags: Optional[Mapping[str, str]], queue: Optional[str], kind: Optional[str],
               output: bool) -> List[Any]:
        params: List[Any] = tag_params(tags)
        if queue is not None:
            params.append(("queue", queue))
        if kind is not None:
            params.append(("kind", kind))
        if output:
            params.append(("output", "1"))
        return params


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


def _token(base_url: str, answer: Dict[str, Any], call: _Call) -> StreamToken:
    token = str(answer["token"])
    body = call.json or {}
    url: Optional[str] = None
    if len(body.get("jobs") or []) == 1:
        url = f"{base_url}/v1/jobs/{_segment(body['jobs'][0])}/events?" + urlencode(
            {"token": token})
    elif "tags" in body or body.get("firehose"):
        url = f"{base_url}/v1/events?" + urlencode({"token": token})
    return StreamToken(token=token, expires_at=str(answer.get("expires_at", "")), url=url)


def _schedules(answer: Any) -> List[Schedule]:
    items = answer.get("schedules", []) if isinstance(answer, dict) else answer
    return [Schedule.from_json(item) for item in items]


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

    def _send(self, call: _Call) -> httpx.Response:
        headers = {**_sse.headers(self.api_key), **call.headers}
        if call.method == "POST" and call.json is None:
            headers.update(_JSON_POST)
        try:
            response = self._http.request(
                call.method, call.path, params=call.params or None, json=call.json,
                headers=headers,
                timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as e:
            raise TransportError(f"{call.method} {call.path}: {e}") from e
        _raise_for_problem(response)
        return response

    # -- jobs ---------------------------------------------------------------------------

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
        tags: Optional[Mapping[str, str]] = None,
        concurrency_key: Optional[str] = None,
        concurrency_limit: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        wait: Optional[float] = None,
    ) -> Job:
        """Submits one job (``POST /v1/jobs``) and returns it.

        ``tags`` (``{"user": "42"}``) let you list and follow jobs by tag. With
        ``idempotency_key``, the same key and body again return the existing job; another
        body raises APIError 409. With ``wait=SECONDS`` (at least 1), returns as soon as the
        job has ended, or when the wait is over with the job as it is then: look at
        ``job.status`` (``job.terminal``) — a job still running is not an error.
        """
        spec = job_spec(kind, args, queue=queue, priority=priority, run_at=run_at,
                        max_attempts=max_attempts, timeout_secs=timeout_secs, tags=tags,
                        concurrency_key=concurrency_key, concurrency_limit=concurrency_limit)
        deadline = _Deadline(wait) if wait is not None else None
        call = _Requests.submit(spec, idempotency_key, deadline.first if deadline else None)
        job = Job.from_json(self._send(call).json())
        return self._wait_more(job, deadline) if deadline else job

    def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> List[Job]:
        """Submits up to 1000 specs (see :func:`job_spec`) in one transaction: all or none."""
        body = {"jobs": [dict(spec) for spec in specs]}
        answer = self._send(_Call("POST", "/v1/jobs/batch", json=body)).json()
        return [Job.from_json(job) for job in answer["jobs"]]

    def get(self, job_id: str, *, wait: Optional[float] = None) -> Job:
        """The job (``GET /v1/jobs/ID``). With ``wait=SECONDS`` (at least 1): as soon as it
        has ended, or as it is when the wait is over (look at ``job.terminal``)."""
        if wait is None:
            return Job.from_json(self._send(_Requests.get(job_id, None)).json())
        deadline = _Deadline(wait)
        job = Job.from_json(self._send(_Requests.get(job_id, deadline.first)).json())
        return self._wait_more(job, deadline)

    def _wait_more(self, job: Job, deadline: _Deadline) -> Job:
        while not job.terminal:
            seconds = deadline.next()
            if seconds is None:
                break
            asked = time.monotonic()
            job = Job.from_json(self._send(_Requests.get(job.id, seconds)).json())
            time.sleep(_pause_after(job, seconds, asked))
        return job

    def list_jobs(
        self,
        *,
        tags: Optional[Mapping[str, str]] = None,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        status: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> JobPage:
        """One page of jobs, newest first (``GET /v1/jobs``); ``tags``: jobs carrying all of
        them. Pass ``page.next_cursor`` as ``cursor`` for the next page."""
        answer = self._send(_Requests.list_jobs(tags, queue, kind, status, limit,
                                                cursor)).json()
        return JobPage([Job.from_json(j) for j in answer["jobs"]], answer.get("next_cursor"))

    def iter_jobs(
        self,
        *,
        tags: Optional[Mapping[str, str]] = None,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        status: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, page after page."""
        cursor: Optional[str] = None
        while True:
            page = self.list_jobs(tags=tags, queue=queue, kind=kind, status=status,
                                  limit=page_size, cursor=cursor)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        """Cancels a queued or running job; APIError 409 when it has already ended."""
        return Job.from_json(self._send(_Call("POST", f"/v1/jobs/{_segment(job_id)}/cancel"))
                             .json())

    def retry(self, job_id: str) -> Job:
        """Puts a failed or cancelled job back in its queue (its next attempt is n+1);
        APIError 409 for a job that is queued, running or succeeded."""
        return Job.from_json(self._send(_Call("POST", f"/v1/jobs/{_segment(job_id)}/retry"))
                             .json())

    def output(self, job_id: str, stream: str = "output", *,
               attempt: Optional[int] = None) -> str:
        """The whole text of an output stream of the job's latest attempt (or ``attempt``);
        APIError 404 when that stream has no text (or the job is unknown)."""
        return self._send(_Requests.output(job_id, stream, attempt)).text

    # -- streams ------------------------------------------------------------------------

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
        (nothing more will come). An unknown job raises APIError 404. Output text arrives
        as ``output`` events (``event.stream``, ``event.text``). A ``reset`` event means the
        server's database is no longer the history read so far (an asynchronous failover
        lost events already delivered): drop what you built from it; the events that follow
        are the job's history again from its first event.
        """
        state = _sse.Follow(f"/v1/jobs/{_segment(job_id)}/events", [], last_event_id,
                            give_up_after, firehose=False)
        return self._follow(state)

    def follow_events(
        self,
        *,
        tags: Optional[Mapping[str, str]] = None,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        output: bool = False,
        last_event_id: Optional[str] = None,
        give_up_after: Optional[float] = None,
    ) -> Iterator[Event]:
        """The events of every job (``GET /v1/events``), or of the jobs carrying all of
        ``tags`` (including jobs submitted later), over one connection, forever: break
        out of the loop to stop. ``output=True`` includes ``output`` events. Each event's
        ``cursor`` resumes exactly after it (``last_event_id=event.cursor``)."""
        params = _Requests.events(tags, queue, kind, output)
        state = _sse.Follow("/v1/events", params, last_event_id, give_up_after, firehose=True)
        return self._follow(state)

    def _follow(self, state: _sse.Follow) -> Iterator[Event]:
        while True:
            try:
                with connect_sse(self._http, "GET", state.path,
                                 params=state.params or None,
                                 headers=state.headers(self.api_key),
                                 timeout=STREAM_TIMEOUT) as source:
                    response = source.response
                    if response.status_code == 204:
                        return
                    if _sse.should_reconnect(response):
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
                        if state.ends_with(event):
                            return
                error: Exception = TransportError("the stream ended")
            except (httpx.TransportError, TransportError) as e:
                error = e
            time.sleep(state.next_wait(error))

    def create_token(
        self,
        *,
        jobs: Optional[Sequence[str]] = None,
        firehose: bool = False,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        ttl_secs: Optional[int] = None,
    ) -> StreamToken:
        """A stream token for a web page's EventSource (``POST /v1/tokens``, needs an API
        key): for ``jobs=[id, …]``, the ``firehose=True`` (optionally of one ``queue`` or
        ``kind``), or ``tags={…}`` (the jobs carrying them, over one connection).
        ``token.url`` is the stream to open."""
        call = _Requests.token(jobs, firehose, queue, kind, tags, ttl_secs)
        return _token(self.url, self._send(call).json(), call)

    # -- schedules ----------------------------------------------------------------------

    def create_schedule(
        self,
        name: str,
        job: Union[str, Mapping[str, Any]],
        *,
        cron: Optional[str] = None,
        every: Optional[str] = None,
        timezone: Optional[str] = None,
        overlap: Optional[str] = None,
        catch_up: Optional[str] = None,
    ) -> Schedule:
        """Creates the schedule ``name``, or replaces the one of that name: ``job`` (a
        :func:`job_spec`, or just a kind) is submitted on every slot of ``cron`` (``"0 3 *
        * *"``, six fields with seconds, ``"@hourly"``) in ``timezone`` (IANA, default UTC),
        or ``every`` (``"30s"``). ``overlap="skip"``: no new job while the last one runs;
        ``catch_up``: ``"latest"`` (default), ``"none"`` or ``"all"`` missed slots."""
        call = _Requests.schedule(name, job, cron, every, timezone, overlap, catch_up)
        return Schedule.from_json(self._send(call).json())

    def schedules(self) -> List[Schedule]:
        """Every schedule (of this API key's tenant)."""
        return _schedules(self._send(_Call("GET", "/v1/schedules")).json())

    def get_schedule(self, name: str) -> Schedule:
        """One schedule; APIError 404 when there is none of that name."""
        return Schedule.from_json(
            self._send(_Call("GET", f"/v1/schedules/{_segment(name)}")).json())

    def delete_schedule(self, name: str) -> None:
        """Deletes a schedule (jobs it already made are left alone)."""
        self._send(_Call("DELETE", f"/v1/schedules/{_segment(name)}"))

    def pause_schedule(self, name: str) -> Schedule:
        """Stops making jobs until :meth:`resume_schedule`."""
        return Schedule.from_json(
            self._send(_Call("POST", f"/v1/schedules/{_segment(name)}/pause")).json())

    def resume_schedule(self, name: str) -> Schedule:
        """Makes jobs again from the next slot."""
        return Schedule.from_json(
            self._send(_Call("POST", f"/v1/schedules/{_segment(name)}/resume")).json())


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

    async def _send(self, call: _Call) -> httpx.Response:
        headers = {**_sse.headers(self.api_key), **call.headers}
        if call.method == "POST" and call.json is None:
            headers.update(_JSON_POST)
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params or None, json=call.json,
                headers=headers,
                timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as e:
            raise TransportError(f"{call.method} {call.path}: {e}") from e
        _raise_for_problem(response)
        return response

    # -- jobs ---------------------------------------------------------------------------

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
        tags: Optional[Mapping[str, str]] = None,
        concurrency_key: Optional[str] = None,
        concurrency_limit: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        wait: Optional[float] = None,
    ) -> Job:
        """See :meth:`Client.submit`."""
        spec = job_spec(kind, args, queue=queue, priority=priority, run_at=run_at,
                        max_attempts=max_attempts, timeout_secs=timeout_secs, tags=tags,
                        concurrency_key=concurrency_key, concurrency_limit=concurrency_limit)
        deadline = _Deadline(wait) if wait is not None else None
        call = _Requests.submit(spec, idempotency_key, deadline.first if deadline else None)
        job = Job.from_json((await self._send(call)).json())
        return await self._wait_more(job, deadline) if deadline else job

    async def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> List[Job]:
        """See :meth:`Client.submit_many`."""
        body = {"jobs": [dict(spec) for spec in specs]}
        answer = (await self._send(_Call("POST", "/v1/jobs/batch", json=body))).json()
        return [Job.from_json(job) for job in answer["jobs"]]

    async def get(self, job_id: str, *, wait: Optional[float] = None) -> Job:
        """See :meth:`Client.get`."""
        if wait is None:
            return Job.from_json((await self._send(_Requests.get(job_id, None))).json())
        deadline = _Deadline(wait)
        job = Job.from_json((await self._send(_Requests.get(job_id, deadline.first))).json())
        return await self._wait_more(job, deadline)

    async def _wait_more(self, job: Job, deadline: _Deadline) -> Job:
        while not job.terminal:
            seconds = deadline.next()
            if seconds is None:
                break
            asked = time.monotonic()
            job = Job.from_json((await self._send(_Requests.get(job.id, seconds))).json())
            await asyncio.sleep(_pause_after(job, seconds, asked))
        return job

    async def list_jobs(
        self,
        *,
        tags: Optional[Mapping[str, str]] = None,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        status: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> JobPage:
        """See :meth:`Client.list_jobs`."""
        answer = (await self._send(_Requests.list_jobs(tags, queue, kind, status, limit,
                                                       cursor))).json()
        return JobPage([Job.from_json(j) for j in answer["jobs"]], answer.get("next_cursor"))

    async def iter_jobs(
        self,
        *,
        tags: Optional[Mapping[str, str]] = None,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        status: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> AsyncIterator[Job]:
        """See :meth:`Client.iter_jobs`."""
        cursor: Optional[str] = None
        while True:
            page = await self.list_jobs(tags=tags, queue=queue, kind=kind, status=status,
                                        limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        """See :meth:`Client.cancel`."""
        response = await self._send(_Call("POST", f"/v1/jobs/{_segment(job_id)}/cancel"))
        return Job.from_json(response.json())

    async def retry(self, job_id: str) -> Job:
        """See :meth:`Client.retry`."""
        response = await self._send(_Call("POST", f"/v1/jobs/{_segment(job_id)}/retry"))
        return Job.from_json(response.json())

    async def output(self, job_id: str, stream: str = "output", *,
                     attempt: Optional[int] = None) -> str:
        """See :meth:`Client.output`."""
        return (await self._send(_Requests.output(job_id, stream, attempt))).text

    # -- streams ------------------------------------------------------------------------

    def follow(
        self,
        job_id: str,
        *,
        last_event_id: int = 0,
        give_up_after: Optional[float] = None,
    ) -> AsyncIterator[Event]:
        """See :meth:`Client.follow` (``async for event in client.follow(id)``)."""
        state = _sse.Follow(f"/v1/jobs/{_segment(job_id)}/events", [], last_event_id,
                            give_up_after, firehose=False)
        return self._follow(state)

    def follow_events(
        self,
        *,
        tags: Optional[Mapping[str, str]] = None,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        output: bool = False,
        last_event_id: Optional[str] = None,
        give_up_after: Optional[float] = None,
    ) -> AsyncIterator[Event]:
        """See :meth:`Client.follow_events`."""
        params = _Requests.events(tags, queue, kind, output)
        state = _sse.Follow("/v1/events", params, last_event_id, give_up_after, firehose=True)
        return self._follow(state)

    async def _follow(self, state: _sse.Follow) -> AsyncIterator[Event]:
        while True:
            try:
                async with aconnect_sse(self._http, "GET", state.path,
                                        params=state.params or None,
                                        headers=state.headers(self.api_key),
                                        timeout=STREAM_TIMEOUT) as source:
                    response = source.response
                    if response.status_code == 204:
                        return
                    if _sse.should_reconnect(response):
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
                        if state.ends_with(event):
                            return
                error: Exception = TransportError("the stream ended")
            except (httpx.TransportError, TransportError) as e:
                error = e
            await asyncio.sleep(state.next_wait(error))

    async def create_token(
        self,
        *,
        jobs: Optional[Sequence[str]] = None,
        firehose: bool = False,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        ttl_secs: Optional[int] = None,
    ) -> StreamToken:
        """See :meth:`Client.create_token`."""
        call = _Requests.token(jobs, firehose, queue, kind, tags, ttl_secs)
        return _token(self.url, (await self._send(call)).json(), call)

    # -- schedules ----------------------------------------------------------------------

    async def create_schedule(
        self,
        name: str,
        job: Union[str, Mapping[str, Any]],
        *,
        cron: Optional[str] = None,
        every: Optional[str] = None,
        timezone: Optional[str] = None,
        overlap: Optional[str] = None,
        catch_up: Optional[str] = None,
    ) -> Schedule:
        """See :meth:`Client.create_schedule`."""
        call = _Requests.schedule(name, job, cron, every, timezone, overlap, catch_up)
        return Schedule.from_json((await self._send(call)).json())

    async def schedules(self) -> List[Schedule]:
        """See :meth:`Client.schedules`."""
        return _schedules((await self._send(_Call("GET", "/v1/schedules"))).json())

    async def get_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.get_schedule`."""
        response = await self._send(_Call("GET", f"/v1/schedules/{_segment(name)}"))
        return Schedule.from_json(response.json())

    async def delete_schedule(self, name: str) -> None:
        """See :meth:`Client.delete_schedule`."""
        await self._send(_Call("DELETE", f"/v1/schedules/{_segment(name)}"))

    async def pause_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.pause_schedule`."""
        response = await self._send(_Call("POST", f"/v1/schedules/{_segment(name)}/pause"))
        return Schedule.from_json(response.json())

    async def resume_schedule(self, name: str) -> Schedule:
        """See :meth:`Client.resume_schedule`."""
        response = await self._send(_Call("POST", f"/v1/schedules/{_segment(name)}/resume"))
        return Schedule.from_json(response.json())
