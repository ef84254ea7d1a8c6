"""Decide what will be stored: blob name, index tags, metadata, headers, manifest. Pure.

The :class:`CopyPlan` is plain data: print it to see exactly what a delivery will write.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from .payload import FIELDS, Notification
from .settings import MAX_EXTENSION, MAX_ID_SEGMENT, MAX_TAGS, Settings
from .source import SourceLink, link_secret_pattern, without_signatures

MAX_BLOB_NAME = 1024
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_METADATA_VALUE = 2048
MAX_SEGMENT = 255

EXTENSIONS = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png"}
# Extensions that already satisfy a content type ("photo.jpeg" stays "photo.jpeg").
ACCEPTED_EXTENSIONS = {"application/pdf": (".pdf",), "image/jpeg": (".jpg", ".jpeg"), "image/png": (".png",)}

# What Azure refuses in a blob name: control characters, surrogates, noncharacters and private-use code points
# ("\uE000 ... cannot be used": Naming and Referencing Containers, Blobs, and Metadata).
_REFUSED = r"\x00-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\ufdd0-\ufdef\ufffe\uffff\U000f0000-\U0010ffff" + "".join(
    chr(plane << 16 | low)
    for plane in range(1, 15)
    for low in (0xFFFE, 0xFFFF)  # each plane's last two code points
)
# What no name this receiver makes contains (its segments are made safe; its separators are "/").
_CONTROL = re.compile(rf"[\\{_REFUSED}]")
# Characters Windows/Azure tools choke on in a name segment, and those Azure refuses; "/" and "\" are separators.
_UNSAFE_NAME_CHARS = re.compile(rf'[/\\:?*"<>|#%{_REFUSED}]')
_TAG_ALPHABET = re.compile(r"[^a-zA-Z0-9 +\-./:=_]")

MANIFEST_SUFFIX = ".json"
# The manifest keys the receiver itself writes (docs/reference.md, "The manifest"); a sender's extra fields by these
# names are kept under `senderFields` instead.
RECEIVER_MANIFEST_KEYS = frozenset(
    {
        "metadata",
        "receivedAt",
        "receivedAtFrom",
        "source",
        "blob",
        "delivery",
        "linkExpiresOn",
        "tags",
        "tagsDropped",
        "tagsWritten",
        "copyId",
        "copyStatus",
        "completedAt",
        "failedAt",
        "failureReason",
        "history",
        "replaced",
        "previous",
        "partial",
        "repairedAt",
        "senderFields",
        "receiverKind",
    }
)
# A file whose name would end like a manifest's gets this after it: files and manifests never share a name.
NOT_A_MANIFEST_SUFFIX = ".file"
# Tag names the previous release's manifests carry (and looked its work up by): a sender's metadata entry
# that folds to one of these is never written as a tag, so no file can pose as one of those manifests.
RESERVED_TAG_KEYS = frozenset({"copystatus", "receivedat", "taskid", "workspaceid"})


@dataclass(frozen=True)
class CopyPlan:
    """Everything one delivery writes; derived only from the payload, the settings and the clock."""

    blob_name: str
    source: SourceLink
    content_type: str
    tags: dict[str, str]
    tags_dropped: list[dict[str, str]]
    metadata: dict[str, str]
    manifest: dict[str, Any] = field(repr=False)
    task_id: str
    workspace_id: str

    @property
    def delivery(self) -> str:
        return self.source.delivery


# --- blob name -----------------------------------------------------------------------------


def azure_length(name: str) -> int:
    """A blob name's length as Azure Storage counts it toward its 1024: UTF-16 code units (a character outside
    the BMP, an emoji say, counts two; a longer name is refused with 400 OutOfRangeInput)."""
    return len(name.encode("utf-16-le", "surrogatepass")) // 2


def _cut_to(text: str, length: int) -> str:
    """The longest start of ``text`` within ``length`` as Azure counts it (azure_length), never half an emoji."""
    return text.encode("utf-16-le", "surrogatepass")[: 2 * max(length, 0)].decode("utf-16-le", "ignore")


def _safe_segment(value: str, fallback: str) -> str:
    """One path segment: NFC, unsafe characters -> "_", no trailing dot/space, never "." or ".."."""
    text = _UNSAFE_NAME_CHARS.sub("_", unicodedata.normalize("NFC", value)).strip().rstrip(". ") or fallback
    return text[:MAX_SEGMENT].rstrip(". ") or fallback


def extension_for(content_type: str, source_path: str) -> str:
    """The file extension: from the content type, else the source file's own extension."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base in EXTENSIONS:
        return EXTENSIONS[base]
    match = re.search(rf"\.([A-Za-z0-9]{{1,{MAX_EXTENSION}}})$", source_path)
    return f".{match.group(1).lower()}" if match else ""


