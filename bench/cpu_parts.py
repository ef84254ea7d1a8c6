"""Where a stored delivery's CPU goes, apart from `make bench`: run with `python -m bench.cpu_parts`.

Interleaved on its own Azurite (loopback, in memory), each kind ``--samples`` times: the receiver's
planning alone (`prepare`: validation, the link's secret pattern, the plan), the secret pattern alone
(`link_secret_pattern`), each of the five storage requests of a stored delivery alone with the bare
SDK (a client built as the receiver builds its own: the task record read, a 404; the create-only copy;
the record's create with its labels; Get Blob Properties of the file; the manifest), the real function, and the bare synchronous copy
on a default-built client (`make bench`'s baseline). Prints mean CPU per call in ms, and each as a
ratio of the baseline. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.run import SMALL_FILE, Sources, bare_copy, payload, planner, receiver_env, send
from devtools.azurite import Azurite, start_azurite


async def measure(azurite: Azurite, sources: Sources, samples: int) -> dict[str, float]:
    import contextlib
    import json
    import os
    import uuid

    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import ContentSettings
    from azure.storage.blob.aio import BlobServiceClient as AioService

    from receiver.runtime import RUNTIME
    from receiver.source import link_secret_pattern

    os.environ.update(receiver_env(azurite, "parts-receiver"))
    await RUNTIME.reset()
    planned = planner()
    bare_service = AioService.from_connection_string(azurite.customer)
    bare = bare_service.get_container_client("parts-bare")
    await bare.create_container()
    lean_service = AioService.from_connection_string(azurite.customer, use_env_settings=False)
    lean = lean_service.get_container_client("parts-bare")
    cpu: dict[str, list[float]] = {}

    def timed(kind: str, started: float) -> None:
        cpu.setdefault(kind, []).append(time.process_time() - started)

    async def one_round(warm: bool) -> None:
        body = payload(sources.publish(SMALL_FILE), 1)
        t = time.process_time()
        response = await send(body)
        assert response.status_code == 200
        timed("the real function (stored)", t)
        body = payload(sources.publish(SMALL_FILE), 1)
        plan = planned(body)
        t = time.process_time()
        await bare_copy(bare, plan, body["exportedFileUrl"])
        timed("bare synchronous copy, default-built client (baseline)", t)
        fresh = payload(sources.publish(SMALL_FILE), 1)  # a link not seen before: re's cache cannot help
        t = time.process_time()
        link_secret_pattern(fresh["exportedFileUrl"])
        timed("link_secret_pattern alone (a new link)", t)
        body = payload(sources.publish(SMALL_FILE), 1)
        t = time.process_time()
        plan = planned(body)
        timed("prepare (validation, secret pattern, plan)", t)
        blob = lean.get_blob_client(plan.blob_name)
        record = lean.get_blob_client(f".smartdocumentor/tasks/{uuid.uuid4()}.json")
        document = json.dumps(plan.manifest, default=str).encode()
        json_type = ContentSettings(content_type="application/json")
        t = time.process_time()
        with contextlib.suppress(ResourceNotFoundError):
            await (await record.download_blob(offset=0, length=16 * 1024 * 1024)).readall()
        timed("Get Blob of the task record (404), lean client", t)
        t = time.process_time()
        await blob.start_copy_from_url(
            body["exportedFileUrl"],
            requires_sync=True,
            tags=plan.tags,
            metadata=plan.metadata,
            match_condition=MatchConditions.IfMissing,
        )
        timed("copy If-None-Match: *, lean client", t)
        t = time.process_time()
        await record.upload_blob(
            document, content_settings=json_type, metadata={"receiverkind": "task-record", "copying": "0"}
        )
        timed("Put Blob of the task record, lean client", t)
        t = time.process_time()
        await blob.get_blob_properties()
        timed("Get Blob Properties of the file, lean client", t)
        t = time.process_time()
        await lean.get_blob_client(plan.blob_name + ".json").upload_blob(
            document, content_settings=json_type, metadata={"receiverkind": "manifest"}
        )
        timed("Put Blob of the manifest, lean client", t)
        if warm:
            cpu.clear()

    for _ in range(10):
        await one_round(warm=True)
    for _ in range(samples):
        await one_round(warm=False)
    await bare_service.close()
    await lean_service.close()
    await RUNTIME.close()
    return {kind: statistics.mean(values) * 1000 for kind, values in cpu.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    with start_azurite() as azurite:
        result: dict[str, Any] = asyncio.run(measure(azurite, Sources(azurite), args.samples))
    base = result["bare synchronous copy, default-built client (baseline)"]
    for kind, ms in result.items():
        print(f"{kind:60s} {ms:6.3f} ms  {ms / base:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
