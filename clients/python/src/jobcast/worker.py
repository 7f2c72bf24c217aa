"""A jobcast worker in Python, over the SQL protocol (docs/protocol.md), with the Rust
worker's guarantees: batch claims of registered kinds, leases extended by heartbeats,
fencing (a refused write stops the handler), LISTEN wake-ups and cancellations, lease
reclaim for dead workers, exponential retry backoff, and a SIGTERM drain.

    worker = Worker(os.environ["DATABASE_URL"], queues=["default"], concurrency=8)

    @worker.handler("report")
    async def report(ctx, args):
        await ctx.progress(50, "half way")
        ctx.append("row 1 of 10\n", stream="log")   # output text: not awaited
        return {"rows": 10}

    worker.run()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import psycopg
from psycopg.rows import dict_row

from . import _duties
from ._db import Connector
from ._output import DEFAULT_FLUSH_MS, DEFAULT_MAX_OUTPUT_BYTES, AttemptOutput
from ._writer import CompleteOp, EventOp, FailOp, ReleaseOp, Writer
from .context import AsyncContext, Context
from .errors import Cancelled, Fatal, OutputLimitExceeded, Retry, WriteFailed

log = logging.getLogger("jobcast.worker")

#: Longest sleep between claims when no notification arrives.
IDLE_FLOOR = 0.02
POLL_EVERY = 1.0
#: Most jobs claimed in one statement.
MAX_CLAIM = 100
#: Attempts claimed but not yet recorded, per handler slot.
IN_FLIGHT_PER_SLOT = 4
#: How long a stopping worker tries to hand back unfinished jobs after the grace period.
HAND_BACK_TIMEOUT = 5.0
#: Longest retry backoff (API.md).
MAX_BACKOFF_MS = 600_000

Handler = Callable[..., Any]


def retry_delay_ms(base_ms: int, attempt: int) -> int:
    """About ``base · 2^(attempt−1)`` with ±20 % jitter, capped at 10 minutes — the Rust
    worker's formula."""
    exponent = min(max(attempt, 1), 40) - 1
    nominal = base_ms * (2.0 ** exponent)
    return int(min(nominal * random.uniform(0.8, 1.2), MAX_BACKOFF_MS))


#: Longest traceback kept in a job's error (its end, where the exception was raised).
MAX_TRACEBACK_CHARS = 16 * 1024


def exception_error(error: BaseException) -> Dict[str, Any]:
    """A job's ``error`` for an exception a handler raised: ``message``, ``exception`` (the
    class name) and ``traceback`` (as Python prints it, its last 16 KiB when longer)."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "Traceback (most recent call last):\n  …\n" + text[-MAX_TRACEBACK_CHARS:]
    return {"message": str(error) or type(error).__name__,
            "exception": type(error).__name__, "traceback": text}


def _say(message: str, *args: Any) -> None:
    """Logs at INFO; to stderr as well when the program configured no logging at all (a
    worker that starts in silence looks like one that hangs)."""
    if log.hasHandlers():
        log.info(message, *args)
    else:
        print("jobcast: " + (message % args), file=sys.stderr, flush=True)


def default_worker_id() -> str:
    """``host:pid:xxxx``, like the Rust worker's."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(16):04x}"


