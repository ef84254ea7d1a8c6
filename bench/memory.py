"""Peak memory of the worker process with the app loaded: the input to the instance size (docs/cost.md).

The script plays the Functions host. It starts a private Azurite (loopback, in memory), the staging proxy
in front of it for the destination (Azurite answers 501 to Put Block From URL: devtools/staging_proxy.py
performs it, so a staged copy's bytes pass through the proxy, never through the worker), a stand-in
Application Insights endpoint on 127.0.0.1, and then **the worker: a child process of its own** that
loads function_app.py and runs invocations sent to it on stdin. Settings as a staged delivery needs them:
SYNC_COPY_MAX_MIB=0 and COPY_WAIT_SECONDS=0, so every delivery is staged, answered 202 with its queue
message, and finished by the queue function. Telemetry on, as in Azure (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY).

Phases, each sampled every 5 ms from /proc/<worker pid>/status (VmRSS; VmHWM reset between phases
through /proc/<pid>/clear_refs): the worker only, never Azurite, the proxy or this script.

  1. idle: the app indexed, one health check answered, 2 s doing nothing;
  2. 150 concurrent deliveries (the webhook, 202 each, queue output set), then their 150 queue
     functions at once, each staging its file (64 KiB) and committing it;
  3. one large staged copy (--large-mib, default 1024): the webhook's 202, then the queue function
     staging it in 100 MiB blocks, 4 at a time, through the proxy.

Two kinds of worker (say which when quoting a figure):

  * ``--protos DIR``: the real Python worker library (azure-functions-runtime, the worker for Python
    3.13+) driven with protobuf messages compiled from the published worker protobufs
    (azure-functions-language-worker-protobuf: FunctionRpc.proto and its imports in DIR), the way the
    host drives it: WorkerInitRequest (indexing, the Azure Monitor distro), FunctionsMetadataRequest,
    InvocationRequests. Needs --python pointing at a Python 3.13 with requirements.txt,
    azure-functions-runtime, grpcio-tools;
  * without it: the app's handlers called the way the worker calls them (function_app.app's indexed
    functions, an HttpRequest and an Out binding, every invocation a task on one event loop), on this
    interpreter; the distro configured as the worker does.

    .venv/bin/python -m bench.memory [--large-mib 1024] [--deliveries 150] [--python PY --protos DIR]

Loopback only; stops by itself (--timeout, default 900 s). Prints the figures and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
CONTAINER = "memory-bench"
SOURCE_CONTAINER = "exports"

# --- the worker (child process): only what the Functions worker itself would load ------------------------


def _compile_protos(protos: str) -> str:
    """Compile the worker protobufs in a short-lived process of their own: grpc_tools stays out of the worker."""
    out = tempfile.mkdtemp(prefix="memory-protos-")
    code = (
        "import os, sys, grpc_tools\n"
        "from grpc_tools import protoc\n"
        "std = os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')\n"
        "sys.exit(protoc.main(['protoc', '-I' + sys.argv[1], '-I' + std, '--python_out=' + sys.argv[2],\n"
        "    'FunctionRpc.proto', 'identity/ClaimsIdentityRpc.proto', 'shared/NullableTypes.proto']))\n"
    )
    subprocess.run([sys.executable, "-c", code, protos, out], check=True)
    return out


Invoke = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def _real_worker(protos: str) -> Invoke:
    """The azure-functions-runtime library worker, driven with the host's protobuf messages."""
    from types import SimpleNamespace

    sys.path.insert(0, _compile_protos(protos))
    pb: Any = importlib.import_module("FunctionRpc_pb2")
    importlib.import_module("grpc")  # the worker's own gRPC channel library is loaded in Azure too
    he: Any = importlib.import_module("azure_functions_runtime.handle_event")

    def msg(**kw: Any) -> Any:
        return SimpleNamespace(request=pb.StreamingMessage(**kw), properties={"host": "127.0.0.1", "protos": pb})

    proj = str(ROOT)
    init = await he.worker_init_request(msg(worker_init_request=pb.WorkerInitRequest(function_app_directory=proj)))
    if init.result.status != pb.StatusResult.Success:
        raise SystemExit(f"the worker could not index the app: {init.result.exception.message[:300]}")
    md = await he.functions_metadata_request(
        msg(functions_metadata_request=pb.FunctionsMetadataRequest(function_app_directory=proj))
    )
    fns: dict[str, tuple[Any, dict[str, Any]]] = {}
    for m in md.function_metadata_results:
        raw = [json.loads(b) for b in m.raw_bindings]
        trig = next(b for b in raw if b["direction"].upper() == "IN" and b["type"].endswith("Trigger"))
        fns[trig.get("route") or trig["type"]] = (m, trig)

    async def invoke(command: dict[str, Any]) -> dict[str, Any]:
        if command["kind"] == "http":
            m, trig = fns[command["route"]]
            req = pb.RpcHttp(
                method=command["method"],
                url=f"http://localhost:7071/api/{command['route']}",
                headers={"content-type": "application/json"},
                body=pb.TypedData(bytes=command["body"].encode()),
            )
            data = pb.TypedData(http=req)
            meta: dict[str, Any] = {}
        else:
            m, trig = fns["queueTrigger"]
            data = pb.TypedData(string=command["body"])
            meta = {"DequeueCount": pb.TypedData(json="1"), "Id": pb.TypedData(string=str(uuid.uuid4()))}
        inv = pb.InvocationRequest(
            invocation_id=str(uuid.uuid4()),
            function_id=m.function_id,
            trigger_metadata=meta,
            input_data=[pb.ParameterBinding(name=trig["name"], data=data)],
        )
        res = await he.invocation_request(msg(invocation_request=inv))
        if res.result.status != pb.StatusResult.Success:
            return {"ok": False, "error": res.result.exception.message[:300]}
        if command["kind"] != "http":
            return {"ok": True}
        h = res.return_value.http
        queued = [
            o.data.string or o.data.json or o.data.bytes.decode() for o in res.output_data if o.data.WhichOneof("data")
        ]
        return {"ok": True, "status": int(h.status_code or 200), "queued": queued[0] if queued else None}

    return invoke


