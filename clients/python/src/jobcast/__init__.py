"""jobcast for Python: producers over the HTTP API (:class:`Client`, :class:`AsyncClient`),
workers over the SQL protocol (:class:`Worker`), and :func:`enqueue` inside your own
PostgreSQL transaction. See docs/protocol.md for the protocol underneath."""

from ._models import (
    TERMINAL_EVENTS,
    Event,
    Job,
    JobPage,
    Schedule,
    StreamToken,
    job_spec,
)
from .client import AsyncClient, Client
from .context import AsyncContext, Context
from .enqueue import enqueue, enqueue_async
from .errors import (
    APIError,
    Cancelled,
    Fatal,
    JobcastError,
    OutputLimitExceeded,
    Retry,
    TransportError,
    WriteFailed,
)
from .worker import Worker, retry_delay_ms

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncContext",
    "Cancelled",
    "Client",
    "Context",
    "Event",
    "Fatal",
    "Job",
    "JobPage",
    "JobcastError",
    "OutputLimitExceeded",
    "Retry",
    "Schedule",
    "StreamToken",
    "TERMINAL_EVENTS",
    "TransportError",
    "Worker",
    "WriteFailed",
    "enqueue",
    "enqueue_async",
    "job_spec",
    "retry_delay_ms",
]
__version__ = "0.1.0"
