"""A counting HTTP proxy in front of Azurite: the storage requests of one delivery, seen on the wire.

The receiver's connection string and the export links both point here, so every request the
process sends to the customer's account, and any request it sends to the source, passes
through and is recorded (retries included, each one). The proxy keeps the Host header as sent:
Azurite copies only from a source on "the same instance", which it decides by comparing the
copy request's Host with the source URL's, and both name this proxy. Azurite's own check of the
source (an axios GET ?comp=metadata that Azure does inside the service) passes through too and
is kept apart (:attr:`Seen.by_emulator`).

``refuse_sync`` answers every synchronous copy the way Azure answers one whose source is over
256 MiB (409 CannotVerifyCopySource), which Azurite never does.

``delay`` adds distance: every request the process sends waits this long in the proxy before it
goes on to Azurite (Azurite's own source check does not: Azure makes it inside the service). The
waits overlap, as a network's do: requests sent side by side each pay it once, together. Each
request records when it arrived and when its answer left, so :func:`round_trips` can tell how
many of a delivery's requests waited for the one before (the longest such chain).

Run alone (``python -m bench.counter --upstream-port N --delay-ms 40``) it serves in its own
process, so the proxy's own work never shares the measured process's CPU or event loop; it prints
its port, records nothing, and stops when its standard input closes or after ``--max-seconds``.

Standalone on purpose: the bench does not import the tests (tests/faultproxy.py is their proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, web
from yarl import URL

# Hop-by-hop headers are the proxy's own business; Host and Content-Length go through as sent.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
# Forward byte for byte: Shared Key signs Content-Type/Length, so aiohttp must add nothing.
SKIP_AUTO_HEADERS = ("Content-Type", "Accept-Encoding", "User-Agent", "Accept")
# The User-Agent of the staging proxy's own reads of a source (bench/staging.py): not the receiver's.
STAGING_AGENT = "bench-staging-emulator"
REFUSED_SYNC_COPY = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>CannotVerifyCopySource</Code>'
    "<Message>The source request body is too large and exceeds the maximum permissible limit (256MB).\n"
    "RequestId:bench-counter</Message></Error>"
)


@dataclass
class Seen:
    """One request as it arrived, and the status it was answered with."""

    method: str
    account: str
    path: str  # without the query (which may hold a SAS)
    comp: str | None
    restype: str | None
    copy: bool  # x-ms-copy-source
    sync: bool  # x-ms-requires-sync: true
    if_match: bool
    if_none_match: bool
    user_agent: str
    snapshot: bool = False  # the request names a snapshot of the blob (?snapshot=)
    status: int = 0
    started: float = 0.0  # time.perf_counter() when the request arrived
    ended: float = 0.0  # ... and when its answer left

    @property
    def by_emulator(self) -> bool:
        """Azurite checking a copy source over HTTP, or the staging proxy reading a block's range
        (bench/staging.py): Azure does both inside the service, unseen by the receiver."""
        agent = self.user_agent.lower()
        return agent.startswith("axios") or agent.startswith(STAGING_AGENT)

    @property
    def describe(self) -> str:
        """What the request is, in the storage REST API's own names."""
        target = (
            "task record"
            if "/.smartdocumentor/tasks/" in self.path
            else "pending summary"
            if self.path.endswith("/.smartdocumentor/attention/pending.json")
            else "migration marker"
            if self.path.endswith("/.smartdocumentor/migration.json")
            else "migration's begun blob"
            if self.path.endswith("/.smartdocumentor/migration-begun")
            else "failure marker"
            if "/.smartdocumentor/attention/failed/" in self.path
            else "manifest"
            if self.path.endswith(".json")
            else "file"
        )
        if self.account != "customer":
            operation = "HEAD on the source (the link's own SAS)" if self.method == "HEAD" else f"{self.method} source"
        elif self.restype == "container" and self.comp == "list":
            operation = "List Blobs"
        elif self.restype == "container" and self.comp == "blobs":
            operation = "Find Blobs by Tags"
        elif self.restype == "account":
            operation = "Get Account Information"
        elif self.restype == "container":
            operation = "Create Container" if self.method == "PUT" else f"{self.method} container"
        elif self.method == "PUT" and self.comp == "block" and self.copy:
            operation = f"Put Block From URL to the {target}"
        elif self.method == "PUT" and self.comp == "blocklist":
            operation = f"Put Block List of the {target}"
        elif self.copy:
            kind = "Copy Blob From URL (synchronous)" if self.sync else "Copy Blob (asynchronous)"
            operation = f"{kind} to the {target}"
        elif self.method == "PUT" and self.comp == "properties":
            operation = f"Set Blob Properties on the {target}"
        elif self.method == "PUT" and self.comp == "copy":
            operation = "Abort Copy Blob"
        elif self.method == "PUT" and self.comp == "snapshot":
            operation = f"Snapshot Blob of the {target}"
        elif self.method == "PUT" and self.comp == "tags":
            operation = f"Set Blob Tags of the {target}"
        elif self.method == "GET" and self.comp == "tags":
            operation = f"Get Blob Tags of the {target}"
        else:
            name = {"HEAD": "Get Blob Properties", "GET": "Get Blob", "PUT": "Put Blob", "DELETE": "Delete Blob"}
            operation = f"{name.get(self.method, self.method)} of the {target}"
            if self.snapshot:
                operation = f"{name.get(self.method, self.method)} of a snapshot of the {target}"
        condition = " If-Match" if self.if_match else " If-None-Match: *" if self.if_none_match else ""
        return f"{operation}{condition} → {self.status}"


