"""The operator command line's records in Application Insights, when it is told where.

An operator's ``fail``, ``check --repair`` and ``replay-poison`` log one record on the ``receiver``
logger (ERROR when a delivery is failed for good). With ``APPLICATIONINSIGHTS_CONNECTION_STRING``
set, the same records also go to Application Insights, so the receiver's alert and its queries see
them beside the app's own. Only this process configures the exporter (:func:`configure`, called by
``python -m ops``'s entry point): the function app never does, the Functions worker configures it
there, and a second configuration sends every record twice.

Application Insights takes telemetry only with an Entra ID token (infra/ turns local auth off): the
records are sent as the operator (DefaultAzureCredential: ``az login``), who needs Monitoring
Metrics Publisher on the Application Insights resource, or as APPLICATIONINSIGHTS_AUTHENTICATION_STRING
names. An ``http://`` ingestion endpoint (a local stand-in) gets no token: azure-core sends tokens
over TLS only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

CONNECTION_VARIABLE = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AUTHENTICATION_VARIABLE = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
SERVICE_NAME = "smartdocumentor-ops"  # cloud_RoleName of the command line's records
LOGGER = "receiver"  # ops.commands logs there, as the app does: the same alert filter selects both

log = logging.getLogger("ops.telemetry")


def _ingestion_endpoint(connection_string: str) -> str:
    for part in connection_string.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "ingestionendpoint":
            return value.strip()
    return "https://"  # the exporter's default endpoint is https


def _credential(connection_string: str, environ: Mapping[str, str]) -> Any:
    if environ.get(AUTHENTICATION_VARIABLE) or not _ingestion_endpoint(connection_string).lower().startswith("https"):
        return None  # the exporter reads the authentication string itself; no token over plain http
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def configure(environ: Mapping[str, str]) -> Callable[[], None] | None:
    """Send the ``receiver`` logger's records to Application Insights when ``environ`` names one.
    Returns the flush to call before the process exits (None: nothing was configured)."""
    connection_string = (environ.get(CONNECTION_VARIABLE) or "").strip()
    if not connection_string:
        return None
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.sdk.resources import Resource

    options: dict[str, Any] = {
        "connection_string": connection_string,
        "logger_name": LOGGER,
        "resource": Resource.create({"service.name": SERVICE_NAME}),
        "disable_tracing": True,  # the records are what the alert reads; no spans, no metrics
        "disable_metrics": True,
        "enable_live_metrics": False,
        "enable_performance_counters": False,
        "disable_offline_storage": True,  # a short-lived process: what is not sent at exit is reported
    }
    credential = _credential(connection_string, environ)
    if credential is not None:
        options["credential"] = credential
    try:
        configure_azure_monitor(**options)
    except Exception as exc:  # telemetry must never stop an operator's command
        log.warning(
            "records are not sent to Application Insights (%s): check %s", type(exc).__name__, CONNECTION_VARIABLE
        )
        return None

    def flush() -> None:
        provider: Any = get_logger_provider()
        try:
            provider.force_flush()
            provider.shutdown()
        except Exception as exc:
            log.warning("could not send the records to Application Insights (%s)", type(exc).__name__)
        # Sent: the distro's handler must not flush again at interpreter exit (logging.shutdown), where
        # its flush starts a thread and prints a traceback to the operator's terminal.
        logger = logging.getLogger(LOGGER)
        for handler in list(logger.handlers):
            if type(handler).__module__.startswith("opentelemetry"):
                logger.removeHandler(handler)
                handler.flushOnClose = False  # type: ignore[attr-defined]

    return flush
