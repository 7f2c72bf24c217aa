"""One lazily (re)connected autocommit connection per worker duty."""

from __future__ import annotations

from typing import Any, Optional

from psycopg import AsyncConnection

#: Seconds to wait for PostgreSQL to accept a connection.
CONNECT_TIMEOUT = 10


class Connector:
    """Hands out one connection, reconnecting after :meth:`reset`."""

    def __init__(self, url: str, application_name: str) -> None:
        self._url = url
        self._application_name = application_name
        self._conn: Optional[AsyncConnection[Any]] = None

    async def get(self) -> AsyncConnection[Any]:
        """The connection, connecting when there is none (or it broke)."""
        if self._conn is None or self._conn.closed or getattr(self._conn, "broken", False):
            self._conn = await AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                application_name=self._application_name)
        return self._conn

    async def reset(self) -> None:
        """Drops the connection (after an error that may have broken it)."""
        await self.close()

    async def close(self) -> None:
        """Closes the connection, if any."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 — closing a broken connection may fail; it is gone either way
                pass
