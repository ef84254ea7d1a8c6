"""Put Block From URL and Put Blob From URL for Azurite, which answers both with 501.

Azurite (3.35) implements Copy Blob From URL but not the two calls that copy a large file
server-side in one atomic commit. :class:`StagingEmulator` performs them the way the service does,
in front of Azurite: it reads the source (the range ``x-ms-source-range`` names) through the
source URL's own SAS, then sends Azurite a plain Put Block (or Put Blob) with those bytes. The body
changes, so the client's Shared Key signature cannot be kept: the forwarded request carries a
short-lived blob SAS made with the destination account's key instead (public SDK API, no hand-made
signatures). The answer is Azurite's own answer to that Put Block / Put Blob (201 with the headers
the SDK expects). A source the service could not read answers as Azure does: the source's status
(403, 404, ...; 412 when ``x-ms-source-if-match`` names another version than the source's) with
``CannotVerifyCopySource`` and ``<CopySourceStatusCode>`` in the body.

Used by tests/faultproxy.py, and runnable on its own in front of a local Azurite::

    python -m devtools.staging_proxy --port 10005 --upstream 10000

then point DESTINATION_CONNECTION_STRING's BlobEndpoint at ``http://127.0.0.1:10005/<account>``.
`make run` and `make demo` do exactly that (:func:`start_child`, :func:`through_proxy`): a file above
SYNC_COPY_MAX_MIB is then staged in blocks and committed locally as it is in Azure.
Loopback only; for local development and tests, never for a real account.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from yarl import URL

from devtools.azurite import (
    CUSTOMER_ACCOUNT,
    CUSTOMER_KEY,
    DEV_ACCOUNT,
    DEV_KEY,
    EXPORTS_ACCOUNT,
    EXPORTS_KEY,
    die_with_parent,
    free_port,
    stop_process,
)

ACCOUNT_KEYS: dict[str, str] = {DEV_ACCOUNT: DEV_KEY, CUSTOMER_ACCOUNT: CUSTOMER_KEY, EXPORTS_ACCOUNT: EXPORTS_KEY}

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
# Forward requests byte for byte: aiohttp must add nothing of its own.
SKIP_AUTO_HEADERS = ("Content-Type", "Accept-Encoding", "User-Agent", "Accept")
# Headers of a From-URL request that describe the source, not the destination: never forwarded.
_SOURCE_HEADERS = ("x-ms-copy-source", "x-ms-source-", "authorization", "x-ms-requires-sync")
# Put Blob From URL copies these from the source unless the request sets them (x-ms-copy-source-blob-properties).
_BLOB_PROPERTIES = {
    "Content-Type": "x-ms-blob-content-type",
    "Content-Encoding": "x-ms-blob-content-encoding",
    "Content-Language": "x-ms-blob-content-language",
    "Content-Disposition": "x-ms-blob-content-disposition",
    "Cache-Control": "x-ms-blob-cache-control",
    "Content-MD5": "x-ms-blob-content-md5",
}
_SOURCE_MESSAGES = {
    403: "Server failed to authenticate the request. Make sure the value of Authorization header is formed "
    "correctly including the signature.",
    404: "The specified blob does not exist.",
}


def is_put_block_from_url(request: web.Request) -> bool:
    """``PUT ...?comp=block&blockid=...`` with ``x-ms-copy-source``."""
    return (
        request.method == "PUT"
        and request.query.get("comp") == "block"
        and "blockid" in request.query
        and "x-ms-copy-source" in request.headers
    )


def is_put_blob_from_url(request: web.Request) -> bool:
    """``PUT`` of a block blob with ``x-ms-copy-source`` and no ``comp``: not Copy Blob (which names no
    blob type) nor Copy Blob From URL (``x-ms-requires-sync: true``)."""
    return (
        request.method == "PUT"
        and "comp" not in request.query
        and "x-ms-copy-source" in request.headers
        and request.headers.get("x-ms-requires-sync", "").lower() != "true"
        and request.headers.get("x-ms-blob-type", "") == "BlockBlob"
    )


def copy_source_error(source_status: int, source_code: str | None) -> web.Response:
    """What Azure answers when it could not read the source: the source's status, CannotVerifyCopySource."""
    message = _SOURCE_MESSAGES.get(source_status, f"The source answered {source_status}.")
    now = format_datetime(datetime.now(UTC), usegmt=True)
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>CannotVerifyCopySource</Code>'
        f"<Message>{escape(message)}\nRequestId:staging-proxy\nTime:{now}</Message>"
        f"<CopySourceStatusCode>{source_status}</CopySourceStatusCode>"
        f"<CopySourceErrorCode>{escape(source_code or '')}</CopySourceErrorCode>"
        f"<CopySourceErrorMessage>{escape(message)}</CopySourceErrorMessage></Error>"
    )
    return web.Response(
        status=source_status if 400 <= source_status < 600 else 500,
        text=body,
        content_type="application/xml",
        headers={
            "x-ms-error-code": "CannotVerifyCopySource",
            "x-ms-copy-source-status-code": str(source_status),
            "x-ms-copy-source-error-code": source_code or "",
            "x-ms-request-id": "staging-proxy",
        },
    )


