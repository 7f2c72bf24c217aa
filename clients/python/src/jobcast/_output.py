"""The output streams of one running attempt (API.md "Output streams").

``ctx.append`` only adds text to a per-stream buffer and returns; a flush turns each
stream's pending text into ``output`` events (``stream``, ``offset``: the UTF-8 byte offset
of ``text`` in this attempt's stream, ``text``) queued on the worker's writer, which commits
them with everything else in its next group commit. A flush happens when the flush window
(25 ms by default) after the first unflushed append ends, when a stream holds 16 KiB
unflushed, and before the attempt's outcome is queued, so that all text appended before the
handler returned is in events that precede its ``succeeded``/``failed``.

Appends may come from the handler's thread (plain handlers); flushes run on the worker's
event loop only, so offsets are handed out, and ops queued, in one order.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any, Callable, Dict, List, Optional, Set

from ._writer import EventOp
from .errors import Cancelled, Fatal, OutputLimitExceeded, WriteFailed

STREAM_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
#: A stream holding this many unflushed bytes is flushed at once (API.md).
FLUSH_BYTES = 16 * 1024
#: Most bytes of text one event holds: a bigger flush is cut into several events, each at a
#: character boundary, so no SSE frame or row is unboundedly large.
MAX_EVENT_TEXT = FLUSH_BYTES
#: Default per-attempt limit across all streams (API.md: --max-output-bytes).
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
#: Default flush window, in milliseconds (API.md: --output-flush-ms).
DEFAULT_FLUSH_MS = 25.0

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_stream_name(stream: Any) -> str:
    """``stream`` if it is a valid output stream name; ValueError otherwise."""
    if not isinstance(stream, str) or not STREAM_NAME.match(stream):
        raise ValueError(f"invalid output stream name {stream!r}: ^[a-z][a-z0-9_.-]{{0,31}}$")
    return stream


def clean_text(text: Any) -> "tuple[str, int]":
    """The text as it will be stored (a NUL, which PostgreSQL's JSON cannot hold, and a lone
    surrogate, which UTF-8 cannot encode, become U+FFFD) and its UTF-8 length in bytes."""
    if not isinstance(text, str):
        raise TypeError(f"output text must be a str, not {type(text).__name__}")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():
        return text, len(text)
    try:
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
        return text, len(text.encode("utf-8"))


def utf8_chunks(text: str, limit: int = MAX_EVENT_TEXT) -> List[bytes]:
    """``text`` encoded, in pieces of at most ``limit`` bytes, never cut inside a character
    (a piece ends before a continuation byte's character)."""
    data = text.encode("utf-8")
    chunks = []
    start = 0
    while len(data) - start > limit:
        end = start + limit
        while data[end] & 0xC0 == 0x80:  # a continuation byte: back off to its lead byte
            end -= 1
        chunks.append(data[start:end])
        start = end
    chunks.append(data[start:])
    return chunks


class _Stream:
    __slots__ = ("pending", "pending_bytes", "offset")

    def __init__(self) -> None:
        self.pending: List[str] = []
        self.pending_bytes = 0
        self.offset = 0  # bytes of this stream already handed to the writer


class AttemptOutput:
    """The buffered output streams of one attempt. Construct on the worker's loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        job_id: int,
        attempt: int,
        *,
        flush_ms: float,
        max_bytes: int,
        enqueue: Callable[[EventOp], "asyncio.Future[bool]"],
        must_stop: Callable[[], bool],
        refused: Callable[[], None],
        failed: Callable[[Fatal], None],
    ) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._job_id = job_id
        self._attempt = attempt
        self._flush_secs = max(flush_ms, 0.0) / 1000.0
        self._max_bytes = max_bytes
        self._enqueue = enqueue
        self._must_stop = must_stop
        self._refused = refused
        self._failed = failed
        self._lock = threading.Lock()
        self._streams: Dict[str, _Stream] = {}
        self._pending_bytes = 0  # across streams
        self._total_bytes = 0  # accepted by append, across streams (the limit's count)
        self._closed = False
        self._limit_error: Optional[OutputLimitExceeded] = None
        self._timer: Optional[asyncio.TimerHandle] = None  # touched on the loop only
        self._unwritten: Set["asyncio.Future[bool]"] = set()

    @property
    def total_bytes(self) -> int:
        """Bytes appended by this attempt so far, across its streams."""
        return self._total_bytes

    def append(self, text: str, stream: str = "output") -> None:
        """Adds ``text`` to ``stream``; returns at once (callable from any thread)."""
        check_stream_name(stream)
        text, size = clean_text(text)
        with self._lock:
            if self._limit_error is not None:
                raise OutputLimitExceeded(self._limit_error.message, self._max_bytes)
            if self._closed or self._must_stop():
                raise Cancelled("appends are refused: the job was cancelled, this attempt "
                                "lost its lease or ended")
            if size == 0:
                return
            if self._total_bytes + size > self._max_bytes:
                self._limit_error = OutputLimitExceeded(
                    f"output limit exceeded: appending {size} bytes would take this "
                    f"attempt's output past max_output_bytes ({self._max_bytes} bytes)",
                    self._max_bytes)
                error = self._limit_error
                self._call_on_loop(lambda: self._failed(error))
                raise OutputLimitExceeded(error.message, self._max_bytes)
            self._total_bytes += size
            state = self._streams.get(stream)
            if state is None:
                state = self._streams[stream] = _Stream()
            state.pending.append(text)
            state.pending_bytes += size
            first = self._pending_bytes == 0
            self._pending_bytes += size
            full = state.pending_bytes >= FLUSH_BYTES
        if full:
            self._call_on_loop(self.flush)
        elif first:
            self._call_on_loop(self._arm)

    def _call_on_loop(self, function: Callable[[], Any]) -> None:
        if threading.get_ident() == self._loop_thread:
            function()
        else:
            self._loop.call_soon_threadsafe(function)

    def _arm(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = self._loop.call_later(self._flush_secs, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> List["asyncio.Future[bool]"]:
        """Queues every stream's pending text as output events (on the loop); the futures
        of the ops queued now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ops: List[EventOp] = []
        with self._lock:
            for name, state in self._streams.items():
                if not state.pending:
                    continue
                text = "".join(state.pending)
                state.pending.clear()
                state.pending_bytes = 0
                for chunk in utf8_chunks(text):
                    ops.append(EventOp(self._job_id, self._attempt, {
                        "type": "output", "stream": name, "offset": state.offset,
                        "text": chunk.decode("utf-8")}))
                    state.offset += len(chunk)
            self._pending_bytes = 0
        futures = []
        for op in ops:
            future = self._enqueue(op)
            self._unwritten.add(future)
            future.add_done_callback(self._written)
            futures.append(future)
        return futures

    async def flushed(self) -> None:
        """Flushes, then waits until every event queued so far is committed; raises
        Cancelled when one was refused (fencing) and WriteFailed when PostgreSQL refused one."""
        self.flush()
        outcomes = await asyncio.gather(*list(self._unwritten), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is False:
                raise Cancelled("an output write was refused: the job was cancelled or this "
                                "attempt lost its lease")

    def close(self, flush: bool) -> None:
        """No more appends; queues what is pending first when ``flush`` (on the loop)."""
        with self._lock:
            self._closed = True
        if flush:
            self.flush()
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _written(self, future: "asyncio.Future[bool]") -> None:
        self._unwritten.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, WriteFailed):
            # Not fencing: PostgreSQL refused the text itself. The attempt fails with why.
            self._failed(Fatal(f"PostgreSQL refused the attempt's output: {error.reason}"))
        elif error is None and future.result() is False:
            self._refused()
