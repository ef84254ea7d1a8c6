"""Parse and validate SmartDocumentor's notification body (docs/reference.md, "The notification"). Pure."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .source import (
    MAX_SOURCE_URL_LENGTH,
    as_utc,
    link_secret_pattern,
    link_too_long,
    map_strings,
    may_repeat_secret,
    scrub_text,
    signatures_apart,
    signatures_apart_again,
    without_secrets,
)

_IDENTITY = ("taskId", "workspaceId")  # what a task is: kept apart whatever they hold
MAX_ID_LENGTH = 1024  # GUIDs in practice; longer ids are kept whole in the manifest and hashed in names
# The task record's and the failure markers' metadata carry both ids whole, percent-encoded, and Azure refuses
# more than 8 KiB of metadata on a blob: ids that long once encoded could never be recorded.
MAX_ENCODED_ID_LENGTH = 3072
MAX_TEXT_LENGTH = 4096
# Deeper JSON is no notification; pydantic and json.dumps would hit their recursion limits near 256.
MAX_NESTING = 32


class PayloadError(Exception):
    """The body cannot be used. ``code`` is the answer's ``error`` (docs/reference.md, "Responses")."""

    def __init__(self, code: str, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests objects and lists (an object of scalars is 1), counted up to ``limit`` + 1."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            break
        depth += 1
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return depth


class Notification(BaseModel):
    """The "Webhook Url to File (Anonymization)" notification. Unknown fields are kept."""

    # Only the camelCase names validate: a sender's own "task_id" or "total_pages" is an unknown field, kept.
    model_config = ConfigDict(extra="allow", frozen=True)

    task_id: str = Field(alias="taskId", min_length=1, max_length=MAX_ID_LENGTH)
    task_number: int = Field(alias="taskNumber", ge=0, le=2**63 - 1)
    workspace_id: str = Field(alias="workspaceId", min_length=1, max_length=MAX_ID_LENGTH)
    total_pages: int | None = Field(default=None, alias="totalPages", ge=0, le=2**31 - 1)
    display_name: str | None = Field(default=None, alias="displayName", max_length=MAX_TEXT_LENGTH)
    # Its length is the URL policy's to judge (source-not-allowed), not a field error.
    exported_file_url: str = Field(alias="exportedFileUrl", min_length=1)
    exported_file_content_type: str = Field(alias="exportedFileContentType", min_length=1, max_length=255)
    exported_file_expires_on: datetime = Field(alias="exportedFileExpiresOn")
    last_checkout_by_user_name: str | None = Field(
        default=None, alias="lastCheckoutByUserName", max_length=MAX_TEXT_LENGTH
    )
    last_checked_out_by: str | None = Field(default=None, alias="lastCheckedOutBy", max_length=MAX_TEXT_LENGTH)
    last_integrated_by: str | None = Field(default=None, alias="lastIntegratedBy", max_length=MAX_TEXT_LENGTH)
    last_integrated_by_user_name: str | None = Field(
        default=None, alias="lastIntegratedByUserName", max_length=MAX_TEXT_LENGTH
    )
    last_checked_out_until: datetime | None = Field(default=None, alias="lastCheckedOutUntil")
    metadata: tuple[tuple[str, str], ...] = Field(default=(), max_length=1000)
    # The metadata exactly as sent (object stays object, list stays list, 42 stays 42): the manifest keeps
    # it. A private attribute, so no sender field can set it; parse_notification fills it in.
    _metadata_as_received: Any = PrivateAttr(default=None)

    @property
    def metadata_as_received(self) -> Any:
        return self._metadata_as_received

    @field_validator("task_number", "total_pages", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        # JSON true/false and 3.5 are not task numbers; "42" (a numeric string) is.
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not true/false")
        if isinstance(value, str):
            text = value.strip()
            if not text.isascii() or not text.isdigit():
                raise ValueError("must be a whole number")
            if len(text) > MAX_NUMBER_DIGITS:
                raise ValueError(f"must be a whole number of at most {MAX_NUMBER_DIGITS} digits")
            return int(text)
        return value

    @field_validator("task_id", "workspace_id")
    @classmethod
    def _identifier(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain control characters")
        if len(quote(value, safe="")) > MAX_ENCODED_ID_LENGTH:
            raise ValueError(
                f"is too long once percent-encoded as UTF-8 (at most {MAX_ENCODED_ID_LENGTH} characters that way: "
                "1024 ASCII letters or digits, about 340 Chinese characters)"
            )
        return value

    @field_validator("exported_file_content_type")
    @classmethod
    def _content_type(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isascii() or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must be a MIME type such as application/pdf")
        return value

    @field_validator("exported_file_expires_on", "last_checked_out_until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list) and all(isinstance(entry, dict) and "key" in entry for entry in value):
            items = [(entry["key"], entry.get("value")) for entry in value]
        else:
            raise ValueError('must be an object of strings, or a list of {"key": ..., "value": ...}')
        pairs = []
        for key, item in items:
            if not isinstance(key, str) or len(key) > MAX_TEXT_LENGTH:
                raise ValueError("keys must be strings of at most 4096 characters")
            if item is None:
                item = ""
            elif isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, int | float):
                item = json.dumps(item)
            if not isinstance(item, str) or len(item) > MAX_TEXT_LENGTH:
                raise ValueError(f"value of {key[:64]!r} must be a string of at most 4096 characters")
            pairs.append((key, item))
        return tuple(pairs)


# The notification's fields: the name in the body (camelCase) -> the attribute.
FIELDS = {info.alias or name: name for name, info in Notification.model_fields.items()}


def _problem(error: Any) -> str:
    cause = error.get("ctx", {}).get("error")
    if cause is not None:
        return str(cause)
    if error["type"] == "missing":
        return "is required"
    return str(error["msg"])


# Python reads no longer whole number from text (sys.get_int_max_str_digits): one is valid JSON all the same.
MAX_NUMBER_DIGITS = 4300


class _NumberTooLong(Exception):
    pass


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def _whole_number(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _NumberTooLong
    return int(text)


def parse_notification(body: bytes, *, queued: bool = False, rebuilt: bool = False) -> Notification:
    """Turn the raw body into a :class:`Notification` or raise :class:`PayloadError`. ``queued``: a queue
    message's body, which the webhook or an earlier release took: NaN or Infinity an earlier release accepted
    pass. ``rebuilt``: made again from what intake made of a sender's body (the record, an earlier release's
    manifest): its hashed ids are kept as they are (a body as sent, queued or not, gets them hashed again)."""
    if not body.strip():  # e.g. curl's --data-binary @file with a path that does not exist sends nothing
        raise PayloadError("invalid-json", "The request body is empty. Send the notification as a UTF-8 JSON object.")
    try:
        # A leading BOM is tolerated; NaN and Infinity, which Python's json takes, are not JSON.
        constant = None if queued else _not_json
        document = json.loads(body.decode("utf-8-sig"), parse_int=_whole_number, parse_constant=constant)
    except _NumberTooLong:
        raise PayloadError(
            "invalid-payload",
            f"The notification holds a number of more than {MAX_NUMBER_DIGITS} digits. Send such a value as text "
            "(in quotes), or leave it out of the webhook's body in SmartDocumentor.",
            [{"field": "body", "problem": f"a number of more than {MAX_NUMBER_DIGITS} digits"}],
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PayloadError(
            "invalid-json", "The request body is not valid JSON. Send the notification as a UTF-8 JSON object."
        ) from None
    if not isinstance(document, dict):
        raise PayloadError("invalid-json", "The request body must be a JSON object, not a list or a single value.")
    if nesting_depth(document, MAX_NESTING) > MAX_NESTING:
        raise PayloadError(
            "invalid-payload",
            f"The notification nests objects or lists more than {MAX_NESTING} levels deep. "
            "Check the webhook's body in SmartDocumentor.",
            [{"field": "body", "problem": f"nested more than {MAX_NESTING} levels deep"}],
        )
    if b"\\u" in body or b"\\U" in body:
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError("invalid-json", "The request body contains text that is not valid Unicode.") from None
    link = document.get("exportedFileUrl")
    if isinstance(link, str) and len(link) > MAX_SOURCE_URL_LENGTH:
        # Refused here, as the source check would (the same answer): its secret's pattern grows with it (a
        # 64 KiB sig took seconds of CPU to compile), and nothing of this body is named or stored.
        refused = link_too_long()
        raise PayloadError(refused.code, refused.message)
    if isinstance(link, str):
        # A sender may repeat the link in another field (displayName, taskId, metadata): its signature
        # must not travel from there into names, tags, metadata, the manifest or logs.
        others = {key: value for key, value in document.items() if key != "exportedFileUrl"}
        if may_repeat_secret(link, others):
            secret = link_secret_pattern(link)
            document = {
                without_secrets(key, secret): value if key == "exportedFileUrl" else without_secrets(value, secret)
                for key, value in document.items()
            }
    # Another link's secret too: any `sig` value everywhere, and every URL's whole query in the values. The ids
    # and field names keep their queries, and a `sig` value there becomes a hash of it: two ids differing
    # anywhere stay two tasks (two field names, two fields).
    apart = signatures_apart_again if rebuilt else signatures_apart
    document = {
        apart(key): value
        if key == "exportedFileUrl"
        else map_strings(value, apart if key in _IDENTITY else scrub_text, keys=apart)
        for key, value in document.items()
    }
    try:
        notification = Notification.model_validate(document)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(part) for part in error["loc"]) or "body", "problem": _problem(error)}
            for error in exc.errors(include_url=False)
        ]
        fields = list(dict.fromkeys(d["field"] for d in details))
        raise PayloadError(
            "invalid-payload",
            f"The notification has missing or invalid fields: {', '.join(fields)}. "
            "Check the webhook's body in SmartDocumentor.",
            details,
        ) from None
    notification._metadata_as_received = document.get("metadata")
    return notification