class StagingEmulator:
    """Performs Put Block From URL and Put Blob From URL against Azurite at ``upstream_port``."""

    def __init__(self, upstream_port: int, session: ClientSession, keys: Mapping[str, str] | None = None) -> None:
        self.upstream_port = upstream_port
        self.session = session
        self.keys = dict(ACCOUNT_KEYS if keys is None else keys)
        self.performed: list[tuple[str, str]] = []  # (kind, path) of every emulated request

    def handles(self, request: web.Request) -> bool:
        return is_put_block_from_url(request) or is_put_blob_from_url(request)

    async def answer(self, request: web.Request) -> web.Response:
        block = is_put_block_from_url(request)
        self.performed.append(("block" if block else "blob", request.path))
        account, _, blob_path = request.path.lstrip("/").partition("/")
        container, _, blob = blob_path.partition("/")
        key = self.keys.get(account)
        if key is None or not container or not blob:
            return web.Response(status=501, text=f"staging proxy: no key for account {account!r}")
        source_headers = {}
        source_range = request.headers.get("x-ms-source-range")
        if block and source_range:
            source_headers["Range"] = source_range
        if "x-ms-source-if-match" in request.headers:  # a source condition: the source answers 412 when it fails
            source_headers["If-Match"] = request.headers["x-ms-source-if-match"]
        try:
            async with self.session.get(
                URL(request.headers["x-ms-copy-source"], encoded=True), headers=source_headers, allow_redirects=False
            ) as source:
                if source.status not in (200, 206):
                    await source.read()
                    return copy_source_error(source.status, source.headers.get("x-ms-error-code"))
                data = await source.read()
                source_props = dict(source.headers)
        except (ClientError, TimeoutError, OSError):
            return copy_source_error(500, "SourceUnreachable")
        if block and source_range and source.status == 200:  # the source ignored the range: cut it here
            first, _, last = source_range.removeprefix("bytes=").partition("-")
            data = data[int(first) : int(last) + 1 if last else None]
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in HOP_HEADERS and not name.lower().startswith(_SOURCE_HEADERS)
        }
        if not block and request.headers.get("x-ms-copy-source-blob-properties", "true").lower() != "false":
            for source_name, blob_name in _BLOB_PROPERTIES.items():
                if blob_name not in {name.lower() for name in headers} and source_props.get(source_name):
                    headers[blob_name] = source_props[source_name]
        headers.pop("x-ms-copy-source-blob-properties", None)
        headers["Content-Length"] = str(len(data))
        sas = generate_blob_sas(
            account,
            container,
            blob,
            account_key=key,
            permission=BlobSasPermissions(read=True, write=True, create=True, tag=True),
            expiry=datetime.now(UTC) + timedelta(minutes=10),
        )
        query = request.query_string
        url = URL(f"http://127.0.0.1:{self.upstream_port}{request.raw_path.split('?', 1)[0]}", encoded=True)
        url = URL(f"{url}?{query}&{sas}" if query else f"{url}?{sas}", encoded=True)
        async with self.session.put(url, headers=headers, data=data, skip_auto_headers=SKIP_AUTO_HEADERS) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(status=upstream.status, body=payload, headers=out)


async def forward(session: ClientSession, upstream_port: int, request: web.Request) -> web.StreamResponse:
    """Send the request on to Azurite unchanged and answer with what it answered."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS - {"content-length"}}
    body = await request.read()
    url = URL(f"http://127.0.0.1:{upstream_port}{request.raw_path}", encoded=True)
    async with session.request(
        request.method, url, headers=headers, data=body, skip_auto_headers=SKIP_AUTO_HEADERS
    ) as upstream:
        payload = await upstream.read()
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        response = web.Response(status=upstream.status, body=None if request.method == "HEAD" else payload, headers=out)
        if request.method == "HEAD" and "Content-Length" in upstream.headers:
            response.headers["Content-Length"] = upstream.headers["Content-Length"]  # the blob's size
        return response


class StagingProxy:
    """A plain proxy in front of Azurite that also performs Put Block / Put Blob From URL."""

    def __init__(self, upstream_port: int, *, port: int = 0, keys: Mapping[str, str] | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.keys = keys
        self.emulator: StagingEmulator | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def start(self) -> StagingProxy:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = int(sockets[0].getsockname()[1])
        self._session = ClientSession(timeout=ClientTimeout(total=300), auto_decompress=False)
        self.emulator = StagingEmulator(self.upstream_port, self._session, self.keys)
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self.emulator is not None and self._session is not None
        if self.emulator.handles(request):
            return await self.emulator.answer(request)
        return await forward(self._session, self.upstream_port, request)


async def _serve(port: int, upstream: int) -> None:
    proxy = await StagingProxy(upstream, port=port).start()
    print(f"staging proxy: http://127.0.0.1:{proxy.port} -> Azurite at 127.0.0.1:{upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await proxy.stop()


def through_proxy(connection_string: str, blob_port: int, proxy_port: int) -> str:
    """``connection_string`` with its BlobEndpoint on Azurite's ``blob_port`` moved to the proxy (any other
    endpoint, and a real account's string, unchanged)."""
    moved = connection_string
    for host in ("127.0.0.1", "localhost"):
        moved = moved.replace(f"//{host}:{blob_port}/", f"//127.0.0.1:{proxy_port}/")
    return moved


class Child:
    """The staging proxy as a child process: its own process group, gone when its parent dies (Linux)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    def stop(self) -> None:
        stop_process(self.process, sig=signal.SIGTERM, timeout=10, group=True)


def start_child(upstream: int, *, port: int | None = None, cwd: Path | None = None, timeout: float = 30) -> Child:
    """``python -m devtools.staging_proxy`` in front of Azurite's blob port ``upstream``; returns once it
    listens. Raises RuntimeError when it does not."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.staging_proxy", "--port", str(port), "--upstream", str(upstream)],
        cwd=cwd or Path(__file__).resolve().parent.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches the parent only; it stops the proxy's group
        preexec_fn=die_with_parent,
    )
    child = Child(process, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the staging proxy exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return child
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"the staging proxy did not listen on 127.0.0.1:{port} in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.staging_proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="where the proxy listens (127.0.0.1)")
    parser.add_argument("--upstream", type=int, default=10000, help="Azurite's blob port")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
