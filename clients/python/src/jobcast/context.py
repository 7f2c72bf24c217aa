"""What a running attempt sees: its job, progress and custom events, output streams, and
cancellation.

``async def`` handlers get an :class:`AsyncContext` (await its methods); plain functions run
in a thread and get a :class:`Context` (its methods block until the event is committed).
``append`` is the exception in both: it returns at once (the worker coalesces the text).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any, Callable, Coroutine, Dict, Optional

from ._output import AttemptOutput
from .errors import Cancelled

_CUSTOM_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
#: Event types jobcast itself writes; a handler may not emit them.
BUILTIN_EVENT_TYPES = frozenset({"queued", "started", "progress", "retrying", "retried",
                                 "succeeded", "failed", "cancelled", "output"})


def progress_element(percent: float, message: Optional[str], data: Any) -> Dict[str, Any]:
    """A ``progress`` element of jobcast.record_events, checked."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)):
        raise TypeError("progress must be a number (a percentage 0-100)")
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise ValueError(f"progress must be a percentage between 0 and 100, got {percent!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError("message must be a string")
    _check_json(data)
    element: Dict[str, Any] = {"type": "progress", "progress": float(percent), "message": message}
    if data is not None:
        element["data"] = data
    return element


def custom_element(event_type: str, data: Any) -> Dict[str, Any]:
    """A custom event element of jobcast.record_events, checked."""
    if not isinstance(event_type, str) or not _CUSTOM_TYPE.match(event_type) \
            or event_type in BUILTIN_EVENT_TYPES:
        raise ValueError(f"invalid custom event type {event_type!r}: "
                         "^[a-z][a-z0-9_.-]{0,63}$ and not a built-in type")
    _check_json(data)
    element: Dict[str, Any] = {"type": event_type}
    if data is not None:
        element["data"] = data
    return element


def _check_json(value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"data is not JSON: {e}") from e


class _ContextBase:
    def __init__(
        self,
        job: Dict[str, Any],
        worker_id: str,
        is_cancelled: Callable[[], bool],
        record: Callable[[Dict[str, Any]], Coroutine[Any, Any, None]],
        output: AttemptOutput,
    ) -> None:
        #: The job's id, as the API shows it.
        self.job_id: str = str(job["id"])
        #: This attempt's number, from 1.
        self.attempt: int = job["attempt"]
        #: Attempts the job may have in all.
        self.max_attempts: int = job["max_attempts"]
        self.kind: str = job["kind"]
        self.queue: str = job["queue"]
        #: The worker running the attempt (recorded on the job while it runs).
        self.worker_id = worker_id
        self._is_cancelled = is_cancelled
        self._record = record
        self._output = output

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled, its attempt lost its lease or timed out, or the
        worker is stopping for good: stop soon; nothing more will be recorded."""
        return self._is_cancelled()

    def append(self, text: str, stream: str = "output") -> None:
        """Appends ``text`` to the output stream ``stream`` of this attempt (an LLM's
        tokens, a build's log lines) and returns at once: not awaited, never blocks.

        The worker coalesces appends into ``output`` events (at least every flush window,
        25 ms by default; at once when a stream holds 16 KiB; and before the attempt's
        outcome). Stream names: ``^[a-z][a-z0-9_.-]{0,31}$`` (ValueError otherwise). A NUL
        becomes U+FFFD. Raises :class:`Cancelled` once the job was cancelled or the attempt
        lost its lease (stop then), and :class:`OutputLimitExceeded` for the append that
        would pass the worker's ``max_output_bytes``: the attempt then fails, not retried.
        """
        self._output.append(text, stream)

    @property
    def output_bytes(self) -> int:
        """Bytes this attempt appended so far, across its output streams."""
        return self._output.total_bytes


class AsyncContext(_ContextBase):
    """The context of an ``async def`` handler."""

    async def progress(self, percent: float, message: Optional[str] = None,
                       data: Any = None) -> None:
        """Records a ``progress`` event (percent 0-100, an optional message and JSON data).
        Returns once committed; raises :class:`Cancelled` when the write was refused."""
        await self._record(progress_element(percent, message, data))

    async def emit(self, event_type: str, data: Any = None) -> None:
        """Records a custom event (``^[a-z][a-z0-9_.-]{0,63}$``, not a built-in type)."""
        await self._record(custom_element(event_type, data))

    async def flush(self) -> None:
        """Writes the text appended so far now and returns once it is committed (seldom
        needed: appends are flushed within the flush window anyway). Raises
        :class:`Cancelled` when the write was refused."""
        await self._output.flushed()


class Context(_ContextBase):
    """The context of a plain (thread-run) handler: its methods block."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *args: Any) -> None:
        super().__init__(*args)
        self._loop = loop

    def _record_blocking(self, element: Dict[str, Any]) -> None:
        if self.cancelled:
            raise Cancelled("the job was cancelled or this attempt lost its lease")
        asyncio.run_coroutine_threadsafe(self._record(element), self._loop).result()

    def progress(self, percent: float, message: Optional[str] = None, data: Any = None) -> None:
        """See :meth:`AsyncContext.progress`; blocks until committed."""
        self._record_blocking(progress_element(percent, message, data))

    def emit(self, event_type: str, data: Any = None) -> None:
        """See :meth:`AsyncContext.emit`; blocks until committed."""
        self._record_blocking(custom_element(event_type, data))

    def flush(self) -> None:
        """See :meth:`AsyncContext.flush`; blocks until committed."""
        asyncio.run_coroutine_threadsafe(self._output.flushed(), self._loop).result()