def file_name(display_name: str | None, task_id: str, content_type: str, source_path: str) -> str:
    """The display name made safe, with the right extension ensured exactly once."""
    ext = extension_for(content_type, source_path)
    stem = _safe_segment(display_name or "", "") or _safe_segment(task_id, "document")
    accepted = ACCEPTED_EXTENSIONS.get(content_type.split(";", 1)[0].strip().lower(), (ext,) if ext else ())
    if accepted and stem.lower().endswith(accepted):
        return stem
    return _safe_segment(stem[: MAX_SEGMENT - len(ext)] + ext, "document")


# An identity segment that had to change gets "~" and hex digits of its original's sha256.
ID_HASH_LENGTH = 16  # 64 bits: even a deliberate search for a colliding pair takes ~2**32 hashes
IDENTITY_PLACEHOLDERS = ("workspaceId", "taskId")


@functools.lru_cache(maxsize=1024)  # pure; every record read or written names its task again
def identity_segment(value: str) -> str:
    """A path segment that stays one-to-one with ``value``: the value itself when it is already
    safe, short enough and free of "~"; otherwise its safe form, cut, plus "~" and a short stable hash
    of the original. A kept value never contains "~", so it cannot equal a hashed one.
    """
    safe = _safe_segment(value, "_")
    if safe == value and "~" not in value and len(value) <= MAX_ID_SEGMENT:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:ID_HASH_LENGTH]
    readable = _safe_segment(value.replace("~", "_"), "_")[: MAX_ID_SEGMENT - ID_HASH_LENGTH - 1].rstrip(". ")
    return f"{readable or '_'}~{digest}"


