"""MCP sessions kept per conversation.

A chat request that names its conversation (`X-Conversation-Id`, or `metadata.conversation_id` in
the body) keeps one MCP session per MCP server for the calls of that conversation, so a server that
keeps state across calls gets it. A session belongs to one tenant, agent, caller, server (URL and
credential) and conversation: nothing is shared across tenants or callers. Sessions are
bounded in count (the least recently used idle one is ended first) and in idle time, and ended
with an HTTP DELETE, as the MCP streamable-HTTP transport says, when evicted and at shutdown. A
session the server has forgotten (404) is started again once, transparently. Requests without a
conversation id, and Tools with `stateless: true`, get a session per call, ended after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from agentplane_platform.mcp import McpSession, McpSessionExpired

log = logging.getLogger("agentplane.runtime.mcp")


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Whose session: one per tenant, agent, caller, MCP server and conversation."""

    tenant: str
    agent: str
    caller: str
    url: str
    credential: str
    """A digest of the credential sent (never its value): another credential, another session."""
    conversation: str


@dataclass(eq=False)
class _Entry:
    session: McpSession
    last_used: float
    ready: bool = False
    busy: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class McpSessions:
    """The runtime's MCP sessions: per call without a key, kept per `SessionKey` with one."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        max_sessions: int,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._entries: OrderedDict[SessionKey, _Entry] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    async def call(
        self,
        key: SessionKey | None,
        url: str,
        headers: Mapping[str, str],
        method: str,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        """The result of one request on the session of `key` (started when there is none), or on a
        session of its own when `key` is None. Raises `McpError`."""
        if key is None or self._closed:
            session = McpSession(self.http, url, headers)
            try:
                await session.initialize()
                return await session.request(method, params)
            finally:
                await session.close()
        entry = self._entry(key, url, headers)
        entry.busy += 1
        try:
            for attempt in (1, 2):
                session = await self._ready(entry)
                try:
                    return await session.request(method, params)
                except McpSessionExpired:
                    if attempt == 2:
                        raise
                    # the server forgot the session (restarted, or ended it): a new one, once
                    if entry.session is session:
                        entry.session = McpSession(self.http, url, headers)
                        entry.ready = False
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            entry.busy -= 1
            entry.last_used = self.clock()

    def _entry(self, key: SessionKey, url: str, headers: Mapping[str, str]) -> _Entry:
        self._evict_idle()
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        entry = _Entry(McpSession(self.http, url, headers), self.clock())
        self._entries[key] = entry
        if len(self._entries) > self.max_sessions:
            # the least recently used idle session makes room; with every one busy, the bound is
            # exceeded until calls end (they are bounded by the requests in flight)
            victim = next((k for k, e in self._entries.items() if not e.busy and k != key), None)
            if victim is not None:
                self._end(victim)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="agentplane-mcp-sessions")
        return entry

    async def _ready(self, entry: _Entry) -> McpSession:
        async with entry.lock:
            session = entry.session
            if entry.ready:
                return session
            try:
                await session.initialize()
            except BaseException:
                # failed, or abandoned at the tool's timeout: whatever the server started is ended,
                # and the next call starts over
                self._close_later(session)
                entry.session = McpSession(self.http, session.url, session.auth_headers)
                raise
            entry.ready = True
            return session

    def _end(self, key: SessionKey) -> None:
        entry = self._entries.pop(key)
        self._close_later(entry.session)

    def _close_later(self, session: McpSession) -> None:
        if not session.session_id:
            return
        task = asyncio.create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _evict_idle(self) -> None:
        deadline = self.clock() - self.idle_seconds
        for key in [k for k, e in self._entries.items() if not e.busy and e.last_used <= deadline]:
            log.debug("ending idle MCP session of %s/%s at %s", key.tenant, key.agent, key.url)
            self._end(key)

    async def _reap(self) -> None:
        """End idle sessions as they pass `idle_seconds`, while there are any."""
        interval = max(0.05, min(self.idle_seconds / 4, 30.0))
        while self._entries:
            await asyncio.sleep(interval)
            self._evict_idle()

    async def aclose(self) -> None:
        """End every session (at shutdown); later calls get a session each."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        sessions = [entry.session for entry in self._entries.values()]
        self._entries.clear()
        await asyncio.gather(*(s.close() for s in sessions), *self._closing, return_exceptions=True)


__all__ = ["McpSessions", "SessionKey"]