async def _handlers() -> Invoke:
    """The app's handlers called the way the worker calls them: one event loop, one task an invocation."""
    configure: Any = importlib.import_module("azure.monitor.opentelemetry").configure_azure_monitor
    configure(logger_name="")  # the worker's initialize_azure_monitor (connection string from the environment)
    func: Any = importlib.import_module("azure.functions")
    app: Any = importlib.import_module("function_app").app
    fns = {f.get_function_name(): f.get_user_function() for f in app.get_functions()}

    class Out:
        def __init__(self) -> None:
            self.value: str | None = None

        def set(self, value: str) -> None:
            self.value = value

        def get(self) -> str | None:
            return self.value

    async def invoke(command: dict[str, Any]) -> dict[str, Any]:
        try:
            if command["kind"] == "queue":
                message = func.QueueMessage(id=str(uuid.uuid4()), body=command["body"].encode())
                await fns["verify_pending_copy"](message)
                return {"ok": True}
            req = func.HttpRequest(
                command["method"],
                f"http://localhost:7071/api/{command['route']}",
                headers={"content-type": "application/json"},
                body=command["body"].encode(),
            )
            if command["route"] == "health":
                res = await fns["health"](req)
                return {"ok": True, "status": res.status_code, "queued": None}
            out = Out()
            res = await fns["anonymization_webhook"](req, out)
            return {"ok": True, "status": res.status_code, "queued": out.get()}
        except Exception as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}

    return invoke


async def worker(protos: str | None) -> None:
    """The child: read one JSON command a line (a list of invocations, run all at once), answer one line."""
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    invoke = await (_real_worker(protos) if protos else _handlers())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * MIB)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # anything the app or the worker prints stays off the answer channel
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    while line := await reader.readline():
        calls = json.loads(line)
        results = await asyncio.gather(*(invoke(call) for call in calls))
        out.write(json.dumps(results) + "\n")
        out.flush()


# --- the host (this process) -----------------------------------------------------------------------------


