"""A small local host for the function app when Azure Functions Core Tools is not installed.

Dev-only (excluded from deployment). It serves every HTTP function the app registers, at
the same routes under ``/api``, by calling the user function with a real ``func.HttpRequest``;
it writes queue output bindings to the host storage queue (base64, like the Functions host),
and runs queue-triggered functions on those messages, with host.json's ``maxDequeueCount``
and ``visibilityTimeout`` and a ``<queue>-poison`` queue. Timer functions run on their schedule
when it is every N minutes (``0 */N * * * *`` with N dividing 60: the reconciliation's default), and once on
``POST /admin/functions/<name>`` (body ``{}``), as the Functions host runs a non-HTTP function on
demand. Function keys are not enforced, as with ``func start``.

    python -m devtools.localhost --port 7071 [--settings local.settings.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from azure.functions.queue import QueueMessage

log = logging.getLogger("devtools.localhost")
ROOT = Path(__file__).resolve().parent.parent


class Out(func.Out[str]):
    def __init__(self) -> None:
        self.value: str | None = None

    def set(self, val: str) -> None:
        self.value = val

    def get(self) -> str:
        return self.value or ""


def load_local_settings(path: Path) -> None:
    """Put local.settings.json's Values into the environment (existing variables win)."""
    if not path.exists():
        return
    values = json.loads(path.read_text()).get("Values", {})
    for name, value in values.items():
        os.environ.setdefault(name, str(value))


def _timespan_seconds(text: str, default: float) -> float:
    match = re.fullmatch(r"(\d+):(\d+):(\d+)", text or "")
    if not match:
        return default
    hours, minutes, seconds = (int(part) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass
class QueueOptions:
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    poll_seconds: float = 1.0

    @classmethod
    def from_host_json(cls, path: Path) -> QueueOptions:
        queues = json.loads(path.read_text()).get("extensions", {}).get("queues", {})
        return cls(
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            visibility_timeout=_timespan_seconds(queues.get("visibilityTimeout", ""), 0.0),
        )


def _connection(name: str) -> str:
    value = os.environ.get(name, "")
    if value == "UseDevelopmentStorage=true":
        # Azurite's well-known account on its default ports.
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
        )
    if not value:
        raise RuntimeError(f"app setting {name} (queue connection) is not set")
    return value