def round_trips(requests: list[Seen]) -> int:
    """Sequential round trips on the wire: the longest chain of requests each of which arrived
    after the answer to the one before it had left. Requests sent side by side overlap (each waits
    the proxy's ``delay``), so they count once. Needs a delay well above the client's own time
    between sending requests that belong together (a few ms here), or fast answers could chain."""
    ordered = sorted(requests, key=lambda r: r.started)
    depth: list[int] = []
    for i, request in enumerate(ordered):
        before = [depth[j] for j in range(i) if ordered[j].ended <= request.started]
        depth.append(1 + max(before, default=0))
    return max(depth, default=0)


def most_at_once(requests: list[Seen]) -> int:
    """The most of ``requests`` whose lifetimes overlapped at one moment (arrived before another's
    answer left): how many blocks were staged at a time, for instance."""
    events = sorted([(r.started, 1) for r in requests] + [(r.ended, -1) for r in requests])
    now = most = 0
    for _, step in events:  # an answer leaving at the instant another arrives does not overlap (-1 first)
        now += step
        most = max(most, now)
    return most


@dataclass
class CountingProxy:
    upstream_port: int
    refuse_sync: bool = False
    forward_port: int | None = None  # where requests go on to (a staging proxy); Azurite when None
    delay: float = 0.0  # seconds added to every request the process sends (not Azurite's own)
    record: bool = True
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: ClientSession | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def via(self, url: str) -> str:
        """An Azurite URL (a SAS link) through this proxy; the SAS does not sign the host."""
        return url.replace(f"//127.0.0.1:{self.upstream_port}/", f"//{self.host}/", 1)

    def take(self) -> list[Seen]:
        """The requests sent by the receiver since the last take (the emulator's own are left out)."""
        seen, self.seen = self.seen, []
        return [request for request in seen if not request.by_emulator]

    async def start(self) -> CountingProxy:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = int(sockets[0].getsockname()[1])
        self._session = ClientSession(timeout=ClientTimeout(total=300), auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.lstrip("/").split("/", 1)
        seen = Seen(
            method=request.method,
            account=parts[0],
            path=request.path,
            comp=request.query.get("comp"),
            restype=request.query.get("restype"),
            copy="x-ms-copy-source" in request.headers,
            sync=request.headers.get("x-ms-requires-sync", "").lower() == "true",
            if_match="If-Match" in request.headers,
            if_none_match=request.headers.get("If-None-Match") == "*",
            user_agent=request.headers.get("User-Agent", ""),
            snapshot="snapshot" in request.query,
            started=time.perf_counter(),
        )
        if self.record:
            self.seen.append(seen)  # in order of arrival
        if self.delay and not seen.by_emulator:
            await asyncio.sleep(self.delay)
        if self.refuse_sync and seen.copy and seen.sync:
            seen.status = 409
            seen.ended = time.perf_counter()
            return web.Response(
                status=409,
                text=REFUSED_SYNC_COPY,
                content_type="application/xml",
                headers={"x-ms-error-code": "CannotVerifyCopySource", "x-ms-request-id": "bench-counter"},
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        url = URL(f"http://127.0.0.1:{self.forward_port or self.upstream_port}{request.raw_path}", encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=body, skip_auto_headers=SKIP_AUTO_HEADERS
        ) as upstream:
            payload = await upstream.read()
            seen.status = upstream.status
            # A HEAD's Content-Length is the blob's size, so it goes through; otherwise aiohttp sets it.
            dropped = HOP_HEADERS if request.method == "HEAD" else HOP_HEADERS | {"content-length"}
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in dropped}
            seen.ended = time.perf_counter()
            return web.Response(
                status=upstream.status, body=payload if request.method != "HEAD" else None, headers=out_headers
            )


async def _serve(upstream_port: int, delay: float, max_seconds: float) -> None:
    proxy = await CountingProxy(upstream_port, delay=delay, record=False).start()
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()  # returns when the parent closes our stdin (or exits)
        loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print(proxy.port, flush=True)
    try:
        await asyncio.wait_for(closed.wait(), timeout=max_seconds)
    except TimeoutError:
        pass
    finally:
        await proxy.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="A delaying proxy in front of Azurite, loopback only.")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop by itself after this long")
    args = parser.parse_args()
    asyncio.run(_serve(args.upstream_port, args.delay_ms / 1000, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
