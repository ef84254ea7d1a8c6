"""A small fault-injecting HTTP proxy between the SDK and Azurite (loopback only).

Azurite never produces pending copies, throttling or tag refusals; this proxy makes real
HTTP responses that look like Azure's, so the real SDK parses them. Each rule matches a
request and either answers for Azurite (an error), drops the connection, or rewrites
Azurite's real response (copy status). Rules fire a bounded number of times.

Azurite answers 501 to Put Block From URL and Put Blob From URL: unless ``staging=False``, the
proxy performs them itself (devtools/staging_proxy.py: it reads the source range through its SAS
and sends Azurite a plain Put Block / Put Blob), after the rules, so a rule can still refuse them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, web
from yarl import URL

from devtools.staging_proxy import StagingEmulator

Match = Callable[[web.Request], bool]

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
# Forward requests byte for byte: Shared Key signs Content-Type/Length, so aiohttp must add nothing.
SKIP_AUTO_HEADERS = ("Content-Type", "Accept-Encoding", "User-Agent", "Accept")


def is_copy(request: web.Request) -> bool:
    return request.method == "PUT" and "x-ms-copy-source" in request.headers


def is_sync_copy(request: web.Request) -> bool:
    return is_copy(request) and request.headers.get("x-ms-requires-sync", "").lower() == "true"


RECORD_PATH = "/.smartdocumentor/tasks/"


def is_record(request: web.Request) -> bool:
    """A request on a task record (.smartdocumentor/tasks/...)."""
    return RECORD_PATH in request.path


def is_record_write(request: web.Request) -> bool:
    """A compare-and-swap of a task record (Put Blob, If-Match or If-None-Match: *)."""
    return is_blob_write(request) and is_record(request)


def is_record_read(request: web.Request) -> bool:
    return request.method == "GET" and is_record(request)


def is_manifest_write(request: web.Request) -> bool:
    return is_blob_write(request) and request.path.endswith(".json") and not is_record(request)


def is_manifest_read(request: web.Request) -> bool:
    return request.method in ("GET", "HEAD") and request.path.endswith(".json") and not is_record(request)


def is_overwrite_copy(request: web.Request) -> bool:
    """A copy over an existing file (If-Match), sent only after the record lists the delivery."""
    return is_copy(request) and "If-Match" in request.headers


def is_create_copy(request: web.Request) -> bool:
    """The webhook's first-round copy: create only (If-None-Match: *)."""
    return is_copy(request) and request.headers.get("If-None-Match") == "*"


def on_path(suffix: str) -> Match:
    """A request whose (decoded) path ends with ``suffix``."""
    return lambda request: request.path.endswith(suffix)


def is_header_write(request: web.Request) -> bool:
    return request.method == "PUT" and request.query.get("comp") == "properties"


def is_delete(request: web.Request) -> bool:
    return request.method == "DELETE"


def copies_from(source_path: str) -> Match:
    """A copy whose source is this export (matched on the source URL's path, never its query)."""
    return lambda request: (
        is_copy(request) and request.headers["x-ms-copy-source"].split("?", 1)[0].endswith(source_path)
    )


def is_properties(request: web.Request) -> bool:
    return request.method == "HEAD"


def is_blob_write(request: web.Request) -> bool:
    return request.method == "PUT" and "x-ms-copy-source" not in request.headers and "comp" not in request.query


def carries_tags(request: web.Request) -> bool:
    """A write that sets index tags (x-ms-tags: Put Blob, Copy Blob, Put Block List, ...)."""
    return request.method == "PUT" and "x-ms-tags" in request.headers


def is_tags_call(request: web.Request) -> bool:
    """Get or Set Blob Tags (``comp=tags``)."""
    return request.query.get("comp") == "tags"


def is_account_info(request: web.Request) -> bool:
    """Get Account Information (``?restype=account&comp=properties``, on the account, a container or a blob)."""
    return request.query.get("restype") == "account" and request.query.get("comp") == "properties"


def changes_existing_blob(request: web.Request) -> bool:
    """What a retention policy or legal hold refuses: a write over an existing blob (any PUT that is not
    create-only, If-None-Match: *, and not a block staged for later), Set Properties, Set Metadata,
    Snapshot, Delete. (The receiver sends If-None-Match: * on every create, so a PUT without it is
    taken as an overwrite without asking Azurite whether the blob exists.)"""
    if request.method == "DELETE":
        return "restype" not in request.query
    if request.method != "PUT" or "restype" in request.query:
        return False
    comp = request.query.get("comp")
    if comp in ("properties", "metadata", "snapshot"):
        return True
    if comp not in (None, "blocklist"):
        return False  # Put Block (staging), Set Tags, leases, ...
    return request.headers.get("If-None-Match", "") != "*"


