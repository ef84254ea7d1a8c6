"""Application settings, read once from the environment (app settings in Azure).

Every problem is reported as one :class:`SettingsError` whose message names the
setting, because the operator fixes it in the portal by that name.
"""

from __future__ import annotations

import itertools
import logging
import re
import string
import sys
import unicodedata
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .payload import FIELDS

# Placeholders BLOB_NAME_TEMPLATE may use (docs/reference.md, "Configuration").
TEMPLATE_PLACEHOLDERS = frozenset(
    {"workspaceId", "taskId", "taskNumber", "displayName", "fileName", "ext", "yyyy", "mm", "dd"}
)
# Payload fields TAG_FIELDS may name: the scalar fields of the notification (not the link, the dates, the metadata).
TAGGABLE_FIELDS = frozenset(FIELDS) - {"exportedFileUrl", "exportedFileExpiresOn", "lastCheckedOutUntil", "metadata"}
MAX_TAGS = 10
# A workspaceId or taskId segment of a blob name is at most this long (receiver/plan.py, identity_segment).
MAX_ID_SEGMENT = 128
# The longest file extension a name gets (receiver/plan.py, extension_for).
MAX_EXTENSION = 10
# What a template must leave for the rest of a name, the ids at their longest: the display name and the
# file name's stem shortened to a character each, the longest extension, a manifest's ".json" and the
# "~" and hash that keep a name out of the records' folder. A name is never cut through an id.
_LONGEST_IDS = {
    "workspaceId": "w" * MAX_ID_SEGMENT,
    "taskId": "t" * MAX_ID_SEGMENT,
    "taskNumber": str(2**63 - 1),
    "displayName": "d",
    "fileName": "d." + "x" * MAX_EXTENSION,
    "ext": "x" * MAX_EXTENSION,
    "yyyy": "2026",
    "mm": "12",
    "dd": "31",
}
_ROOM_FOR_NAMES = 1024 - len(".json") - len("~") - 16
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
    """The receiver's configuration (docs/reference.md, "Configuration")."""

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
    # At most 1 MiB: the task record keeps the body of each delivery still copying, in its 48 MiB of room.
    max_body_bytes: int = Field(default=65536, ge=1024, le=1024 * 1024)

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
        # (literal before, placeholder) in order, to see what stands between two placeholders.
        parts: list[tuple[str, str]] = []
        for literal, field, spec, conversion in string.Formatter().parse(value):
            if field is None:
                continue
            if field not in TEMPLATE_PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {{{field}}}; use only " + ", ".join(sorted(TEMPLATE_PLACEHOLDERS))
                )
            if spec or conversion:
                written = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"format specs and conversions are not supported: write {{{field}}}, not {written} "
                    "(every placeholder is inserted as it is, made safe for a blob name)"
                )
            names.add(field)
            parts.append((literal, field))
        if any("{fileName}" in segment and "{ext}" in segment for segment in value.split("/")):
            # fileName already ends with the extension (scan.pdf); ".{ext}" after it would give scan.pdf.pdf.
            raise ValueError(
                "{fileName} already ends with the file's extension, so {fileName}.{ext} would name a file "
                "scan.pdf.pdf: write {fileName} alone, or {ext} without {fileName} in that segment "
                "(e.g. {taskId}.{ext})"
            )
        for (_, before), (literal, after) in itertools.pairwise(parts):
            if literal == "" and {before, after} & {"workspaceId", "taskNumber"} and "taskId" not in names:
                # "{workspaceId}{taskNumber}": workspace a1 + task 23 and workspace a12 + task 3 share "a123".
                raise ValueError(
                    f"{{{before}}}{{{after}}} has nothing between them, so two documents could share a name: "
                    "put a separator between them (e.g. {workspaceId}/{taskNumber}) or use {taskId}"
                )
        parsed = list(string.Formatter().parse(value))
        for index, (literal, field, _, _) in enumerate(parsed):
            following = parsed[index + 1][0] if index + 1 < len(parsed) else ""
            digit = literal[-1:].isdigit() or following[:1].isdigit()
            if field == "taskNumber" and digit and "taskId" not in names:
                # "{displayName}1{taskNumber}": "x" with task 12 and "x1" with task 2 share "x112".
                raise ValueError(
                    "has a digit right next to {taskNumber}, so two task numbers could give one name: put a "
                    "separator that is not a digit there (e.g. {workspaceId}/{taskNumber}-{fileName})"
                )
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
        if any(segment in (".", "..") for segment in segments):
            raise ValueError(
                "must not have a '.' or '..' segment: a URL folds it away, so two tasks would share a name"
            )
        if value.endswith("."):
            raise ValueError("must not end with '.' (every name would end with it)")
        if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
            raise ValueError("must not contain control characters (Azure refuses them in a blob name)")
        if len(value.format_map(_LONGEST_IDS)) > _ROOM_FOR_NAMES:
            raise ValueError(
                f"is too long: with a workspaceId and a taskId of {MAX_ID_SEGMENT} characters it leaves no room "
                "for the file name within Azure's 1024 characters; use fewer or shorter segments"
            )
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


# The Python worker packages that load function_app.py: azure-functions-worker (Python 3.12 and older,
# shipped with the host) and azure-functions-runtime (3.13 and newer). Each imports the app once per worker
# process (Python caches the module), so the start-up check runs once per process, at the host's first load.
_WORKER_MODULES = ("azure_functions_worker", "azure_functions_runtime", "azure_functions_runtime_v1")


def loaded_by_functions_worker() -> bool:
    """True inside the Functions Python worker; False when a tool or a test imports function_app.py."""
    return any(name in sys.modules for name in _WORKER_MODULES)


def check_at_start(log: logging.Logger) -> Settings | None:
    """Validate the settings once when the app loads: one ERROR naming the bad setting (the receiver then
    answers 500 ``misconfigured`` until it is fixed), WARNINGs for risky choices. Never raises."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        log.error("%s Every delivery is answered 500 misconfigured until it is fixed.", exc.message)
        return None
    except Exception as exc:  # the app must still load and answer; the first request reports it too
        log.error("The app settings could not be read (%s).", type(exc).__name__)
        return None
    if "{taskId}" not in settings.blob_name_template:
        log.warning(
            "BLOB_NAME_TEMPLATE %r names files by {taskNumber} without {taskId}. SmartDocumentor numbers tasks "
            "within a workspace, so this gives each task its own file only while no two tasks of one workspace "
            "ever share a taskNumber; if two did, the later would overwrite the earlier's file. Put {taskId} in "
            "the template to rule that out.",
            settings.blob_name_template,
        )
    return settings


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
