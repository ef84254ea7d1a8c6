"""A small fault-injecting HTTP proxy between the SDK and Azurite (loopback only).

Azurite never produces pending copies, throttling or tag refusals; this proxy makes real
HTTP responses that look like Azure's, so the real SDK parses them. Each rule matches a
request and either answers for Azurite (an error), drops the connection, or rewrites
Azurite's real response (copy status). Rules fire a bounded number of times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, web
from yarl import URL

Match = Callable[[web.Request], bool]

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
# Forward requests byte for byte: Shared Key signs Content-Type/Length, so aiohttp must add nothing.
SKIP_AUTO_HEADERS = ("Content-Type", "Accept-Encoding", "User-Agent", "Accept")


def is_copy(request: web.Request) -> bool:
    return request.method == "PUT" and "x-ms-copy-source" in request.headers


def is_properties(request: web.Request) -> bool:
    return request.method == "HEAD"


def is_blob_write(request: web.Request) -> bool:
    return request.method == "PUT" and "x-ms-copy-source" not in request.headers and "comp" not in request.query


def error_body(code: str, message: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}\nRequestId:fault-proxy</Message></Error>"
    )


@dataclass
class Rule:
    match: Match
    times: int
    status: int | None = None  # answer with this error instead of forwarding
    code: str = ""
    drop: bool = False  # close the connection without an answer
    copy_status: str | None = None  # rewrite x-ms-copy-status of Azurite's real answer
    copy_description: str | None = None
    fired: int = 0

    def take(self, request: web.Request) -> bool:
        if self.fired >= self.times or not self.match(request):
            return False
        self.fired += 1
        return True


@dataclass
class FaultProxy:
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: ClientSession | None = None

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def keep_copies_pending(self) -> None:
        """The next copy, and every read of copy status, say "pending" until :meth:`reset`."""
        self.add(Rule(is_copy, times=1, copy_status="pending"))
        self.add(Rule(is_properties, times=10_000, copy_status="pending"))

    def reset(self) -> None:
        self.rules.clear()
        self.seen.clear()

    async def start(self) -> FaultProxy:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = int(sockets[0].getsockname()[1])
        self._session = ClientSession(timeout=ClientTimeout(total=30), auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        rewrite: Rule | None = None
        for rule in self.rules:
            if not rule.take(request):
                continue
            if rule.drop:
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError  # nothing more to send on a closed connection
            if rule.status is not None:
                return web.Response(
                    status=rule.status,
                    text=error_body(rule.code, f"Injected {rule.code}"),
                    content_type="application/xml",
                    headers={"x-ms-error-code": rule.code, "x-ms-request-id": "fault-proxy"},
                )
            rewrite = rule
            break
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS - {"content-length"}}
        body = await request.read()
        url = URL(f"http://127.0.0.1:{self.upstream_port}{request.raw_path}", encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=body, skip_auto_headers=SKIP_AUTO_HEADERS
        ) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            if rewrite is not None and "x-ms-copy-status" in {k.lower() for k in out_headers}:
                out_headers = {k: v for k, v in out_headers.items() if not k.lower().startswith("x-ms-copy-status")}
                out_headers["x-ms-copy-status"] = rewrite.copy_status or "pending"
                if rewrite.copy_description:
                    out_headers["x-ms-copy-status-description"] = rewrite.copy_description
            return web.Response(
                status=upstream.status, body=payload if request.method != "HEAD" else None, headers=out_headers
            )