class LocalHost:
    """Serves one FunctionApp: HTTP routes on aiohttp, queue triggers polled from host storage."""

    def __init__(self, app: func.FunctionApp, queue_options: QueueOptions) -> None:
        self.functions = list(app.get_functions())
        self.queue_options = queue_options
        self._queue_clients: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- queues --------------------------------------------------------------------------

    def _queue(self, connection: str, name: str) -> Any:
        from azure.storage.queue.aio import QueueClient

        key = f"{connection}|{name}"
        if key not in self._queue_clients:
            self._queue_clients[key] = QueueClient.from_connection_string(_connection(connection), name)
        return self._queue_clients[key]

    async def _send(self, connection: str, name: str, text: str) -> None:
        queue = self._queue(connection, name)
        with contextlib.suppress(Exception):
            await queue.create_queue()
        await queue.send_message(base64.b64encode(text.encode()).decode())

    async def _poll(self, function: Any) -> None:
        trigger = function.get_trigger()
        queue = self._queue(trigger.connection, trigger.queue_name)
        poison = self._queue(trigger.connection, f"{trigger.queue_name}-poison")
        with contextlib.suppress(Exception):
            await queue.create_queue()
        user_function = function.get_user_function()
        visibility = max(1, int(self.queue_options.visibility_timeout) or 30)
        while True:
            async for message in queue.receive_messages(visibility_timeout=visibility, max_messages=16):
                body = base64.b64decode(message.content)
                try:
                    await user_function(
                        QueueMessage(  # type: ignore[no-untyped-call]  # the worker's own class, untyped
                            id=message.id,
                            body=body,
                            pop_receipt=message.pop_receipt,
                            dequeue_count=message.dequeue_count,
                        )
                    )
                except Exception as exc:  # the host's behaviour: retry later, then poison
                    log.warning(
                        "%s failed (attempt %s): %s",
                        function.get_function_name(),
                        message.dequeue_count,
                        type(exc).__name__,
                    )
                    if message.dequeue_count >= self.queue_options.max_dequeue_count:
                        with contextlib.suppress(Exception):
                            await poison.create_queue()
                        await poison.send_message(message.content)
                        await queue.delete_message(message)
                    continue
                await queue.delete_message(message)
            await asyncio.sleep(self.queue_options.poll_seconds)

    # --- timers --------------------------------------------------------------------------

    async def _run_timer(self, function: Any) -> None:
        from azure.functions.timer import TimerRequest

        try:
            await function.get_user_function()(TimerRequest(past_due=False))
        except Exception as exc:  # the host's behaviour: logged, the next occurrence runs anyway
            log.warning("%s failed: %s", function.get_function_name(), type(exc).__name__)

    async def _every(self, function: Any, minutes: int) -> None:
        while True:
            await asyncio.sleep(minutes * 60 - time.time() % (minutes * 60))  # at the schedule's own minutes
            await self._run_timer(function)

    def _admin_handler(self, function: Any) -> Any:
        async def handle(_: web.Request) -> web.Response:
            task = asyncio.create_task(self._run_timer(function))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)  # kept only while it runs (stopped at shutdown)
            return web.Response(status=202)

        return handle

    # --- HTTP ----------------------------------------------------------------------------

    def _handler(self, function: Any) -> Any:
        user_function = function.get_user_function()
        outputs = [b for b in function.get_bindings() if b.type == "queue"]

        async def handle(request: web.Request) -> web.Response:
            http_request = func.HttpRequest(
                method=request.method,
                url=str(request.url),
                headers=dict(request.headers),
                params=dict(request.query),
                route_params=dict(request.match_info),
                body=await request.read(),
            )
            out_values = {binding.name: Out() for binding in outputs}
            result = user_function(http_request, **out_values)
            if asyncio.iscoroutine(result):
                result = await result
            for binding in outputs:
                value = out_values[binding.name].value
                if value is not None:
                    await self._send(binding.connection, binding.queue_name, value)
            response: func.HttpResponse = result
            headers = dict(response.headers)
            headers["Content-Type"] = f"{response.mimetype}; charset={response.charset}"
            return web.Response(status=response.status_code, body=response.get_body(), headers=headers)

        return handle

    def web_app(self) -> web.Application:
        application = web.Application(client_max_size=100 * 1024 * 1024)
        for function in self.functions:
            trigger: Any = function.get_trigger()
            if trigger.type == "timerTrigger":
                name = function.get_function_name()
                application.router.add_post(f"/admin/functions/{name}", self._admin_handler(function))
            if trigger.type != "httpTrigger":
                continue
            route = "/api/" + str(trigger.route).lstrip("/")
            methods = [getattr(m, "value", m) for m in (trigger.methods or ["GET", "POST"])]
            for method in methods:
                application.router.add_route(method, route, self._handler(function))
        application.on_startup.append(self._start_queues)
        application.on_cleanup.append(self._stop_queues)
        return application

    async def _start_queues(self, _: web.Application) -> None:
        for function in self.functions:
            trigger: Any = function.get_trigger()
            kind = getattr(trigger, "type", None)
            if kind == "queueTrigger":
                self._tasks.append(asyncio.create_task(self._poll(function)))
            minutes = every_minutes(str(getattr(trigger, "schedule", ""))) if kind == "timerTrigger" else None
            if minutes is not None:
                self._tasks.append(asyncio.create_task(self._every(function, minutes)))

    async def _stop_queues(self, _: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in self._queue_clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        from receiver.runtime import RUNTIME

        await RUNTIME.close()


def every_minutes(schedule: str) -> int | None:
    """N for an NCRONTAB schedule ``0 */N * * * *`` (``%SETTING%`` read from the environment), else None."""
    if schedule.startswith("%") and schedule.endswith("%"):
        schedule = os.environ.get(schedule.strip("%"), "")
    found = re.fullmatch(r"0 \*/(\d+) \* \* \* \*", schedule.strip())
    minutes = int(found.group(1)) if found else 0
    return minutes if minutes > 0 and 60 % minutes == 0 else None  # then the clock's multiples are the cron's


class PathOnlyAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line without the query: the function key (``?code=``) never reaches the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.3fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )


async def serve(port: int, settings_path: Path) -> None:
    load_local_settings(settings_path)
    from function_app import app  # after the settings are in the environment
    from receiver.settings import check_at_start

    check_at_start(logging.getLogger("receiver"))  # as function_app.py does inside the Functions worker
    host = LocalHost(app, QueueOptions.from_host_json(ROOT / "host.json"))
    runner = web.AppRunner(host.web_app(), access_log=log, access_log_class=PathOnlyAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"Local host serving the function app on http://127.0.0.1:{port}/api/ (Ctrl-C stops it)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--settings", type=Path, default=ROOT / "local.settings.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    asyncio.run(serve(args.port, args.settings))


if __name__ == "__main__":
    main()