def error_body(code: str, message: str, details: dict[str, str] | None = None) -> str:
    extra = "".join(f"<{name}>{value}</{name}>" for name, value in (details or {}).items())
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}\nRequestId:fault-proxy</Message>{extra}</Error>"
    )


def _holds(of_delivery: str | frozenset[str] | None, delivery: str | None) -> bool:
    if of_delivery is None:
        return True
    return delivery in of_delivery if isinstance(of_delivery, frozenset) else delivery == of_delivery


@dataclass
class Rule:
    match: Match
    times: int
    status: int | None = None  # answer with this error (or, below 300, this empty success) instead of forwarding
    code: str = ""
    message: str = ""
    details: dict[str, str] = field(default_factory=dict)  # more elements of the error body (FeatureName, ...)
    answer_headers: dict[str, str] = field(default_factory=dict)  # headers of the answer (with ``status``)
    drop: bool = False  # close the connection without an answer
    copy_status: str | None = None  # rewrite x-ms-copy-status of Azurite's real answer
    copy_description: str | None = None
    hold: asyncio.Event | None = None  # keep the request here until the test sets this event
    delay_answer: float = 0.0  # forward at once; a success reaches the client this many seconds later
    after: bool = False  # with ``status``: forward first (storage acts), then answer with that error
    of_delivery: str | frozenset[str] | None = (
        None  # rewrite the copy status only of a blob holding this delivery (or one of these)
    )
    fired: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)  # set when the rule first fires
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set when storage answered a request it let through

    def take(self, request: web.Request) -> bool:
        if self.fired >= self.times or not self.match(request):
            return False
        self.fired += 1
        self.reached.set()
        return True

    @property
    def changes_answer(self) -> bool:
        return self.drop or self.status is not None or self.copy_status is not None or self.delay_answer > 0

    def error(self) -> web.Response:
        assert self.status is not None
        return web.Response(
            status=self.status,
            text=error_body(self.code, self.message or f"Injected {self.code}", self.details),
            content_type="application/xml",
            headers={"x-ms-error-code": self.code, "x-ms-request-id": "fault-proxy", **self.answer_headers},
        )


# The service's own answers on an account with a hierarchical namespace (Data Lake Storage Gen2).
HNS_MESSAGE = "This feature is not yet supported for hierarchical namespace accounts."
QUERY_MESSAGE = "Value for one of the query parameters specified in the request URI is invalid."
IMMUTABLE_MESSAGES = {
    "BlobImmutableDueToPolicy": "This operation is not permitted as the blob is immutable due to a policy.",
    "BlobImmutableDueToLegalHold": "This operation is not permitted as the blob is immutable due to one or more "
    "legal holds.",
}