class _Attempt:
    """One running attempt and why it may have to stop."""

    def __init__(self, job: Dict[str, Any]) -> None:
        self.job = job
        self.job_id: int = job["id"]
        self.attempt: int = job["attempt"]
        self.task: Optional["asyncio.Future[Any]"] = None
        self.cancelled = False  # cancelled in the database, lease lost, or write refused
        self.timed_out = False
        self.stopped = False  # the worker's grace period is over: hand it back
        self.failure: Optional[Fatal] = None  # failed by the worker (the output limit …)
        self.output: Optional[AttemptOutput] = None

    @property
    def must_stop(self) -> bool:
        return self.cancelled or self.timed_out or self.stopped or self.failure is not None

    def interrupt(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class Worker:
    """Runs registered handlers for jobs of ``queues``; see the module's docstring."""

    def __init__(
        self,
        database_url: str,
        queues: Sequence[str] = ("default",),
        concurrency: int = 8,
        *,
        lease_secs: float = 30.0,
        retry_base_ms: int = 1000,
        grace_secs: float = 30.0,
        retention_days: float = 7.0,
        worker_id: Optional[str] = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        output_flush_ms: float = DEFAULT_FLUSH_MS,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease_secs <= 0:
            raise ValueError("lease_secs must be positive")
        if max_output_bytes < 1:
            raise ValueError("max_output_bytes must be at least 1")
        if output_flush_ms < 0:
            raise ValueError("output_flush_ms must not be negative")
        self.database_url = database_url
        self.queues = list(queues)
        self.concurrency = concurrency
        self.lease_secs = float(lease_secs)
        self.retry_base_ms = int(retry_base_ms)
        self.grace_secs = float(grace_secs)
        self.retention_days = float(retention_days)
        self.worker_id = worker_id or default_worker_id()
        #: Bytes one attempt may append across its output streams (API.md: 64 MiB).
        self.max_output_bytes = int(max_output_bytes)
        #: Longest time appended text waits before it is written.
        self.output_flush_ms = float(output_flush_ms)
        self._handlers: Dict[str, Handler] = {}
        self._running: Dict[int, _Attempt] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stopping: Optional[asyncio.Event] = None
        self._hard_stop_now = False

    # -- registration -------------------------------------------------------------------

    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """Registers the decorated function for jobs of ``kind``: ``async def f(ctx, args)``
        (gets an AsyncContext) or a plain ``def f(ctx, args)`` (run in a thread, gets a
        Context). Its return value is the job's result (JSON); raising :class:`Retry`
        retries, :class:`Fatal` fails the job at once, any other exception retries (the
        job's error keeps its message, class name and traceback)."""

        def register(function: Handler) -> Handler:
            self._handlers[kind] = function
            return function

        return register

    @property
    def kinds(self) -> List[str]:
        """The registered kinds: the only ones this worker claims."""
        return sorted(self._handlers)

    # -- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Runs until SIGTERM/SIGINT (or :meth:`stop`), then drains: running jobs get
        ``grace_secs`` to finish, the rest are handed back. A second signal skips the wait."""
        asyncio.run(self.run_async(install_signal_handlers=True))
        handlers = [t for t in threading.enumerate() if t.name.startswith("jobcast-handler")]
        deadline = time.monotonic() + 1.0
        for thread in handlers:  # idle ones end at once
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t for t in handlers if t.is_alive()]
        if stuck:
            # Plain handlers that ignored the stop are still running in their threads; their
            # jobs were handed back, and Python would wait for them forever at exit.
            log.warning("%d handler threads did not stop; exiting without them", len(stuck))
            logging.shutdown()
            os._exit(0)

    def stop(self) -> None:
        """Asks a running worker to drain and stop (callable from any thread)."""
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(self._request_stop)

    def _request_stop(self) -> None:
        assert self._stopping is not None
        if self._stopping.is_set():
            log.info("stop requested again: handing back running jobs now")
            self._hard_stop_now = True
            self._hard_stop()
        self._stopping.set()
        self._wake.set()

    async def run_async(self, install_signal_handlers: bool = False) -> None:
        """The worker as a coroutine; returns after :meth:`stop` and the drain."""
        if not self._handlers:
            raise ValueError("register at least one handler before running the worker")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._in_flight = asyncio.Semaphore(self.concurrency * IN_FLIGHT_PER_SLOT)
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="jobcast-handler")
        self._claimer = Connector(self.database_url, "jobcast-py-claim")
        self._writer = Writer(Connector(self.database_url, "jobcast-py-write"), self.worker_id)
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._request_stop)
        self._writer.start()
        _say("worker started: id=%s queues=%s kinds=%s concurrency=%d", self.worker_id,
             ",".join(self.queues), ",".join(self.kinds), self.concurrency)
        url = self.database_url
        background = [asyncio.ensure_future(f) for f in (
            _duties.listen(url, self.queues, self._wake, self._cancel),
            _duties.heartbeat(url, self.worker_id, self.lease_secs, self._held, self._lost),
            _duties.maintain(url, self.lease_secs, self.retry_base_ms, self.retention_days),
            _duties.announce(url, self.worker_id, self.queues, self.kinds, self.concurrency,
                             lambda: len(self._running)))]
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._writer.close(timeout=10.0)
            await self._claimer.close()
            self._executor.shutdown(wait=False)
            if install_signal_handlers and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            _say("worker stopped")

    async def _drain(self) -> None:
        log.info("draining: %d running, grace %.1f s", len(self._tasks), self.grace_secs)
        if self._tasks and not self._hard_stop_now:
            await asyncio.wait(set(self._tasks), timeout=self.grace_secs)
        if self._tasks:
            log.info("grace period over; handing back %d unfinished jobs", len(self._tasks))
            self._hard_stop()
            await asyncio.wait(set(self._tasks), timeout=HAND_BACK_TIMEOUT + 1)

    def _hard_stop(self) -> None:
        for attempt in self._running.values():
            attempt.stopped = True
            attempt.interrupt()

    # -- claiming -----------------------------------------------------------------------

    async def _acquire(self, semaphore: asyncio.Semaphore) -> bool:
        """Takes a permit, or returns false once the worker is stopping."""
        assert self._stopping is not None
        if not semaphore.locked():
            await semaphore.acquire()  # does not suspend: a permit is free
            return True
        acquire = asyncio.ensure_future(semaphore.acquire())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not acquire.done():
            acquire.cancel()
        try:
            await acquire
        except asyncio.CancelledError:
            return False
        if self._stopping.is_set():
            semaphore.release()
            return False
        return True

    async def _claim_loop(self) -> None:
        assert self._stopping is not None
        kinds = self.kinds
        backoff = 0.1
        while not self._stopping.is_set():
            if not await self._acquire(self._slots):
                return
            if not await self._acquire(self._in_flight):
                self._slots.release()
                return
            if self._running:
                # Busy: completions free slots in bursts (one group commit at a time); gather
                # the burst so one claim fills many slots. Idle workers claim at once.
                await asyncio.sleep(0.001)
            wanted = 1
            while wanted < MAX_CLAIM and not self._slots.locked() and not self._in_flight.locked():
                await self._slots.acquire()
                await self._in_flight.acquire()
                wanted += 1
            self._wake.clear()
            try:
                jobs = await self._claim(kinds, wanted)
                backoff = 0.1
            except psycopg.Error as e:
                log.warning("claiming jobs failed; retrying in %.1f s: %s", backoff, e)
                await self._claimer.reset()
                self._give_back(wanted)
                await self._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for job in jobs:
                self._start(job)
            self._give_back(wanted - len(jobs))
            if len(jobs) < wanted:
                await self._idle()

    def _give_back(self, permits: int) -> None:
        for _ in range(permits):
            self._slots.release()
            self._in_flight.release()

    async def _claim(self, kinds: List[str], wanted: int) -> List[Dict[str, Any]]:
        conn = await self._claimer.get()
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "select * from jobcast.claim_jobs(%s::text[], %s::text[], %s, %s, %s)",
                (self.queues, kinds, self.worker_id, wanted, self.lease_secs))
            return await cur.fetchall()

    async def _idle(self) -> None:
        """Sleeps until a wake-up, the next delayed job, or one poll interval."""
        wait = POLL_EVERY
        try:
            conn = await self._claimer.get()
            async with conn.cursor() as cur:
                # By the database's clock, through the claim index (see docs/protocol.md);
                # a floor so that a due job another worker holds does not make this one spin.
                await cur.execute(
                    "select jobcast.next_due_in(%s::text[], %s::text[])",
                    (self.queues, self.kinds))
                row = await cur.fetchone()
                if row and row[0] is not None:
                    wait = max(IDLE_FLOOR, min(row[0], POLL_EVERY))
        except psycopg.Error:
            await self._claimer.reset()
        try:
            await asyncio.wait_for(self._wake.wait(), wait)
        except asyncio.TimeoutError:
            pass

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # -- running one attempt ------------------------------------------------------------

    def _start(self, job: Dict[str, Any]) -> None:
        attempt = _Attempt(job)
        self._running[attempt.job_id] = attempt
        task = asyncio.ensure_future(self._run_attempt(attempt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_attempt(self, attempt: _Attempt) -> None:
        try:
            try:
                outcome = await self._execute(attempt)
            finally:
                self._slots.release()
            await self._finish(attempt, outcome)
        except Exception:  # noqa: BLE001 — a worker bug must not leak the permits
            log.exception("job %s: recording the outcome failed", attempt.job_id)
        finally:
            self._running.pop(attempt.job_id, None)
            self._in_flight.release()

    async def _execute(self, attempt: _Attempt) -> Tuple[str, Any]:
        """Runs the handler: ("ok", result) or ("error", exception), or why it stopped."""
        assert self._loop is not None
        job = attempt.job
        handler = self._handlers.get(job["kind"])
        if handler is None:
            return "error", Fatal(f"no handler for kind {job['kind']}")

        async def record(element: Dict[str, Any]) -> None:
            if attempt.must_stop:
                raise Cancelled("the job was cancelled or this attempt lost its lease")
            if attempt.output is not None:
                # Text appended before this event goes before it: a job's events are in the
                # order its handler made them.
                attempt.output.flush()
            if not await self._writer.submit(EventOp(attempt.job_id, attempt.attempt, element)):
                attempt.cancelled = True
                raise Cancelled("the write was refused: the job was cancelled or this "
                                "attempt lost its lease")

        def refused() -> None:  # an output write was fenced out: stop, as for events
            attempt.cancelled = True
            attempt.interrupt()

        def failed(error: Fatal) -> None:  # past max_output_bytes, or refused by PostgreSQL
            if attempt.failure is None:
                attempt.failure = error
            attempt.interrupt()

        attempt.output = AttemptOutput(
            self._loop, attempt.job_id, attempt.attempt, flush_ms=self.output_flush_ms,
            max_bytes=self.max_output_bytes, enqueue=self._writer.enqueue,
            must_stop=lambda: attempt.must_stop, refused=refused, failed=failed)
        base = (job, self.worker_id, lambda: attempt.must_stop, record, attempt.output)
        if inspect.iscoroutinefunction(handler):
            attempt.task = asyncio.ensure_future(handler(AsyncContext(*base), job["args"]))
        else:
            context = Context(self._loop, *base)
            attempt.task = self._loop.run_in_executor(
                self._executor, functools.partial(handler, context, job["args"]))
        timer = None
        if job.get("timeout_secs"):
            timer = self._loop.call_later(job["timeout_secs"], self._time_out, attempt)
        try:
            result = await attempt.task
        except asyncio.CancelledError:
            return self._stop_reason(attempt, None)
        except Exception as e:  # noqa: BLE001 — any exception is the handler's failure
            return self._stop_reason(attempt, ("error", e))
        finally:
            if timer is not None:
                timer.cancel()
        return self._stop_reason(attempt, ("ok", result))

    @staticmethod
    def _stop_reason(attempt: _Attempt, outcome: Optional[Tuple[str, Any]]) -> Tuple[str, Any]:
        if attempt.stopped:
            return "stopped", None
        if attempt.timed_out:
            return "timeout", attempt.job["timeout_secs"]
        if attempt.cancelled:
            return "cancelled", None
        if attempt.failure is not None:
            return "error", attempt.failure
        if outcome is None:
            return "error", Fatal("the handler gave up (it was cancelled by itself)")
        return outcome

    def _time_out(self, attempt: _Attempt) -> None:
        attempt.timed_out = True
        attempt.interrupt()

    async def _finish(self, attempt: _Attempt, outcome: Tuple[str, Any]) -> None:
        what, value = outcome
        job_id, number = attempt.job_id, attempt.attempt

        def failure(error: Dict[str, Any], retryable: bool,
                    delay_ms: Optional[int] = None) -> FailOp:
            if delay_ms is None:
                delay_ms = retry_delay_ms(self.retry_base_ms, number)
            return FailOp(job_id, number, error, retryable, delay_ms)

        if attempt.output is not None:
            # The text appended before the handler ended is queued before the outcome, so it
            # is committed with it or before it (the writer keeps the order of its queue).
            attempt.output.close(flush=what != "cancelled")
        if what == "cancelled":
            return  # cancelled in the database or the lease was lost: nothing to record
        if what == "ok":
            try:
                json.dumps(value)
                op: Any = CompleteOp(job_id, number, value)
            except (TypeError, ValueError) as e:
                op = failure({"message": f"result is not JSON: {e}", "fatal": True}, False)
        elif what == "timeout":
            op = failure({"message": f"timed out after {value} s", "timeout": True}, True)
        elif what == "stopped":
            op = ReleaseOp(job_id, number)
        elif isinstance(value, OutputLimitExceeded):
            op = failure({"message": value.message, "fatal": True,
                          "max_output_bytes": value.max_output_bytes}, False)
        elif isinstance(value, Fatal):
            op = failure({"message": value.message, "fatal": True}, False)
        elif isinstance(value, Retry):
            delay = None if value.delay is None else int(value.delay * 1000)
            op = failure({"message": value.message}, True, delay)
        elif isinstance(value, Cancelled):
            return  # the handler let a refused write's Cancelled propagate
        else:
            log.warning("job %s attempt %d failed: %r", job_id, number, value,
                        exc_info=(type(value), value, value.__traceback__))
            op = failure(exception_error(value), True)
        try:
            recorded = await self._writer.submit(op)
        except WriteFailed as e:
            op = self._refused_outcome(op, e, failure)
            if op is None:
                return
            try:
                recorded = await self._writer.submit(op)
            except WriteFailed as again:
                log.error("job %s attempt %d: cannot record its failure: %s", job_id, number,
                          again.reason)
                return
        if recorded and isinstance(op, FailOp) and op.retryable and self._loop is not None:
            # The retry is due in delay_ms: claim it then rather than at the next poll.
            self._loop.call_later(op.delay_ms / 1000.0, self._wake.set)
        if not recorded:
            log.info("job %s attempt %d: outcome refused (cancelled or lease taken)",
                     job_id, number)

    @staticmethod
    def _refused_outcome(op: Any, error: WriteFailed,
                         failure: Callable[..., FailOp]) -> Optional[FailOp]:
        """PostgreSQL refused an outcome itself (say, a NUL character in the result): the
        attempt fails with the reason instead (a refused result: without retry)."""
        if isinstance(op, ReleaseOp):
            log.warning("job %s: hand-back refused: %s", op.job_id, error.reason)
            return None
        retryable = isinstance(op, FailOp) and op.retryable
        what = "result" if isinstance(op, CompleteOp) else "error"
        details: Dict[str, Any] = {
            "message": f"PostgreSQL refused the attempt's {what}: {error.reason}"}
        if not retryable:
            details["fatal"] = True
        return failure(details, retryable)

    # -- what the background duties report --------------------------------------------

    def _held(self) -> List[Tuple[int, int]]:
        return [(a.job_id, a.attempt) for a in list(self._running.values())]

    def _cancel(self, job_id: int) -> None:
        attempt = self._running.get(job_id)
        if attempt is not None:
            log.info("job %s: cancel requested", job_id)
            attempt.cancelled = True
            attempt.interrupt()

    def _lost(self, job_id: int, number: int) -> None:
        attempt = self._running.get(job_id)
        if attempt is not None and attempt.attempt == number:
            log.info("job %s attempt %d: lease lost; stopping its handler", job_id, number)
            attempt.cancelled = True
            attempt.interrupt()
