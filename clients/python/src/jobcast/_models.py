"""The objects of the HTTP API as Python values (jobs, events, schedules, stream tokens)
and :func:`job_spec`, the body of ``POST /v1/jobs`` that transactional enqueue shares."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Union

#: Event types after which a job's stream ends.
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})

RunAt = Union[datetime, str]

_TAG_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
#: Most tags one job may carry (API.md).
MAX_TAGS = 16


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
    #: The job's tags (``{}`` when it has none).
    tags: Dict[str, str] = field(default_factory=dict)
    #: The schedule that made the job, and the slot it was made for (RFC 3339).
    schedule: Optional[str] = None
    scheduled_for: Optional[str] = None
    #: Why a queued job is held back (``"concurrency_key"``, ``"paused"`` …), or None.
    waiting_for: Optional[str] = None
    #: Streams open on the job across the web tier (at most a few seconds old).
    subscribers: Optional[int] = None
    links: Dict[str, str] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Job":
        """Builds a Job from the API's JSON object."""
        known = {name for name in cls.__dataclass_fields__ if name != "raw"}
        values = {k: v for k, v in raw.items() if k in known}
        values["tags"] = dict(raw.get("tags") or {})
        values["links"] = dict(raw.get("links") or {})
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
    """One event. On a job's stream ``id`` is its seq (1, 2, 3 … per job); on the firehose
    (:meth:`Client.follow_events`) ``id`` is the seq too and ``cursor`` the stream's opaque
    resume position."""

    id: int
    type: str
    data: Dict[str, Any]
    cursor: Optional[str] = None

    @property
    def terminal(self) -> bool:
        """Whether this event ends its job's stream."""
        return self.type in TERMINAL_EVENTS

    @property
    def job_id(self) -> str:
        """The id of the job the event belongs to."""
        return str(self.data.get("job_id", ""))

    @property
    def stream(self) -> Optional[str]:
        """An ``output`` event's stream name (None for other types)."""
        return self.data.get("stream") if self.type == "output" else None

    @property
    def text(self) -> Optional[str]:
        """An ``output`` event's text (None for other types)."""
        return self.data.get("text") if self.type == "output" else None


@dataclass(frozen=True)
class JobPage:
    """One page of :meth:`Client.list_jobs`: pass ``next_cursor`` back for the next one."""

    jobs: List[Job]
    next_cursor: Optional[str]


@dataclass(frozen=True)
class StreamToken:
    """A stream token (``POST /v1/tokens``) to hand to a web page for EventSource.

    ``url`` is the stream it opens, token included, when that is one stream (one job, the
    firehose, or a tag filter); None for a token of several jobs.
    """

    token: str
    expires_at: str
    url: Optional[str] = None


@dataclass(frozen=True)
class Schedule:
    """A schedule (``/v1/schedules``): a job spec made on every slot of ``cron``/``every``."""

    name: str
    job: Dict[str, Any]
    cron: Optional[str] = None
    every: Optional[str] = None
    timezone: str = "UTC"
    overlap: str = "allow"
    catch_up: str = "latest"
    paused: bool = False
    next_run_at: Optional[str] = None
    last_run_at: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Schedule":
        """Builds a Schedule from the API's JSON object."""
        known = {name for name in cls.__dataclass_fields__ if name != "raw"}
        values = {k: v for k, v in raw.items() if k in known and v is not None}
        values.setdefault("job", {})
        return cls(raw=dict(raw), **values)


def check_tags(tags: Mapping[str, str]) -> Dict[str, str]:
    """``tags`` as a dict if they follow API.md's rules (at most 16; keys
    ``^[a-z][a-z0-9_.-]{0,31}$``; values strings of 1-128 characters); ValueError otherwise."""
    if not isinstance(tags, Mapping):
        raise TypeError("tags must be a mapping of strings, e.g. {'user': '42'}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"a job carries at most {MAX_TAGS} tags, not {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG_KEY.match(key):
            raise ValueError(f"invalid tag key {key!r}: ^[a-z][a-z0-9_.-]{{0,31}}$")
        if not isinstance(value, str) or not 1 <= len(value) <= 128:
            raise ValueError(f"tag {key!r}: the value must be a string of 1-128 characters")
    return dict(tags)


def tag_params(tags: Optional[Mapping[str, str]]) -> List[Any]:
    """``tag=KEY:VALUE`` query parameters, one per tag (all must match)."""
    if not tags:
        return []
    return [("tag", f"{key}:{value}") for key, value in check_tags(tags).items()]


def job_spec(
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
) -> Dict[str, Any]:
    """The JSON body of ``POST /v1/jobs`` (also the spec of ``jobcast.enqueue_job`` and a
    schedule's ``job``).

    Unset options are left out, so the server's defaults apply. ``tags``: see
    :func:`check_tags`. ``concurrency_key``/``concurrency_limit``: at most that many jobs
    with the key run at once, across every worker.
    """
    spec: Dict[str, Any] = {"kind": kind, "args": {} if args is None else args}
    if queue is not None:
        spec["queue"] = queue
    if priority is not None:
        spec["priority"] = priority
    if run_at is not None:
        spec["run_at"] = rfc3339(run_at)
    if max_attempts is not None:
        spec["max_attempts"] = max_attempts
    if timeout_secs is not None:
        spec["timeout_secs"] = timeout_secs
    if tags:
        spec["tags"] = check_tags(tags)
    if concurrency_key is not None:
        spec["concurrency_key"] = concurrency_key
    if concurrency_limit is not None:
        spec["concurrency_limit"] = concurrency_limit
    return spec


def rfc3339(value: RunAt) -> str:
    """A timezone-aware datetime (or an RFC 3339 string, as is) as RFC 3339."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return value.isoformat()
