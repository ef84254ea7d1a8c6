"""Where the command line connects: the customer's container (through the receiver's Storage seam) and
the Functions host's storage queues. Options win over environment variables; secrets are read from
the environment at run time, never shown as defaults in ``--help`` nor repeated in a message."""

from __future__ import annotations

import argparse
import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from receiver.settings import Settings, SettingsError
from receiver.storage import Storage

from .queues import AzureQueue

# The queue clients' retries and timeouts: short, like the receiver's own storage calls.
RETRY: dict[str, Any] = {"initial_backoff": 0.2, "increment_base": 1.5, "retry_total": 3, "random_jitter_range": 0.3}
CONNECTION_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 10

DEFAULT_CONTAINER = "smartdocumentor"
# Azurite's well-known development account on its default queue port (what the Functions tools mean
# by UseDevelopmentStorage=true, as in local.settings.json.example).
DEVELOPMENT_STORAGE = "UseDevelopmentStorage=true"


class ConfigError(Exception):
    """The command line cannot tell where to connect, or a connection setting is invalid (exit code 3)."""


class UsageError(Exception):
    """An option's value has the wrong shape (exit code 2, one line, the value never repeated)."""


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


# The function app's settings ops reads from its environment: a replay's dry run computes the plan the
# queue function will compute (blob name, whether its link is accepted), and pending's default age.
APP_SETTINGS = (
    "BLOB_NAME_TEMPLATE",
    "ALLOWED_SOURCE_HOSTS",
    "ALLOW_HTTP_SOURCES",
    "SYNC_COPY_MAX_MIB",
    "TAG_FIELDS",
    "WRITE_MANIFEST",
    "MAX_BODY_BYTES",
    "RECONCILE_AFTER_MINUTES",
)


def check_connection_string(value: str, which: str) -> None:
    """Refuse a connection string that cannot work, naming what is wrong with it (never its value).
    A malformed account key is a key problem, not a sign-in or managed-identity one."""
    if value.strip() == DEVELOPMENT_STORAGE:
        return
    if value.strip().lower().startswith(("https://", "http://")):
        raise ConfigError(
            f"The {which} connection string is a link, not a connection string: paste the storage account's "
            "connection string (portal: Access keys), or pass the account's URL with --account-url and sign in "
            "(az login)."
        )
    pairs = [part.split("=", 1) for part in value.strip().strip(";").split(";") if part.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ConfigError(f"The {which} connection string is not a valid storage connection string.")
    fields = {name.strip().lower(): text.strip() for name, text in pairs}
    key = fields.get("accountkey")
    if key is not None:
        try:
            decoded = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if not decoded:
            raise ConfigError(
                f"The account key in the {which} connection string is malformed (it is not base64): copy the "
                "connection string again from the storage account's Access keys. This is a problem with the key, "
                "not with sign-in, roles or a managed identity."
            )
    known = ("accountkey", "sharedaccesssignature", "accountname")
    if not any(name in fields for name in known) and not any(name.endswith("endpoint") for name in fields):
        raise ConfigError(f"The {which} connection string is not a valid storage connection string.")


def operator_settings(args: argparse.Namespace, environ: Mapping[str, str], *, need_destination: bool) -> Settings:
    """The receiver's Settings for the operator: the destination from the options (or environment),
    and the app settings that shape a delivery's plan from the environment."""
    connection_string: str | None = args.connection_string
    account_url: str | None = args.account_url
    if connection_string is None and account_url is None:
        connection_string = environ.get("DESTINATION_CONNECTION_STRING") or None
        account_url = None if connection_string else environ.get("DESTINATION_ACCOUNT_URL") or None
    if connection_string is None and account_url is None:
        if need_destination:
            raise ConfigError(
                "No destination: pass --connection-string or --account-url (signed in with az login), "
                "or set DESTINATION_CONNECTION_STRING or DESTINATION_ACCOUNT_URL."
            )
        connection_string = DEVELOPMENT_STORAGE  # never opened: only the plan's settings are used
    if connection_string is not None:
        check_connection_string(connection_string, "destination")
    container = args.container or environ.get("DESTINATION_CONTAINER") or DEFAULT_CONTAINER
    values: dict[str, Any] = {name.lower(): environ[name] for name in APP_SETTINGS if environ.get(name)}
    values.update(
        destination_connection_string=connection_string,
        destination_account_url=account_url,
        destination_container=container,
    )
    try:
        return _GivenSettings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        cause = error.get("ctx", {}).get("error")
        reason = str(cause) if cause is not None else error["msg"]
        hint = ""
        valid_lowercase = re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", container.lower())
        if field == "destination_container" and container != container.lower() and valid_lowercase:
            hint = f" Container names are lowercase: --container {container.lower()}?"
        raise ConfigError(f"{_OPTION_OF_FIELD.get(field, field.upper())} is invalid: {reason}.{hint}") from None
    except SettingsError as exc:
        raise ConfigError(exc.message) from None


def open_storage(settings: Settings) -> Storage:
    """The receiver's own Azure implementation of the Storage seam (its retries, error kinds and
    conditional writes): the one place the command line opens the customer's storage."""
    from receiver.store import AzureStorage  # the Azure SDK, imported only by commands that need storage

    storage: Storage = AzureStorage.open(settings)
    return storage


async def close_storage(storage: Storage) -> None:
    close = getattr(storage, "close", None)
    if close is not None:
        result = close()
        if hasattr(result, "__await__"):
            await result


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

    def pair(self, name: str) -> tuple[AzureQueue, AzureQueue]:
        """The verification queue ``name`` and its poison queue."""
        return AzureQueue(self.queue(name)), AzureQueue(self.queue(f"{name}-poison"))

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
        check_connection_string(connection_string, "host storage")
        return HostQueues(connection_string=connection_string, queue_url=None)
    if queue_url is None:
        raise ConfigError(
            "No host storage: pass --host-connection-string or --host-queue-url (signed in with az login), "
            "or set AzureWebJobsStorage or AzureWebJobsStorage__queueServiceUri."
        )
    if not queue_url.startswith("https://") or "?" in queue_url or "#" in queue_url:
        # Signed in as you, the SDK sends a token only over https; a query would be a SAS to keep out of sight.
        raise UsageError("--host-queue-url must look like https://<account>.queue.core.windows.net (https, no query)")
    return HostQueues(connection_string=None, queue_url=queue_url.rstrip("/"))
