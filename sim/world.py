"""A whole receiver in memory: the real webhook, queue function and reconciliation code on
:class:`MemoryStorage`, SmartDocumentor's exports in :class:`MemorySources`, one manual clock.

The fast tests and the simulator drive the product through here, so what they check is the code
that runs in Azure, minus the SDK (which the Azurite suites cover).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import SecretStr

from receiver.models import TaskRecord, record_name
from receiver.outcome import Outcome
from receiver.runtime import Runtime
from receiver.settings import Settings
from receiver.storage import Headers
from receiver.webhook import handle_delivery

from .memstore import FaultPlan, ManualClock, MemorySources, MemoryStorage

SOURCE_HOST = "exports.blob.core.windows.net"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
JSON = {"content-type": "application/json"}


@dataclass
class Export:
    """One export SmartDocumentor made: its notification body (with the SAS link) and its bytes."""

    task_id: str
    workspace_id: str
    display_name: str
    url: str
    data: bytes
    body: bytes
    content_type: str = "application/pdf"

    @property
    def payload(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


@dataclass
class World:
    """One customer's container and one sender, in memory."""

    settings: Settings
    clock: ManualClock = field(default_factory=ManualClock)
    faults: FaultPlan = field(default_factory=FaultPlan)
    tags_supported: bool = True
    sync_limit_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        self.sources = MemorySources(f"https://{SOURCE_HOST}", now=self.clock)
        self.storage = MemoryStorage(
            self.settings.destination_container,
            sources=self.sources,
            now=self.clock,
            faults=self.faults,
            tags_supported=self.tags_supported,
            sync_limit_bytes=self.sync_limit_bytes,
        )
        self.runtime = Runtime()
        self.runtime.use(self.storage, self.settings)
        self.runtime.clock = self.clock
        self.exports = 0

    @classmethod
    def make(cls, **settings: Any) -> World:
        options = {
            "destination_connection_string": SecretStr("UseDevelopmentStorage=true"),
            "allowed_source_hosts": (SOURCE_HOST,),
            **settings,
        }
        return cls(Settings(**options))

    @property
    def now(self) -> datetime:
        return self.clock()

    def export(
        self,
        task_id: str = "task-1",
        display_name: str = "invoice.pdf",
        *,
        workspace_id: str = "ws-1",
        data: bytes | None = None,
        expires_in: timedelta = timedelta(hours=24),
        content_type: str = "application/pdf",
        **extra: Any,
    ) -> Export:
        """A new export of a task: its file in the sender's storage behind a fresh SAS, and its body."""
        self.exports += 1
        data = data if data is not None else PDF + f"export {self.exports}".encode()
        name = f"{workspace_id}/{task_id}/export-{self.exports}.pdf"
        url = self.sources.publish(name, data, Headers(content_type=content_type), expires_in=expires_in)
        expires = (self.now + expires_in).isoformat()
        body = {
            "taskId": task_id,
            "taskNumber": 7,
            "workspaceId": workspace_id,
            "displayName": display_name,
            "exportedFileUrl": url,
            "exportedFileContentType": content_type,
            "exportedFileExpiresOn": expires,
            **extra,
        }
        return Export(task_id, workspace_id, display_name, url, data, json.dumps(body).encode(), content_type)

    async def post(self, export: Export | bytes) -> Outcome:
        body = export.body if isinstance(export, Export) else export
        return await handle_delivery(body, JSON, runtime=self.runtime, now=self.now)

    def record(self, task_id: str = "task-1", workspace_id: str = "ws-1") -> TaskRecord | None:
        data = self.storage.blob_bytes(record_name(workspace_id, task_id))
        return None if data is None else TaskRecord.from_bytes(data)

    def files(self) -> dict[str, bytes]:
        """Every file the receiver stored (not records, not manifests), by name."""
        found = {}
        for name in self.storage.names():
            stored = self.storage.stored(name)
            if stored is None or name.startswith(".smartdocumentor/"):
                continue
            if dict(stored.metadata).get("receiverkind") == "manifest":
                continue
            found[name] = stored.data
        return found

    def manifest(self, blob: str) -> dict[str, Any] | None:
        data = self.storage.blob_bytes(f"{blob}.json")
        return None if data is None else dict(json.loads(data))