class Sampler:
    """VmRSS of one process every 5 ms; its VmHWM reset at each phase (clear_refs 5) where the kernel allows."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, int]:
        values: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        return values

    def start_phase(self) -> None:
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")
        self.peak_kib = self.status()["VmRSS"]

    async def run(self) -> None:
        while True:
            with contextlib.suppress(OSError, KeyError):
                self.peak_kib = max(self.peak_kib, self.status()["VmRSS"])
            await asyncio.sleep(0.005)

    def end_phase(self) -> dict[str, float]:
        status = self.status()
        peak = max(self.peak_kib, status.get("VmHWM", 0))
        return {"peak_mib": round(peak / 1024, 1), "rss_mib": round(status["VmRSS"] / 1024, 1)}


class Ingestion:
    """A stand-in Application Insights endpoint on 127.0.0.1 (track and live metrics): answers 200, keeps nothing."""

    async def start(self) -> int:
        from aiohttp import web

        async def accept(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"itemsReceived": 0, "itemsAccepted": 0, "errors": []})

        app = web.Application(client_max_size=64 * MIB)
        app.router.add_route("*", "/{tail:.*}", accept)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


def _pdf(size: int) -> bytes:
    head, tail = b"%PDF-1.7\n", b"\n%%EOF\n"
    return head + os.urandom(max(0, size - len(head) - len(tail))) + tail


def _upload(blob: Any, size: int) -> None:
    """A large source, block by block (8 MiB blocks of the same random bytes): this process never holds it."""
    from azure.storage.blob import BlobBlock, ContentSettings

    chunk, offset = os.urandom(8 * MIB), 0
    ids: list[Any] = []
    while offset < size:
        block_id = base64.b64encode(f"{len(ids):08d}".encode()).decode()
        blob.stage_block(block_id, chunk[: min(len(chunk), size - offset)])
        ids.append(BlobBlock(block_id=block_id))
        offset += len(chunk)
    blob.commit_block_list(ids, content_settings=ContentSettings(content_type="application/pdf"))


async def host(args: argparse.Namespace) -> dict[str, Any]:
    from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

    from devtools.azurite import (
        CUSTOMER_ACCOUNT,
        CUSTOMER_KEY,
        EXPORTS_ACCOUNT,
        EXPORTS_KEY,
        connection_string,
        start_azurite,
    )
    from devtools.staging_proxy import StagingProxy

    azurite = start_azurite(tied_to_parent=True)
    proxy: StagingProxy | None = None
    ingestion = Ingestion()
    child: asyncio.subprocess.Process | None = None
    try:
        proxy = await StagingProxy(azurite.blob_port).start()
        insights = await ingestion.start()
        exports = BlobServiceClient.from_connection_string(azurite.exports)
        exports.create_container(SOURCE_CONTAINER)
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)

        def link(name: str) -> str:
            sas = generate_blob_sas(
                EXPORTS_ACCOUNT,
                SOURCE_CONTAINER,
                name,
                account_key=EXPORTS_KEY,
                permission=BlobSasPermissions(read=True),
                expiry=expires,
            )
            return f"http://127.0.0.1:{azurite.blob_port}/{EXPORTS_ACCOUNT}/{SOURCE_CONTAINER}/{name}?{sas}"

        exports.get_blob_client(SOURCE_CONTAINER, "small.pdf").upload_blob(_pdf(64 * 1024))
        started = time.monotonic()
        await asyncio.to_thread(_upload, exports.get_blob_client(SOURCE_CONTAINER, "large.pdf"), args.large_mib * MIB)
        print(f"memory: {args.large_mib} MiB source uploaded in {time.monotonic() - started:.1f} s", flush=True)

        destination = connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, proxy.port)
        env = dict(
            os.environ,
            DESTINATION_CONNECTION_STRING=destination,
            DESTINATION_CONTAINER=CONTAINER,
            AzureWebJobsStorage=azurite.host_storage,
            ALLOWED_SOURCE_HOSTS=f"127.0.0.1:{azurite.blob_port}",
            ALLOW_HTTP_SOURCES="true",
            SYNC_COPY_MAX_MIB="0",
            COPY_WAIT_SECONDS="0",
            FUNCTIONS_WORKER_RUNTIME="python",
            PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY="true",
            APPLICATIONINSIGHTS_CONNECTION_STRING=(
                "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                f"IngestionEndpoint=http://127.0.0.1:{insights}/;LiveEndpoint=http://127.0.0.1:{insights}/"
            ),
            APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
            APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED="true",
            OTEL_TRACES_SAMPLER="microsoft.fixed_percentage",
            OTEL_TRACES_SAMPLER_ARG="1.0",
            PYTHONUNBUFFERED="1",
        )
        command = [args.python, "-m", "bench.memory", "--worker"] + (["--protos", args.protos] if args.protos else [])
        child = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL if not args.verbose else None,
            limit=64 * MIB,
        )
        assert child.stdin is not None and child.stdout is not None
        ready = json.loads(await child.stdout.readline() or b"{}")
        if not ready.get("ready"):
            raise SystemExit("memory: the worker did not start (run with --verbose to see why)")
        sampler = Sampler(child.pid)
        sampler_task = asyncio.create_task(sampler.run())

        async def call(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
            assert child is not None and child.stdin is not None and child.stdout is not None
            child.stdin.write((json.dumps(calls) + "\n").encode())
            await child.stdin.drain()
            results: list[dict[str, Any]] = json.loads(await child.stdout.readline())
            failed = [r for r in results if not r.get("ok")]
            if failed:
                raise SystemExit(f"memory: {len(failed)} invocations failed in the worker: {failed[0]['error']}")
            return results

        def delivery(name: str) -> dict[str, Any]:
            body = {
                "taskId": str(uuid.uuid4()),
                "taskNumber": 1,
                "workspaceId": str(uuid.uuid4()),
                "displayName": "Memory bench",
                "totalPages": 1,
                "exportedFileUrl": link(name),
                "exportedFileContentType": "application/pdf",
                "exportedFileExpiresOn": expires.isoformat(),
                "metadata": {"caseNumber": "M-1"},
            }
            return {
                "kind": "http",
                "route": "smartdocumentor/anonymization",
                "method": "POST",
                "body": json.dumps(body),
            }

        def say(text: str) -> None:
            print(f"memory: {text}", flush=True)

        phases: dict[str, Any] = {}
        first = sampler.status()
        phases["loaded"] = {"peak_mib": round(first["VmHWM"] / 1024, 1), "rss_mib": round(first["VmRSS"] / 1024, 1)}

        sampler.start_phase()
        [health] = await call([{"kind": "http", "route": "health", "method": "GET", "body": ""}])
        await asyncio.sleep(2)
        phases["idle"] = sampler.end_phase() | {"health": health["status"]}

        say(f"idle: peak RSS {phases['idle']['peak_mib']} MiB; {args.deliveries} concurrent deliveries")
        sampler.start_phase()
        started = time.monotonic()
        answers = await call([delivery("small.pdf") for _ in range(args.deliveries)])
        statuses = sorted({a["status"] for a in answers})
        phases["webhooks"] = sampler.end_phase() | {
            "statuses": statuses,
            "seconds": round(time.monotonic() - started, 2),
        }
        messages = [a["queued"] for a in answers if a["queued"]]

        say(f"webhooks: peak RSS {phases['webhooks']['peak_mib']} MiB; their {len(messages)} queue functions")
        sampler.start_phase()
        started = time.monotonic()
        await call([{"kind": "queue", "body": m} for m in messages])
        phases["queue_functions"] = sampler.end_phase() | {
            "messages": len(messages),
            "seconds": round(time.monotonic() - started, 2),
        }
        # Straight to Azurite: the proxy runs on this event loop, which a synchronous client would block.
        direct = connection_string(CUSTOMER_ACCOUNT, CUSTOMER_KEY, azurite.blob_port)
        dst = BlobServiceClient.from_connection_string(direct).get_container_client(CONTAINER)
        stored = [b for b in dst.list_blobs() if b.name.endswith(".pdf")]
        phases["queue_functions"]["stored"] = len(stored)

        say(f"queue functions: peak RSS {phases['queue_functions']['peak_mib']} MiB; the large staged copy")
        sampler.start_phase()
        started = time.monotonic()
        [large] = await call([delivery("large.pdf")])
        if large["queued"]:
            await call([{"kind": "queue", "body": large["queued"]}])
        seconds = round(time.monotonic() - started, 1)
        phases["large_staged_copy"] = sampler.end_phase() | {"status": large["status"], "seconds": seconds}
        sizes = [b.size for b in dst.list_blobs() if b.name.endswith(".pdf") and b.size >= MIB]
        phases["large_staged_copy"]["stored_mib"] = round(sizes[0] / MIB, 1) if sizes else None
        sampler_task.cancel()
        blocks = proxy.emulator.performed if proxy.emulator else []
        return {
            "worker": "azure-functions-runtime (real worker)" if args.protos else "the app's handlers, as the worker",
            "python": (await _version(args.python)),
            "deliveries": args.deliveries,
            "large_mib": args.large_mib,
            "put_block_from_url_through_proxy": sum(1 for kind, _ in blocks if kind == "block"),
            "phases": phases,
        }
    finally:
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
        if proxy is not None:
            await proxy.stop()
        with contextlib.suppress(AttributeError):
            await ingestion.runner.cleanup()
        azurite.stop()


async def _version(python: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        python, "-c", "import platform; print(platform.python_version())", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=150, help="concurrent deliveries (150)")
    parser.add_argument("--large-mib", type=int, default=1024, help="the large staged copy's size (1024 MiB)")
    parser.add_argument("--python", default=sys.executable, help="the worker's interpreter")
    parser.add_argument("--protos", help="the worker protobufs: run the real worker library (Python 3.13+)")
    parser.add_argument("--timeout", type=float, default=900.0, help="stop after this many seconds (900)")
    parser.add_argument("--verbose", action="store_true", help="show the worker's own output")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker(args.protos))
        return 0
    if args.protos:
        args.protos = str(Path(args.protos).resolve())
    result = asyncio.run(asyncio.wait_for(host(args), args.timeout))
    for name, phase in result["phases"].items():
        extra = ", ".join(f"{k} {v}" for k, v in phase.items() if k not in ("peak_mib", "rss_mib"))
        print(f"memory: {name}: peak RSS {phase['peak_mib']} MiB, RSS after {phase['rss_mib']} MiB ({extra})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
