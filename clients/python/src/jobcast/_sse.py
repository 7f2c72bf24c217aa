"""What following an SSE stream remembers between reconnections: where to resume (a job's
seq, or the firehose's opaque cursor), and how long to wait before the next try."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Union

import httpx
from httpx_sse import ServerSentEvent

from ._models import Event
from .errors import TransportError

#: Longest wait between two reconnection attempts.
MAX_RECONNECT_WAIT = 5.0


def headers(api_key: Optional[str]) -> Dict[str, str]:
    """The headers of every request."""
    result = {"Accept": "application/json"}
    if api_key:
        result["Authorization"] = f"Bearer {api_key}"
    return result


def should_reconnect(response: httpx.Response) -> bool:
    """5xx and 429 are passing states of the service; other errors will not go away."""
    return response.status_code >= 500 or response.status_code == 429


class Follow:
    """One ``follow`` (a job's stream: ends at its terminal event) or ``follow_events``
    (the firehose, maybe filtered by tags: never ends by itself)."""

    def __init__(self, path: str, params: List[Any], resume: Union[int, str, None],
                 give_up_after: Optional[float], firehose: bool) -> None:
        self.path = path
        self.params = params
        self.resume = resume
        self.give_up_after = give_up_after
        self.firehose = firehose
        self.retry = 1.0
        self.failures = 0
        self.failing_since: Optional[float] = None

    def headers(self, api_key: Optional[str]) -> Dict[str, str]:
        result = headers(api_key)
        result["Accept"] = "text/event-stream"
        if self.resume not in (None, 0, ""):
            result["Last-Event-ID"] = str(self.resume)
        return result

    def connected(self) -> None:
        self.failures = 0
        self.failing_since = None

    def seen(self, sse: ServerSentEvent) -> Optional[Event]:
        """The event of a frame (None for a frame without one), remembered as the resume
        point."""
        if sse.retry is not None:
            self.retry = max(0.05, sse.retry / 1000.0)
        if not sse.id or not sse.data:
            return None
        try:
            data = json.loads(sse.data)
        except ValueError:
            data = {"raw": sse.data}
        if not isinstance(data, dict):
            data = {"raw": data}
        if self.firehose:
            self.resume = sse.id
            return Event(id=int(data.get("seq") or 0), type=sse.event, data=data,
                         cursor=sse.id)
        self.resume = int(sse.id)
        return Event(id=int(sse.id), type=sse.event, data=data)

    def ends_with(self, event: Event) -> bool:
        """Whether the stream is over after ``event`` (a job's terminal event)."""
        return not self.firehose and event.terminal

    def next_wait(self, error: Exception) -> float:
        """Seconds before reconnecting; raises when the caller's patience is used up."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if self.give_up_after is not None and now - self.failing_since > self.give_up_after:
            raise TransportError(
                f"gave up following after {self.give_up_after} s: {error}") from error
        wait = min(self.retry * float(2 ** min(self.failures, 6)), MAX_RECONNECT_WAIT)
        self.failures += 1
        return wait
