"""Process-wide state: settings read once, one storage client per process and event loop."""

from __future__ import annotations

import asyncio
import contextlib

from .settings import Settings, load_settings
from .store import BlobStore


class Runtime:
    """Holds what every invocation shares. ``reset`` exists for tests and settings reloads."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._store: BlobStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def settings(self) -> Settings:
        """The validated settings; raises SettingsError (not cached, so a fixed setting is picked up)."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def store(self) -> BlobStore:
        """The storage client, created lazily on the running loop (the aio transport is bound to it)."""
        loop = asyncio.get_running_loop()
        if self._store is None or self._loop is not loop:
            self._store = BlobStore.open(self.settings())
            self._loop = loop
        return self._store

    async def close(self) -> None:
        store, self._store, self._loop = self._store, None, None
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()

    async def reset(self) -> None:
        await self.close()
        self._settings = None


RUNTIME = Runtime()
