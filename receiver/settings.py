"""Application settings, read once from the environment (app settings in Azure).

Every problem is reported as one :class:`SettingsError` whose message names the
setting, because the operator fixes it in the portal by that name.
"""

from __future__ import annotations

import re
import string
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Placeholders BLOB_NAME_TEMPLATE may use (contract section 5).
TEMPLATE_PLACEHOLDERS = frozenset(
    {"workspaceId", "taskId", "taskNumber", "displayName", "fileName", "ext", "yyyy", "mm", "dd"}
)
# Payload fields TAG_FIELDS may name: the scalar fields of the notification.
TAGGABLE_FIELDS = frozenset(
    {
        "taskId",
        "taskNumber",
        "workspaceId",
        "totalPages",
        "displayName",
        "exportedFileContentType",
        "lastCheckoutByUserName",
        "lastCheckedOutBy",
        "lastIntegratedBy",
        "lastIntegratedByUserName",
    }
)
MAX_TAGS = 10
SYNC_COPY_LIMIT_MIB = 256  # the service's limit for a synchronous copy (Copy Blob From URL)
_CONTAINER_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$")


class SettingsError(Exception):
    """A setting is missing or invalid; ``setting`` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """The receiver's configuration (contract section 5)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    destination_connection_string: SecretStr | None = None
    destination_account_url: str | None = None
    destination_container: str = "smartdocumentor"
    blob_name_template: str = "{workspaceId}/{taskId}/{fileName}"
    allowed_source_hosts: Annotated[tuple[str, ...], NoDecode] = ("*.blob.core.windows.net",)
    allow_http_sources: bool = False
    copy_wait_seconds: float = Field(default=20.0, ge=0, le=30)
    # Copy Blob From URL takes sources up to 256 MiB; 0 = always asynchronous.
    sync_copy_max_mib: int = Field(default=SYNC_COPY_LIMIT_MIB, ge=0, le=SYNC_COPY_LIMIT_MIB)
    reconcile_schedule: str = "0 */10 * * * *"
    reconcile_after_minutes: float = Field(default=10.0, ge=0, le=7 * 24 * 60)
    tag_fields: Annotated[tuple[str, ...], NoDecode] = ("taskId", "taskNumber", "workspaceId")
    write_manifest: bool = True
    max_body_bytes: int = Field(default=65536, ge=1024, le=100 * 1024 * 1024)

    @field_validator("destination_connection_string", "destination_account_url", mode="before")
    @classmethod
    def _blank_is_missing(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("destination_account_url")
    @classmethod
    def _account_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:\d+)?", value):
            raise ValueError("must look like https://<account>.blob.core.windows.net (no path, no query)")
        return value

    @field_validator("destination_container")
    @classmethod
    def _container(cls, value: str) -> str:
        if not _CONTAINER_NAME.fullmatch(value):
            raise ValueError(
                "must be 3-63 lowercase letters, digits and single hyphens, starting with a letter or digit"
            )
        return value

    @field_validator("blob_name_template")
    @classmethod
    def _template(cls, value: str) -> str:
        names: set[str] = set()
        try:
            for _literal, field, spec, conversion in string.Formatter().parse(value):
                if field is None:
                    continue
                if field not in TEMPLATE_PLACEHOLDERS or spec or conversion:
                    raise ValueError(
                        f"unknown placeholder {{{field}}}; use only " + ", ".join(sorted(TEMPLATE_PLACEHOLDERS))
                    )
                names.add(field)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        segments = value.split("/")
        if "taskId" in names:
            # Two different (workspaceId, taskId) pairs must never share a name: each id is a path segment
            # of its own (made safe one-to-one), so nothing written next to it can blur where it ends.
            if "{taskId}" not in segments or "{workspaceId}" not in segments:
                raise ValueError(
                    "must have {workspaceId} and {taskId} each as a whole path segment "
                    "(e.g. {workspaceId}/{taskId}/{fileName}) so two documents never share a name"
                )
        elif not {"workspaceId", "taskNumber"} <= names:
            raise ValueError(
                "must contain {workspaceId}/{taskId} (or both {workspaceId} and {taskNumber}) "
                "so each document has its own name"
            )
        if "{fileName}" not in segments[-1] and "{ext}" not in segments[-1]:
            raise ValueError(
                "must end with a segment holding {fileName} or {ext}, so a file is never named like a manifest"
            )
        if value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError("must not start or end with '/' or contain '//'")
        if value.count("/") > 20:
            raise ValueError("has too many '/' segments (at most 20)")
        return value

    _split_hosts = field_validator("allowed_source_hosts", "tag_fields", mode="before")(_split_csv)

    @field_validator("allowed_source_hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        hosts = tuple(h.lower() for h in value)
        if not hosts:
            raise ValueError("must list at least one host")
        for host in hosts:
            if not _HOST_PATTERN.fullmatch(host):
                raise ValueError(f"{host!r} is not a host, host:port or *.suffix pattern")
        return hosts

    @field_validator("tag_fields")
    @classmethod
    def _tag_fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [f for f in value if f not in TAGGABLE_FIELDS]
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}; use fields of " + ", ".join(sorted(TAGGABLE_FIELDS)))
        if len(value) > MAX_TAGS:
            raise ValueError(f"names more than {MAX_TAGS} fields (Azure allows {MAX_TAGS} tags per blob)")
        return tuple(dict.fromkeys(value))

    @field_validator("reconcile_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        # NCRONTAB as the Functions host reads it: six fields, seconds first.
        if len(value.split()) != 6:
            raise ValueError("must be an NCRONTAB expression with six fields, e.g. '0 */10 * * * *'")
        return value

    @model_validator(mode="after")
    def _exactly_one_destination(self) -> Settings:
        if (self.destination_connection_string is None) == (self.destination_account_url is None):
            raise SettingsError(
                "DESTINATION_CONNECTION_STRING",
                "Set exactly one of DESTINATION_CONNECTION_STRING (key-based or Azurite) and "
                "DESTINATION_ACCOUNT_URL (managed identity).",
            )
        return self


def load_settings() -> Settings:
    """Read and validate the settings; raise :class:`SettingsError` naming the first bad one."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        setting = str(error["loc"][0]).upper() if error["loc"] else "settings"
        cause = error.get("ctx", {}).get("error")
        reason = str(cause) if cause is not None else error["msg"]
        raise SettingsError(setting, f"The app setting {setting} is invalid: {reason}.") from None
