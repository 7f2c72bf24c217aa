"""The exceptions of the package: one hierarchy under :class:`JobcastError`."""

from __future__ import annotations

from typing import Any, Dict, Optional


class JobcastError(Exception):
    """Base class of every error this package raises."""


class APIError(JobcastError):
    """The server answered with an error: carries the RFC 9457 problem document."""

    def __init__(self, status_code: int, problem: Dict[str, Any]) -> None:
        self.status_code = status_code
        self.problem = problem
        self.title: str = str(problem.get("title", ""))
        self.detail: str = str(problem.get("detail", ""))
        self.type: str = str(problem.get("type", "about:blank"))
        super().__init__(f"{status_code} {self.title}: {self.detail}".strip())


class TransportError(JobcastError):
    """The server could not be reached, or the connection broke."""


class Cancelled(JobcastError):
    """Raised inside a handler when its job was cancelled or its attempt lost its lease.

    Nothing the attempt does from then on is recorded; let it propagate.
    """


class Retry(JobcastError):
    """Raise from a handler to fail this attempt and retry it (while attempts remain).

    ``delay`` (seconds) replaces the worker's exponential backoff for this retry.
    """

    def __init__(self, message: str = "retry requested", *, delay: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        self.delay = delay


class Fatal(JobcastError):
    """Raise from a handler to fail the job now, without retrying."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OutputLimitExceeded(Fatal):
    """Raised by ``ctx.append`` when the text would take the attempt's output past the
    worker's ``max_output_bytes``: the attempt fails without retry (the text appended
    before stays), whether or not the handler lets this propagate."""

    def __init__(self, message: str, max_output_bytes: int) -> None:
        super().__init__(message)
        self.max_output_bytes = max_output_bytes


class WriteFailed(JobcastError):
    """PostgreSQL refused a write itself (not fencing): e.g. a NUL character in JSON text.

    Raised by ``ctx.progress``/``ctx.emit``; ``reason`` is PostgreSQL's message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"PostgreSQL refused the write: {reason}")
        self.reason = reason
