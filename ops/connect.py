"""Where the command line connects: the customer's container (through the receiver's BlobStore) and
the Functions host's storage queues. Options win over environment variables; secrets are read from
the environment at run time, never shown as defaults in ``--help`` nor repeated in a message."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from receiver.settings import Settings, SettingsError
from receiver.store import CONNECTION_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS, RETRY, BlobStore

DEFAULT_CONTAINER = "smartdocumentor"
# Azurite's well-known development account on its default queue port (what the Functions tools mean
# by UseDevelopmentStorage=true, as in local.settings.json.example).
DEVELOPMENT_STORAGE = "UseDevelopmentStorage=true"


class ConfigError(Exception):
    """The command line cannot tell where to connect, or a value is invalid (exit code 3)."""


class _GivenSettings(Settings):
    """The receiver's Settings built from the command line's values alone: the operator's
    environment may hold unrelated app settings, which must not decide (or break) anything here."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


_OPTION_OF_FIELD = {
    "destination_connection_string": "--connection-string",
    "destination_account_url": "--account-url",
    "destination_container": "--container",
}


def add_destination_options(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    """``default``: argparse.SUPPRESS on a command's own copy of the options, so that a value given
    before the command (``python -m ops --container X pending``) is not reset by the command's parser."""
    group = parser.add_argument_group("destination (the customer's storage)")
    group.add_argument(
        "--connection-string",
        metavar="CS",
        default=default,
        help="storage connection string (default: env DESTINATION_CONNECTION_STRING)",
    )
    group.add_argument(
        "--account-url",
        metavar="URL",
        default=default,
        help="https://<account>.blob.core.windows.net, signed in with DefaultAzureCredential "
        "(az login, environment, managed identity; default: env DESTINATION_ACCOUNT_URL)",
    )
    group.add_argument(
        "--container",
        default=default,
        help=f"the receiver's container (default: env DESTINATION_CONTAINER, else {DEFAULT_CONTAINER})",
    )


def open_store(args: argparse.Namespace, environ: Mapping[str, str]) -> BlobStore:
    """The receiver's own BlobStore (its retry policy, error kinds and conditional writes)."""
    connection_string: str | None = args.connection_string
    account_url: str | None = args.account_url
    if connection_string is None and account_url is None:
        connection_string = environ.get("DESTINATION_CONNECTION_STRING") or None
        account_url = None if connection_string else environ.get("DESTINATION_ACCOUNT_URL") or None
    if connection_string is None and account_url is None:
        raise ConfigError(
            "No destination: pass --connection-string or --account-url (signed in with az login), "
            "or set DESTINATION_CONNECTION_STRING or DESTINATION_ACCOUNT_URL."
        )
    container = args.container or environ.get("DESTINATION_CONTAINER") or DEFAULT_CONTAINER
    try:
        settings = _GivenSettings(
            destination_connection_string=connection_string,
            destination_account_url=account_url,
            destination_container=container,
        )
        return BlobStore.open(settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        cause = error.get("ctx", {}).get("error")
        reason = str(cause) if cause is not None else error["msg"]
        raise ConfigError(f"{_OPTION_OF_FIELD.get(field, field)} is invalid: {reason}.") from None
    except SettingsError as exc:
        if exc.setting == "DESTINATION_CONNECTION_STRING":
            raise ConfigError("The destination connection string is not a valid storage connection string.") from None
        raise ConfigError(exc.message) from None


# --- the Functions host's storage (queues) ---------------------------------------------------


def add_host_options(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    group = parser.add_argument_group("host storage (the function app's own account, where its queues are)")
    group.add_argument(
        "--host-connection-string",
        metavar="CS",
        default=default,
        help="its connection string (default: env AzureWebJobsStorage)",
    )
    group.add_argument(
        "--host-queue-url",
        metavar="URL",
        default=default,
        help="https://<account>.queue.core.windows.net, signed in with DefaultAzureCredential "
        "(default: env AzureWebJobsStorage__queueServiceUri, or AzureWebJobsStorage__accountName)",
    )


def host_configured(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """Was the host storage given (option or environment)? ``check`` looks at the queues only then."""
    return bool(
        args.host_connection_string
        or args.host_queue_url
        or environ.get("AzureWebJobsStorage")
        or environ.get("AzureWebJobsStorage__queueServiceUri")
        or environ.get("AzureWebJobsStorage__accountName")
    )


def destination_configured(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    return bool(
        args.connection_string
        or args.account_url
        or environ.get("DESTINATION_CONNECTION_STRING")
        or environ.get("DESTINATION_ACCOUNT_URL")
    )


def _development_storage() -> str:
    from devtools.azurite import DEV_ACCOUNT, DEV_KEY, connection_string

    return connection_string(DEV_ACCOUNT, DEV_KEY, 10000, 10001)


class HostQueues:
    """aio QueueClients on the host storage, with the receiver's short retries; close when done."""

    def __init__(self, *, connection_string: str | None, queue_url: str | None) -> None:
        self._connection_string = connection_string
        self._queue_url = queue_url
        # The queue client builds its aio ExponentialRetry from these keyword arguments.
        self._options: dict[str, Any] = {
            **RETRY,
            "connection_timeout": CONNECTION_TIMEOUT_SECONDS,
            "read_timeout": READ_TIMEOUT_SECONDS,
        }
        self._credential: Any = None
        self._clients: list[Any] = []

    def queue(self, name: str) -> Any:
        from azure.storage.queue.aio import QueueClient

        if self._connection_string is not None:
            try:
                client = QueueClient.from_connection_string(self._connection_string, name, **self._options)
            except ValueError:
                raise ConfigError(
                    "The host storage connection string is not a valid storage connection string."
                ) from None
        else:
            if self._credential is None:
                from azure.identity.aio import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            client = QueueClient(str(self._queue_url), name, credential=self._credential, **self._options)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        if self._credential is not None:
            await self._credential.close()


def open_host_queues(args: argparse.Namespace, environ: Mapping[str, str]) -> HostQueues:
    connection_string: str | None = args.host_connection_string
    queue_url: str | None = args.host_queue_url
    if connection_string is None and queue_url is None:
        connection_string = environ.get("AzureWebJobsStorage") or None
        if connection_string is None:
            account = environ.get("AzureWebJobsStorage__accountName")
            queue_url = environ.get("AzureWebJobsStorage__queueServiceUri") or (
                f"https://{account}.queue.core.windows.net" if account else None
            )
    if connection_string is not None:
        if connection_string.strip() == DEVELOPMENT_STORAGE:
            connection_string = _development_storage()
        return HostQueues(connection_string=connection_string, queue_url=None)
    if queue_url is None:
        raise ConfigError(
            "No host storage: pass --host-connection-string or --host-queue-url (signed in with az login), "
            "or set AzureWebJobsStorage or AzureWebJobsStorage__queueServiceUri."
        )
    if not queue_url.startswith(("https://", "http://")) or "?" in queue_url:
        raise ConfigError("--host-queue-url must look like https://<account>.queue.core.windows.net (no query).")
    return HostQueues(connection_string=None, queue_url=queue_url.rstrip("/"))
