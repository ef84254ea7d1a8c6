"""Azure Functions entry points (Python v2 model): routes only; the work is in receiver/."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.functions as func

from receiver.outcome import Outcome
from receiver.runtime import RUNTIME
from receiver.settings import check_at_start, loaded_by_functions_worker
from receiver.webhook import check_health, handle_delivery

VERIFICATION_QUEUE = "smartdocumentor-copy-verifications"

app = func.FunctionApp()

# Settings checked when the host first loads the app: a bad one is one ERROR naming it, now rather than at
# the first request (never raised: the app still loads and answers 500 misconfigured). Tools that import
# this module for a constant (ops) stay quiet; devtools/localhost.py calls the same check.
if loaded_by_functions_worker():
    check_at_start(logging.getLogger("receiver"))


def _http(result: Outcome) -> func.HttpResponse:
    return func.HttpResponse(
        result.json(), status_code=result.status_code, mimetype="application/json", charset="utf-8"
    )


@app.function_name("anonymization_webhook")
@app.route(route="smartdocumentor/anonymization", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@app.queue_output(arg_name="verification", queue_name=VERIFICATION_QUEUE, connection="AzureWebJobsStorage")
async def anonymization_webhook(req: func.HttpRequest, verification: func.Out[str]) -> func.HttpResponse:
    result = await handle_delivery(req.get_body(), dict(req.headers), runtime=RUNTIME, now=datetime.now(UTC))
    if result.verification is not None:
        verification.set(result.verification)
    return _http(result)


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return _http(await check_health(runtime=RUNTIME))


@app.function_name("verify_pending_copy")
@app.queue_trigger(arg_name="message", queue_name=VERIFICATION_QUEUE, connection="AzureWebJobsStorage")
async def verify_pending_copy(message: func.QueueMessage) -> None:
    # Imported here: only deliveries that outlived their HTTP call pay for it on a cold start.
    from receiver.verification import verify_copy

    # Raises only while the copy is still running, so the host tries again; final outcomes return.
    await verify_copy(
        message.get_body(), runtime=RUNTIME, now=datetime.now(UTC), dequeue_count=message.dequeue_count or 1
    )


@app.function_name("reconcile_deliveries")
@app.timer_trigger(arg_name="timer", schedule="%RECONCILE_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def reconcile_deliveries(timer: func.TimerRequest) -> None:
    # Catches what the verification queue missed (a lost or poisoned message); see receiver/reconciliation.py.
    from receiver.reconciliation import reconcile_run

    await reconcile_run(runtime=RUNTIME, now=datetime.now(UTC))
