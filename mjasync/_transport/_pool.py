"""I/O layer: the client's aiohttp session, created lazily inside the running loop and shared by derived clients."""

from __future__ import annotations

from typing import Final, TypeAlias

import aiohttp

from .._config import Limits

__all__ = ["USER_AGENT", "HTTPSession", "SessionPool"]

#: A session the caller may hand the client (`Client(http_session=...)`): the transport's own kind.
HTTPSession: TypeAlias = aiohttp.ClientSession
USER_AGENT: Final = "mjasync/0.1 (+aiohttp)"


class SessionPool:
    """One `aiohttp.ClientSession` with a keep-alive `TCPConnector`, made on first use.

    aiohttp binds a session to the loop it is created in, so it cannot be built in `Client.__init__`.
    An injected session is used as it is and never closed here: its owner closes it.
    """

    def __init__(
        self, *, limits: Limits, user_agent: str = USER_AGENT, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._limits = limits
        self._user_agent = user_agent
        self._session = session
        self._owns_session = session is None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether `aclose()` has run."""
        return self._closed

    def session(self) -> aiohttp.ClientSession:
        """The session, made now if this is the first use (must run inside the event loop)."""
        if self._closed:
            raise RuntimeError("this mjasync client is closed; create a new Client")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections,
                limit_per_host=self._limits.max_connections_per_host,
                keepalive_timeout=self._limits.keepalive_expiry,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"user-agent": self._user_agent},
                # Redirects are refused, not followed: following one could carry credentials elsewhere.
                raise_for_status=False,
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session if this pool made it; idempotent."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()