def blob_name(template: str, values: dict[str, str], file: str, *, limit: int = MAX_BLOB_NAME) -> str:
    """Render the template with every placeholder made safe, within ``limit`` characters.

    workspaceId and taskId become identity segments, so two tasks never share a name. When the
    name is too long the file name's stem is shortened first, then the display name wherever the
    template places it; never an id (the settings refuse a template too long for that to do).
    """
    safe = {
        key: identity_segment(value) if key in IDENTITY_PLACEHOLDERS else _safe_segment(value, "_")
        for key, value in values.items()
    }
    name = template.format_map({**safe, "fileName": file})
    if azure_length(name) <= limit:
        return name
    stem, dot, ext = file.rpartition(".")
    # Only an extension the receiver gives (extension_for: at most MAX_EXTENSION) is kept whole; anything
    # else after a dot ("s.xxxx…" from a display name) is part of the stem and shrinks with it.
    stem, suffix = (stem, f".{ext}") if dot and len(ext) <= MAX_EXTENSION else (file, "")
    over = azure_length(name) - limit
    file = _safe_segment(_cut_to(stem, azure_length(stem) - over) or stem[:1], "d") + suffix
    name = template.format_map({**safe, "fileName": file})
    shown, times, over = safe["displayName"], template.count("{displayName}"), azure_length(name) - limit
    if over > 0 and times:
        cut = _cut_to(shown, azure_length(shown) - -(-over // times)) or shown[:1]
        name = template.format_map({**safe, "displayName": _safe_segment(cut, "_"), "fileName": file})
    if azure_length(name) <= limit:
        return name
    # The settings leave room for ids of 128 characters of the Basic Multilingual Plane; ids outside it count
    # up to twice that. The cut then keeps a hash of the whole name, so two tasks still never share one.
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:ID_HASH_LENGTH]
    head = _cut_to(name, limit - azure_length(suffix) - ID_HASH_LENGTH - 1).rstrip("./ ")
    return f"{head}~{digest}{suffix}"


# --- tags ------------------------------------------------------------------------------------


def fold_tag_text(text: str, limit: int, secret: re.Pattern[str] | None = None) -> str:
    """Fold text into Azure's tag alphabet: accents removed, anything else "_", truncated. Folding can turn
    a disguised signature (fullwidth letters, a combining mark after each character) into the plain one,
    so the folded text loses any ``sig`` value, and ``secret`` (the link's own), again before the cut."""
    stripped = text
    if not text.isascii():  # ASCII has no marks and no format characters: nothing to fold
        decomposed = unicodedata.normalize("NFKD", text)
        # Invisible format characters (a zero-width space, a soft hyphen) go too: inside a signature they
        # would only hide it from the scrub.
        stripped = "".join(c for c in decomposed if not unicodedata.combining(c) and unicodedata.category(c) != "Cf")
    if secret is not None:  # before the alphabet turns a percent-encoded form's "%" into "_"
        stripped = secret.sub("REDACTED", stripped)
    return without_signatures(_TAG_ALPHABET.sub("_", without_signatures(stripped)))[:limit]


def index_tags(
    fields: list[tuple[str, str]], metadata: tuple[tuple[str, str], ...], secret: re.Pattern[str] | None = None
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """TAG_FIELDS first, then metadata in order; at most 10. Returns (tags, dropped). ``secret``: the
    link's own signature, when a text folds into something that may repeat it."""
    tags: dict[str, str] = {}
    dropped: list[dict[str, str]] = []
    for key, value in fields:
        tags[key] = fold_tag_text(value, MAX_TAG_VALUE, secret)
    for key, value in metadata:
        folded_key = fold_tag_text(key.strip(), MAX_TAG_KEY, secret)
        if not folded_key:
            dropped.append({"key": key, "reason": "empty key"})
        elif folded_key in tags:
            dropped.append({"key": key, "reason": f"tag {folded_key!r} already written"})
        elif folded_key.casefold() in RESERVED_TAG_KEYS:
            dropped.append({"key": key, "reason": f"tag {folded_key!r} is reserved: the receiver finds its work by it"})
        elif len(tags) >= MAX_TAGS:
            dropped.append({"key": key, "reason": f"Azure allows at most {MAX_TAGS} tags per blob"})
        else:
            tags[folded_key] = fold_tag_text(value, MAX_TAG_VALUE, secret)
    return tags, dropped


# --- metadata --------------------------------------------------------------------------------

# Printable ASCII stays readable; "%" itself is encoded so the value decodes back exactly.
_METADATA_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + " "
_EDGE_SPACES = re.compile(r"^ +| +$")


def metadata_value(text: str, limit: int = MAX_METADATA_VALUE) -> str:
    """ASCII header value: non-ASCII as percent-encoded UTF-8, no edge spaces, cut on a whole escape."""
    encoded = quote(text, safe=_METADATA_SAFE, errors="surrogatepass")
    encoded = _EDGE_SPACES.sub(lambda spaces: "%20" * len(spaces.group()), encoded)
    if len(encoded) > limit:
        encoded = encoded[:limit]
        cut = encoded.rfind("%", max(0, limit - 2))
        if cut != -1:
            encoded = encoded[:cut]
        encoded = encoded.rstrip(" ")
    return encoded


def task_key(workspace_id: str, task_id: str) -> str:
    """The task's ids, whole, in 32 hex digits (the ``taskkey`` metadata): ``taskid`` and ``workspaceid``
    are cut at 512 characters, so two long ids may share them; this never does."""
    whole = json.dumps([workspace_id, task_id]).encode("utf-8", "surrogatepass")
    return hashlib.sha256(whole).hexdigest()[:32]


def of_another_task(metadata: dict[str, str], workspace_id: str, task_id: str) -> bool:
    """Does a blob's metadata name another task? Its ``taskkey`` (the whole ids) when it has one; else (a file
    from before it) its ids, cut at 512 characters. A blob without them is not one this receiver wrote."""
    meta = {key.lower(): value for key, value in metadata.items()}
    if "taskkey" in meta:
        return meta["taskkey"] != task_key(workspace_id, task_id)
    workspace, task = meta.get("workspaceid"), meta.get("taskid")
    if workspace is None or task is None:
        return False
    return (workspace, task) != (metadata_value(workspace_id, 512), metadata_value(task_id, 512))


def blob_metadata(notification: Notification, source: SourceLink) -> dict[str, str]:
    total_pages = "" if notification.total_pages is None else str(notification.total_pages)
    return {
        "taskkey": task_key(notification.workspace_id, notification.task_id),
        "taskid": metadata_value(notification.task_id, 512),
        "tasknumber": str(notification.task_number),
        "workspaceid": metadata_value(notification.workspace_id, 512),
        "displayname": metadata_value(notification.display_name or ""),
        "totalpages": total_pages,
        "source": metadata_value(source.public_url),
        "delivery": source.delivery,
    }


# --- manifest --------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def manifest(notification: Notification, plan_fields: dict[str, Any], *, received_at: datetime) -> dict[str, Any]:
    payload = notification.model_dump(by_alias=True, mode="json", exclude={"metadata"})  # URL queries gone at intake
    payload["exportedFileUrl"] = plan_fields["source"]
    payload["exportedFileExpiresOn"] = _iso(notification.exported_file_expires_on)
    payload["lastCheckedOutUntil"] = _iso(notification.last_checked_out_until)
    # A sender's extra field must never pose as the receiver's own record (a forged `replaced` would
    # make the next export "superseded", a forged `previous` a restore of nothing): such fields are
    # kept, under `senderFields`.
    own = {key: payload.pop(key) for key in list(payload) if key in RECEIVER_MANIFEST_KEYS}
    if own:
        payload["senderFields"] = own
    return {
        **payload,
        "metadata": notification.metadata_as_received,
        "receivedAt": _iso(received_at),
        **plan_fields,
    }


RESERVED_FIRST_SEGMENT = ".smartdocumentor"


def outside_reserved(name: str) -> str:
    """A file name never falls among the task records: a first segment that is the records' (in any
    case) gets "~" and a hash of itself, as an identity segment that had to change does, so the
    escaped name stays one-to-one (a kept segment never contains "~")."""
    first, slash, rest = name.partition("/")
    if first.casefold() != RESERVED_FIRST_SEGMENT:
        return name
    digest = hashlib.sha256(first.encode("utf-8")).hexdigest()[:ID_HASH_LENGTH]
    return f"{first}~{digest}{slash}{rest}"


def has_manifest_name(blob: str) -> bool:
    """Can the file have a manifest? Not when ``<name>.json`` would be over Azure's limit (a name over 1019
    characters, given while WRITE_MANIFEST was off)."""
    return azure_length(blob) + len(MANIFEST_SUFFIX) <= MAX_BLOB_NAME


def not_a_manifest_name(name: str, limit: int) -> str:
    """A file's name never ends like a manifest's (``<file>.json``), whatever the display name,
    content type or template: such a name gets NOT_A_MANIFEST_SUFFIX, cut first if it must be."""
    if not name.lower().endswith(MANIFEST_SUFFIX):
        return name
    return _cut_to(name, limit - len(NOT_A_MANIFEST_SUFFIX)).rstrip("./ ") + NOT_A_MANIFEST_SUFFIX


def kept_name(plan: CopyPlan, name: str, settings: Settings) -> CopyPlan:
    """The plan under ``name``, the name it was given when it arrived (a queued delivery keeps it: its
    202 named it, and a copy of it may already be there, in no record yet), when that is a name this
    receiver can give a file of this task; else the plan as it is (today's template)."""
    # Up to Azure's limit whatever WRITE_MANIFEST says now: a name given while it was off keeps its file
    # (which then has no manifest: engine.write_manifest).
    usable = 0 < azure_length(name) <= MAX_BLOB_NAME and name == outside_reserved(
        not_a_manifest_name(name, MAX_BLOB_NAME)
    )
    parts = name.split("/")
    usable = usable and not _CONTROL.search(name) and all(part not in ("", ".", "..") for part in parts)
    # One of this task's names: its ids as whole segments (or, a template by task number, both in it); a
    # first segment out of the records' folder carries "~" and a hash after the id.
    first = parts[0].split("~", 1)[0]
    segments = {*parts, first} if first.casefold() == RESERVED_FIRST_SEGMENT else set(parts)
    workspace, task = identity_segment(plan.workspace_id), identity_segment(plan.task_id)
    number = plan.metadata.get("tasknumber", "")
    by_number = workspace in name and bool(number) and number in name
    usable = usable and ({workspace, task} <= segments or by_number)
    if name == plan.blob_name or not usable or name.endswith((".", " ")):
        return plan
    return renamed(plan, name, settings)


def renamed(plan: CopyPlan, name: str, settings: Settings) -> CopyPlan:
    """The plan under ``name``, as it is (the name the task record holds the delivery at)."""
    document = {**plan.manifest, "blob": f"{settings.destination_container}/{name}"}
    return dataclasses.replace(plan, blob_name=name, manifest=document)


# --- the plan --------------------------------------------------------------------------------


def make_plan(notification: Notification, source: SourceLink, settings: Settings, *, now: datetime) -> CopyPlan:
    """Everything this delivery will write, decided before any storage call."""
    source_path = urlsplit(source.public_url).path
    file = file_name(
        notification.display_name, notification.task_id, notification.exported_file_content_type, source_path
    )
    values = {
        "workspaceId": notification.workspace_id,
        "taskId": notification.task_id,
        "taskNumber": str(notification.task_number),
        "displayName": notification.display_name or notification.task_id,
        "ext": extension_for(notification.exported_file_content_type, source_path).lstrip("."),
        "yyyy": f"{now.year:04d}",
        "mm": f"{now.month:02d}",
        "dd": f"{now.day:02d}",
    }
    # Room for the manifest's ".json" when there is one, so neither name is cut afterwards.
    limit = MAX_BLOB_NAME - len(MANIFEST_SUFFIX) if settings.write_manifest else MAX_BLOB_NAME
    name = not_a_manifest_name(blob_name(settings.blob_name_template, values, file, limit=limit), limit)
    if outside_reserved(name) != name:  # room for the "~" and hash it gets
        room = limit - 1 - ID_HASH_LENGTH
        name = outside_reserved(
            not_a_manifest_name(blob_name(settings.blob_name_template, values, file, limit=room), room)
        )
    by_alias = notification.model_dump(by_alias=True, include={FIELDS[a] for a in settings.tag_fields})
    fields = [(alias, str(by_alias[alias])) for alias in settings.tag_fields if by_alias.get(alias) is not None]
    texts = [value for _, value in fields] + [text for pair in notification.metadata for text in pair]
    # ASCII texts were scrubbed at intake and fold to nothing new; the pattern costs about a millisecond.
    secret = None if all(text.isascii() for text in texts) else link_secret_pattern(source.url)
    tags, dropped = index_tags(fields, notification.metadata, secret)
    document = manifest(
        notification,
        {
            "source": source.public_url,
            "blob": f"{settings.destination_container}/{name}",
            "delivery": source.delivery,
            # The link's effective expiry (payload date or SAS se, the earlier): when a copy can no longer be retried.
            "linkExpiresOn": _iso(source.expires_on),
            "tags": tags,
            "tagsDropped": dropped,
        },
        received_at=now,
    )
    return CopyPlan(
        blob_name=name,
        source=source,
        content_type=notification.exported_file_content_type,
        tags=tags,
        tags_dropped=dropped,
        metadata=blob_metadata(notification, source),
        manifest=document,
        task_id=notification.task_id,
        workspace_id=notification.workspace_id,
    )
