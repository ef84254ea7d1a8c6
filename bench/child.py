"""One measured case in a fresh process (so peak RSS and import cost are its own).

    python -m bench.child MODE JSON_ARGS

Prints one JSON line: wall seconds, VmHWM (peak RSS) and the bytes the process sent and
received on its sockets during the measured part. Imports are lazy so the cold-path modes pay
only for what they use; ``preload_functions`` imports azure.functions before the clock starts,
as the Functions worker has it loaded before it imports function_app.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


class SocketBytes:
    """Counts every byte this process sends or receives on its sockets (asyncio transports).

    Both the SDK (aiohttp) and the receiver talk through asyncio's selector transports, so
    wrapping their write and receive paths counts exactly what passed through the process.
    """

    total = 0

    @classmethod
    def install(cls) -> None:
        import asyncio.selector_events as selector_events

        transport: Any = getattr(selector_events, "_SelectorSocketTransport")  # noqa: B009 - private, untyped
        write, writelines = transport.write, transport.writelines

        def counted_write(self: Any, data: Any) -> None:
            cls.total += len(data)
            write(self, data)

        def counted_writelines(self: Any, chunks: Any) -> None:
            chunks = list(chunks)
            cls.total += sum(len(chunk) for chunk in chunks)
            writelines(self, chunks)

        transport.write = counted_write
        transport.writelines = counted_writelines

        from aiohttp.client_proto import ResponseHandler

        received = ResponseHandler.data_received

        def counted_received(self: Any, data: bytes) -> None:
            cls.total += len(data)
            received(self, data)

        ResponseHandler.data_received = counted_received  # type: ignore[method-assign]


def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


async def _receiver(args: dict[str, Any]) -> dict[str, Any]:
    os.environ.update(args["env"])
    import azure.functions as func

    from function_app import app

    function = next(f for f in app.get_functions() if f.get_function_name() == "anonymization_webhook")
    user_function = function.get_user_function()

    class Out(func.Out[str]):
        def set(self, val: str) -> None: ...

        def get(self) -> str:
            return ""

    request = func.HttpRequest(
        method="POST",
        url="http://127.0.0.1/api/smartdocumentor/anonymization",
        headers={"Content-Type": "application/json"},
        body=json.dumps(args["payload"]).encode(),
    )
    response = await user_function(request, Out())
    from receiver.runtime import RUNTIME

    await RUNTIME.close()
    return {"status": response.status_code, "body": json.loads(response.get_body())}


async def _bare_copy(args: dict[str, Any]) -> dict[str, Any]:
    """The baseline: one synchronous Copy Blob From URL, as a user would write it."""
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(args["destination"]) as service:
        blob = service.get_blob_client(args["container"], args["blob"])
        result = await blob.start_copy_from_url(
            args["source"], requires_sync=True, tags=args["tags"], metadata=args["metadata"]
        )
    return {"status": result["copy_status"]}


async def _download_upload(args: dict[str, Any]) -> dict[str, Any]:
    """The careful hand-written alternative: stream the file through the function in 4 MiB chunks."""
    import base64
    import uuid

    from azure.storage.blob import BlobBlock, ContentSettings
    from azure.storage.blob.aio import BlobClient, BlobServiceClient

    async with (
        BlobClient.from_blob_url(args["source"], max_chunk_get_size=4 * 1024 * 1024) as source,
        BlobServiceClient.from_connection_string(args["destination"], max_block_size=4 * 1024 * 1024) as service,
    ):
        downloader = await source.download_blob(max_concurrency=1)
        target = service.get_blob_client(args["container"], args["blob"])
        blocks = []
        async for chunk in downloader.chunks():  # one 4 MiB chunk in memory at a time
            block_id = base64.b64encode(uuid.uuid4().bytes).decode()
            await target.stage_block(block_id, chunk)
            blocks.append(BlobBlock(block_id))
        await target.commit_block_list(
            blocks,
            tags=args["tags"],
            metadata=args["metadata"],
            content_settings=ContentSettings(content_type="application/pdf"),
        )
    return {"status": "uploaded"}


def _preimport(mode: str) -> None:
    """Load the mode's modules before measuring, so file reads of imports are not counted as bytes moved."""
    import azure.storage.blob.aio  # noqa: F401

    if mode == "receiver":
        import function_app  # noqa: F401


MODES = {"receiver": _receiver, "bare-copy": _bare_copy, "download-upload": _download_upload}


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    args = json.loads(raw)
    if args.get("preload_functions"):
        import azure.functions  # noqa: F401
    started = time.perf_counter()  # imports of the measured part follow
    import asyncio

    if args.get("warm"):
        _preimport(mode)
    SocketBytes.install()
    io_before = SocketBytes.total
    measured_from = time.perf_counter()
    outcome = asyncio.run(MODES[mode](args))
    finished = time.perf_counter()
    print(
        json.dumps(
            {
                "mode": mode,
                "outcome": outcome,
                "seconds": finished - measured_from,
                "seconds_since_start": finished - started,
                "vm_hwm_kib": _vm_hwm_kib(),
                "io_bytes": SocketBytes.total - io_before,
            }
        )
    )


if __name__ == "__main__":
    main()
