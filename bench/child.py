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


def _vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _staged(args: dict[str, Any]) -> dict[str, Any]:
    """A large re-export staged in blocks, over an earlier export at the same name, in this process.

    ``args["payloads"]``: the earlier export (stored first, which warms the process), then the large
    one. Prints ``ready`` between the two (the parent then starts reading the earlier export), and
    samples this process's RSS every 10 ms while the large one is delivered; a 202 is finished by the
    queue function's own code (``verify_copy`` with the webhook's message), as the host would."""
    import asyncio
    import threading
    from datetime import UTC, datetime

    os.environ.update(args["env"])
    import azure.functions as func

    from function_app import app
    from receiver.runtime import RUNTIME
    from receiver.verification import CopyStillRunning, verify_copy

    function = next(f for f in app.get_functions() if f.get_function_name() == "anonymization_webhook")
    user_function = function.get_user_function()

    class Out(func.Out[str]):
        value = ""

        def set(self, val: str) -> None:
            self.value = val

        def get(self) -> str:
            return self.value

    async def deliver(body: dict[str, Any]) -> tuple[int, dict[str, Any], list[str]]:
        out = Out()
        request = func.HttpRequest(
            method="POST",
            url="http://127.0.0.1/api/smartdocumentor/anonymization",
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
        )
        response = await user_function(request, out)
        answer: dict[str, Any] = json.loads(response.get_body())
        verified: list[str] = []
        tries = 0
        while response.status_code == 202 and out.value and tries < 120:
            tries += 1
            try:
                verified.append(
                    await verify_copy(out.value.encode(), runtime=RUNTIME, now=datetime.now(UTC), dequeue_count=tries)
                )
                break
            except CopyStillRunning:
                await asyncio.sleep(0.5)
        return response.status_code, answer, verified

    earlier = await deliver(args["payloads"][0])
    rss_before = _vm_rss_kib()
    io_before = SocketBytes.total
    print("ready " + json.dumps({"status": earlier[0], "answer": earlier[1], "verified": earlier[2]}), flush=True)
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _vm_rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    status, answer, verified = await deliver(args["payloads"][1])
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    await RUNTIME.close()
    return {
        "earlier": {"status": earlier[0], "answer": earlier[1]["status"]},
        "status": status,
        "answer": answer["status"],
        "verified": verified,
        "delivery_seconds": seconds,
        "rss_before_kib": rss_before,
        "rss_peak_kib": max(peak[0], _vm_rss_kib()),
        "io_bytes_delivery": SocketBytes.total - io_before,
    }


def _preimport(mode: str) -> None:
    """Load the mode's modules before measuring, so file reads of imports are not counted as bytes moved."""
    import azure.storage.blob.aio  # noqa: F401

    if mode in ("receiver", "staged"):
        import function_app  # noqa: F401


MODES = {"receiver": _receiver, "bare-copy": _bare_copy, "download-upload": _download_upload, "staged": _staged}


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