@dataclass
class FaultProxy:
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    staging: bool = True  # perform Put Block From URL / Put Blob From URL, which Azurite answers with 501
    seen: list[tuple[str, str]] = field(default_factory=list)
    answered: list[tuple[str, str, int]] = field(default_factory=list)  # what Azurite answered (forwarded requests)
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: ClientSession | None = None
    emulator: StagingEmulator | None = None

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def refuse_tags_on_writes(self, times: int = 10_000) -> Rule:
        """A write carrying x-ms-tags, refused as a hierarchical-namespace account refuses it."""
        return self.add(
            Rule(
                carries_tags,
                times=times,
                status=409,
                code="FeatureNotYetSupportedForHierarchicalNamespaceAccounts",
                message=HNS_MESSAGE,
                details={"FeatureName": "Blob Tags"},
            )
        )

    def refuse_tag_calls(self, times: int = 10_000) -> Rule:
        """Get/Set Blob Tags (comp=tags), refused as a hierarchical-namespace account refuses them."""
        return self.add(
            Rule(
                is_tags_call,
                times=times,
                status=400,
                code="InvalidQueryParameterValue",
                message=QUERY_MESSAGE,
                details={"QueryParameterName": "comp", "QueryParameterValue": "tags", "Reason": ""},
            )
        )

    def account_information(self, *, hns: bool = True, times: int = 10_000) -> Rule:
        """Get Account Information answered as a StorageV2 account with (or without) a hierarchical namespace."""
        return self.add(
            Rule(
                is_account_info,
                times=times,
                status=200,
                answer_headers={
                    "x-ms-sku-name": "Standard_LRS",
                    "x-ms-account-kind": "StorageV2",
                    "x-ms-is-hns-enabled": "true" if hns else "false",
                    "x-ms-request-id": "fault-proxy",
                    "x-ms-version": "2025-11-05",
                },
            )
        )

    def hierarchical_namespace(self) -> None:
        """Everything a Data Lake Storage Gen2 account says about index tags: account information, tag
        writes, tag calls."""
        self.account_information(hns=True)
        self.refuse_tags_on_writes()
        self.refuse_tag_calls()

    def immutable(self, code: str = "BlobImmutableDueToPolicy", times: int = 10_000) -> Rule:
        """A container under a time-based retention policy (or, ``BlobImmutableDueToLegalHold``, a legal
        hold): overwrites, deletes, Set Properties/Metadata and snapshots are refused; creates pass."""
        return self.add(
            Rule(changes_existing_blob, times=times, status=409, code=code, message=IMMUTABLE_MESSAGES[code])
        )

    def refuse_sync_copies(self, times: int = 1000) -> Rule:
        """Copy Blob From URL refused the way Azure refuses a source over 256 MiB."""
        return self.add(
            Rule(
                is_sync_copy,
                times=times,
                status=409,
                code="CannotVerifyCopySource",
                message="The source request body is too large and exceeds the maximum permissible limit (256MB).",
            )
        )

    def keep_copies_pending(self, delivery: str | None = None) -> None:
        """The next copy, and every read of copy status, say "pending" until :meth:`reset`.

        With ``delivery`` (sha256 of the export URL) only that export's copy stays pending.
        """
        self.add(Rule(is_copy, times=1, copy_status="pending"))
        self.add(Rule(is_properties, times=10_000, copy_status="pending", of_delivery=delivery))

    def source_gone(
        self, delivery: str | frozenset[str] | None = None, *, times: int = 10_000, description: str = "404"
    ) -> Rule:
        """Every read of copy status says the copy failed because its source is gone (404), as Azure
        reports a link revoked mid-copy; with ``delivery`` only for blobs holding that export (or one of them)."""
        return self.add(
            Rule(
                is_properties,
                times=times,
                copy_status="failed",
                copy_description=f"{description} CannotVerifyCopySource",
                of_delivery=delivery,
            )
        )

    def reset(self) -> None:
        self.rules.clear()
        self.seen.clear()
        self.answered.clear()

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
        self.emulator = StagingEmulator(self.upstream_port, self._session) if self.staging else None
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        rewrite: Rule | None = None
        taken: list[Rule] = []
        for rule in self.rules:
            if not rule.take(request):
                continue
            taken.append(rule)
            if rule.hold is not None:
                await asyncio.wait_for(rule.hold.wait(), timeout=60)
            if not rule.changes_answer:
                continue  # a rule that only holds or counts: the request goes on to the next rules
            if rule.after:
                rewrite = rule  # storage acts; the answer is replaced below
                break
            if rule.drop:
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError  # nothing more to send on a closed connection
            if rule.status is not None and rule.status < 300:
                return web.Response(status=rule.status, headers=rule.answer_headers)
            if rule.status is not None:
                return rule.error()
            rewrite = rule
            break
        assert self._session is not None
        if self.emulator is not None and self.emulator.handles(request):
            answer = await self.emulator.answer(request)
            self.answered.append((request.method, request.path, answer.status))
            for rule in taken:
                rule.done.set()
            if rewrite is not None and rewrite.after:
                return rewrite.error()
            return answer
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS - {"content-length"}}
        body = await request.read()
        url = URL(f"http://127.0.0.1:{self.upstream_port}{request.raw_path}", encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=body, skip_auto_headers=SKIP_AUTO_HEADERS
        ) as upstream:
            payload = await upstream.read()
            self.answered.append((request.method, request.path, upstream.status))
            for rule in taken:
                rule.done.set()
            if rewrite is not None and rewrite.after:
                return rewrite.error()  # storage did the work; the client hears an error
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            if rewrite is not None and rewrite.delay_answer and upstream.status < 300:
                await asyncio.sleep(rewrite.delay_answer)  # storage did the work; the answer comes late
            holds = rewrite is not None and _holds(rewrite.of_delivery, upstream.headers.get("x-ms-meta-delivery"))
            if (
                rewrite is not None
                and holds
                and rewrite.copy_status
                and "x-ms-copy-status" in {k.lower() for k in out_headers}
            ):
                out_headers = {k: v for k, v in out_headers.items() if not k.lower().startswith("x-ms-copy-status")}
                out_headers["x-ms-copy-status"] = rewrite.copy_status or "pending"
                if rewrite.copy_description:
                    out_headers["x-ms-copy-status-description"] = rewrite.copy_description
            if request.method == "HEAD":
                # A HEAD's Content-Length is the blob's size (x-ms-blob size), not this empty body's.
                response = web.Response(status=upstream.status, headers=out_headers)
                if "Content-Length" in upstream.headers:
                    response.headers["Content-Length"] = upstream.headers["Content-Length"]
                return response
            return web.Response(status=upstream.status, body=payload, headers=out_headers)
