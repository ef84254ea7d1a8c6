"""Process-wide state: settings read once, one storage client per process and event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from .settings import Settings, load_settings
from .storage import Storage


class Runtime:
    """Holds what every invocation shares. ``reset`` exists for tests and settings reloads; ``use``
    hands it a storage of the caller's (the in-memory store of the simulator and the fast tests)."""

    def __init__(self) -> None:
        # The time of each step of a delivery (its history); the simulator and the fast tests set their own.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._settings: Settings | None = None
        self._store: Storage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._given = False

    def settings(self) -> Settings:
        """The validated settings; raises SettingsError (not cached, so a fixed setting is picked up)."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def store(self) -> Storage:
        """The storage client, created lazily on the running loop (the aio transport is bound to it)."""
        if self._given and self._store is not None:
            return self._store
        loop = asyncio.get_running_loop()
        if self._store is None or self._loop is not loop:
            from .store import AzureStorage  # the Azure SDK loads only where it is used

            self._store = AzureStorage.open(self.settings())
            self._loop = loop
        return self._store

    def use(self, storage: Storage, settings: Settings | None = None) -> None:
        self._store, self._given, self._loop = storage, True, None
        if settings is not None:
            self._settings = settings

    async def close(self) -> None:
        store, self._store, self._loop, self._given = self._store, None, None, False
        close = getattr(store, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    async def reset(self) -> None:
        await self.close()
        self._settings = None


RUNTIME = Runtime()
