"""The Functions host's own storage, as the reconciliation reads it: how many verification messages
wait in the poison queue (Azure Monitor has no per-queue metric for it).

The host storage is the one the queue trigger uses (``AzureWebJobsStorage``): a connection string
locally, the app's managed identity in Azure (``AzureWebJobsStorage__queueServiceUri`` or
``__accountName``, ``__clientId`` for a user-assigned identity). Read only; never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .store import CONNECTION_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS, RETRY

log = logging.getLogger("receiver.hostqueue")

PEEK_LIMIT = 32  # Peek Messages returns at most 32


async def queue_depth(queue: str, environ: Mapping[str, str]) -> int | None:
    """The approximate number of messages in ``queue`` of the host storage, None when unknown."""
    from azure.core.exceptions import AzureError
    from azure.storage.queue.aio import QueueClient

    options: dict[str, Any] = {
        **RETRY,
        "connection_timeout": CONNECTION_TIMEOUT_SECONDS,
        "read_timeout": READ_TIMEOUT_SECONDS,
    }
    credential: Any = None
    connection_string = environ.get("AzureWebJobsStorage") or None
    try:
        if connection_string is not None:
            if connection_string.strip().lower() == "usedevelopmentstorage=true":
                connection_string = (
                    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
                    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
                )
            client = QueueClient.from_connection_string(connection_string, queue, **options)
        else:
            account = environ.get("AzureWebJobsStorage__accountName")
            url = environ.get("AzureWebJobsStorage__queueServiceUri") or (
                f"https://{account}.queue.core.windows.net" if account else None
            )
            if url is None:
                return None
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential(
                managed_identity_client_id=environ.get("AzureWebJobsStorage__clientId") or None
            )
            client = QueueClient(url, queue, credential=credential, **options)
    except ValueError:
        log.warning("the host storage setting AzureWebJobsStorage is not a valid connection string")
        return None
    try:
        async with client:
            try:
                properties = await client.get_queue_properties()
                return int(properties.approximate_message_count or 0)
            except AzureError as exc:
                if getattr(exc, "status_code", None) == 404:
                    return 0  # no poison queue yet: nothing was ever poisoned
                # Without the metadata permission, peeking still counts up to PEEK_LIMIT.
                peeked = await client.peek_messages(max_messages=PEEK_LIMIT)
                return len(peeked)
    except Exception as exc:  # a report, never a reason to fail the run
        log.warning("could not read the depth of the queue %s (%s)", queue, type(exc).__name__)
        return None
    finally:
        if credential is not None:
            await credential.close()
