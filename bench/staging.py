"""The staging proxy stand-in (devtools/staging_proxy.py) as the bench runs it: Put Block From URL and
Put Blob From URL performed in front of Azurite, with what the bench needs to see.

Its reads of a source carry their own User-Agent (:data:`bench.counter.STAGING_AGENT`), so a counting
proxy they pass through leaves them out: Azure reads a block's source inside the service. It counts
the Put Block From URL requests it is answering at once (:attr:`most_at_once`), and the bytes it
carried. The bytes of a block pass through this process (the stand-in's, not the receiver's).
"""

from __future__ import annotations

from aiohttp import ClientSession, ClientTimeout, web

from bench.counter import STAGING_AGENT
from devtools.staging_proxy import StagingEmulator, StagingProxy


class CountingEmulator(StagingEmulator):
    def __init__(self, upstream_port: int, session: ClientSession) -> None:
        super().__init__(upstream_port, session)
        self.in_flight = 0
        self.most_at_once = 0
        self.blocks = 0

    async def answer(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.blocks += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            return await super().answer(request)
        finally:
            self.in_flight -= 1


class BenchStagingProxy(StagingProxy):
    """:class:`StagingProxy` with a :class:`CountingEmulator` and a session of its own User-Agent."""

    counting: CountingEmulator

    async def start(self) -> BenchStagingProxy:
        await super().start()
        assert self._session is not None
        await self._session.close()
        self._session = ClientSession(
            timeout=ClientTimeout(total=600), auto_decompress=False, headers={"User-Agent": STAGING_AGENT}
        )
        self.counting = CountingEmulator(self.upstream_port, self._session)
        self.emulator = self.counting
        return self
