"""Check the exported file's URL: allowlist, SAS presence, expiry; and keep its secret out of sight. Pure."""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MAX_SOURCE_URL_LENGTH = 2048
_DEFAULT_PORTS = {"https": 443, "http": 80}
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class SourceError(Exception):
    """The link cannot be copied. ``code`` is ``source-not-allowed`` or ``link-expired``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SourceLink:
    """A checked source: the full URL (secret), what may be shown, and when it stops working."""

    url: str
    public_url: str  # scheme://host[:port]/path, never the query
    expires_on: datetime
    delivery: str  # sha256 of the full URL: identifies this delivery without revealing it

    def __repr__(self) -> str:  # keep the SAS out of any accidental repr/log
        return f"SourceLink(public_url={self.public_url!r}, expires_on={self.expires_on.isoformat()})"


# A run of text without spaces, quotes or angle brackets: where a URL and its query can be.
_TOKEN = re.compile(r"[^\s\"'<>]+")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


# Blob names are NFC (plan._safe_segment), and NFC turns exactly one character into a letter or digit: U+212A
# KELVIN SIGN into "K". Written for a signature's "K" it would pass the scrub and come back whole in a name.
_NFC_TWINS = {"K": "\u212a"}


def _any_encoding(char: str) -> str:
    """A pattern for one character of a signature as a sender may have re-encoded it (letters too:
    ``%37`` is a ``7`` to the service), or written it as the one character NFC turns into it."""
    code = f"{ord(char):02X}"
    forms = [re.escape(char), f"(?i:%{code})", f"(?i:%25{code})"]
    if char == "+":
        forms.append(" ")  # decoded as a form would decode it
    if char in _NFC_TWINS:
        forms.append(_NFC_TWINS[char])
    return "(?:" + "|".join(forms) + ")"


def link_secret_pattern(url: str) -> re.Pattern[str] | None:
    """What must never be repeated from a link: its ``sig``, as sent, decoded, re-encoded (in any case,
    or twice), with or without its ``=`` padding, and its whole query as sent."""
    query, cores = _signatures(url)
    padding = "(?:=|(?i:%3D)|(?i:%253D))*"
    signatures = ["".join(_any_encoding(char) for char in core) + padding for core in cores]
    if not signatures:
        return None
    whole = [re.escape(query)] if len(query) >= 8 else []
    return re.compile("|".join(whole + signatures))


def _signatures(url: str) -> tuple[str, list[str]]:
    query = url.split("?", 1)[1].split("#", 1)[0] if "?" in url else ""
    cores = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        core = unquote(value).rstrip("=")
        # The name decoded as the service decodes it: "%73ig" is "sig" too.
        if unquote(unquote(name)).strip().lower() == "sig" and len(core) >= 8:
            cores.append(core)
    return query, cores


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)


def may_repeat_secret(url: str, value: Any) -> bool:
    """Could ``value`` (any JSON) repeat the link's secret? Never weaker than
    :func:`link_secret_pattern`, and cheap: a text without ``%`` or a KELVIN SIGN can only hold a signature
    as it is (a ``+`` perhaps as a space) or the whole query, so only texts with one of those or such a
    substring need the pattern, whose compilation costs about a millisecond per link (make bench)."""
    query, cores = _signatures(url)
    if not cores:
        return False
    plain = [core.replace(" ", "+") for core in cores]
    for text in _strings(value):
        if "%" in text or any(twin in text for twin in _NFC_TWINS.values()) or (len(query) >= 8 and query in text):
            return True
        spaced = text.replace(" ", "+")
        if any(core in spaced for core in plain):
            return True
    return False


def map_strings(value: Any, change: Callable[[str], str], *, keys: Callable[[str], str] | None = None) -> Any:
    """``value`` (any JSON) with ``change`` applied to every string in it, and ``keys`` to object keys."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [map_strings(item, change, keys=keys) for item in value]
    if isinstance(value, dict):
        return {(keys(key) if keys else key): map_strings(item, change, keys=keys) for key, item in value.items()}
    return value


def without_secrets(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """``value`` (any JSON) with every match of ``pattern`` replaced by REDACTED, in strings and keys."""
    if pattern is None:
        return value
    hide = functools.partial(pattern.sub, "REDACTED")
    return map_strings(value, hide, keys=hide)


# Any link's ``sig`` value, as sent or with its ``=`` percent-encoded (once or twice), up to the next parameter.
# Any link's ``sig`` value, as sent or with its ``=`` percent-encoded (once or twice), up to the next parameter;
# wherever it starts (after ``%3F``, in a word), so a few texts lose more than a signature rather than one keep it.
# Its name too may be percent-encoded, once or twice (``%73ig=``: the service decodes it as ``sig``).
_ANY_SIG = re.compile(
    r"(?i)(?:s|%(?:25)?73)(?:i|%(?:25)?69)(?:g|%(?:25)?67)(?:=|%3D|%253D)"
    r"(?:[^&\s\"'<>%#]|%(?!26|2526|23)(?:25)?[0-9a-f]{2})*"
)


# What intake leaves of a `sig` value: REDACTED, perhaps "~" and 16 hex digits (in an id), "_" for the "~" in a
# blob name's identity segment, where the segment's cut may also end it anywhere before its own "~" and hash.
# Output and logs keep it whole, and what follows it in a name: it was never secret (base64 has no "~" or "_").
_CUT_MARK = "|".join(["REDACTED_[0-9a-f]{0,16}", *("REDACTED"[:length] for length in range(8, -1, -1))])
_SCRUBBED_SIG = (
    r"(?-i:REDACTED(?:[~_][0-9a-f]{16}(?![0-9A-Za-z+=])|(?![~_0-9A-Za-z+=]))"
    rf"|(?:{_CUT_MARK})~[0-9a-f]{{16}}(?![0-9A-Za-z+=]))"
)
_EQUALS = "(?:=|%3D|%253D)"
_ANY_SIG_NOT_SCRUBBED = re.compile(_ANY_SIG.pattern.replace(_EQUALS, f"{_EQUALS}(?!{_SCRUBBED_SIG})", 1))


def _may_hold_signature(text: str) -> bool:
    return "%" in text or "sig" in text.lower()


def without_signatures(text: str) -> str:
    """``text`` with every ``sig`` value REDACTED."""
    return _ANY_SIG.sub("sig=REDACTED", text) if _may_hold_signature(text) else text


def signatures_apart(text: str) -> str:
    """``text`` with every ``sig`` value replaced by REDACTED and 16 hex digits of its sha256, nothing else
    changed: for what identifies (ids, field names), two texts that differ anywhere stay different (a sender
    who types that very form names another task than the one it stands for)."""
    if not _may_hold_signature(text):
        return text
    return _ANY_SIG.sub(lambda found: f"sig=REDACTED~{_hash16(found[0])}", text)


def signatures_apart_again(text: str) -> str:
    """:func:`signatures_apart` on a text it made already (a body the queue function rebuilt from the record):
    a value in its form is kept, so the ids name the same task."""
    if not _may_hold_signature(text):
        return text
    return _ANY_SIG.sub(
        lambda found: found[0] if _HASHED_SIGNATURE.fullmatch(found[0]) else f"sig=REDACTED~{_hash16(found[0])}",
        text,
    )


_HASHED_SIGNATURE = re.compile(r"sig=REDACTED~[0-9a-f]{16}")


def _hash16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scrub_text(text: str) -> str:
    """``text`` without another link's secret: any ``sig`` value, and the whole query of every URL in it."""
    text = without_signatures(text)
    return without_url_queries(text) if "://" in text and "?" in text else text


def without_url_queries(text: str) -> str:
    """Every URL in the text without its query ("see https://h/p?sig=x ok?" -> "see https://h/p?REDACTED ok?"):
    the text around them is kept whole. Linear in the text, whatever it holds."""
    return _TOKEN.sub(_token_without_query, text) if "://" in text else text


def _token_without_query(found: re.Match[str]) -> str:
    """One token, from the ``?`` after its first URL's path on replaced by ``?REDACTED`` (a path ends at ``?``
    or ``#``; after a ``#`` the next ``://`` in the token is looked at). Each character is looked at a bounded
    number of times: a sender cannot make it slow."""
    token = found[0]
    start, query = 0, -1
    while (mark := token.find("://", start)) >= 0:
        if mark == 0 or token[mark - 1] not in _SCHEME_CHARS:  # no scheme right before it (a letter, digit, + . -)
            start = mark + 3
            continue
        if query < mark + 3:  # the first "?" after this scheme (the same as the last one's, while ahead)
            query = token.find("?", mark + 3)
            if query < 0:
                return token
        fragment = token.find("#", mark + 3, query)
        if fragment < 0:
            return token[:query] + "?REDACTED"
        start = fragment + 1
    return token


# A connection string's secrets: the account key and a SAS token (up to the next ``;``).
_CONNECTION_SECRET = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;\s\"'<>]*")


def redact(text: str) -> str:
    """Remove URL queries, any ``sig=``, and a connection string's ``AccountKey=`` or
    ``SharedAccessSignature=`` value from free text (exception messages, log lines, operator output)."""
    text = without_url_queries(_CONNECTION_SECRET.sub(lambda found: f"{found.group(1)}=REDACTED", text))
    return _ANY_SIG_NOT_SCRUBBED.sub("sig=REDACTED", text) if _may_hold_signature(text) else text


_KEY_NAMES = re.compile(r"(?:accountkey|sharedaccesssignature|sharedaccesskey)[^0-9a-z]*[=:]")


def holds_key(text: str) -> bool:
    """Does ``text`` hold a connection string's key or SAS: ``AccountKey``, ``SharedAccessSignature`` or
    ``SharedAccessKey`` in any case, then ``=`` or ``:`` after anything but a letter or digit? Read as a person
    would: percent-decoded (three times at most), fullwidth forms folded (NFKC), invisible format characters
    (zero-width, BOM) dropped. The bare word is an id like any other."""
    for _ in range(3):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    folded = unicodedata.normalize("NFKC", text)
    return _KEY_NAMES.search("".join(c for c in folded if unicodedata.category(c) != "Cf").lower()) is not None


def printable_id(value: str) -> bool:
    """May a task or workspace id be shown whole (its URL query too)? Intake replaced every ``sig`` value in it
    (``sig=REDACTED~<hash>``), and it names no key."""
    return not holds_signature(value) and not holds_key(value)


def redact_keeping(text: str, kept: list[str]) -> str:
    """:func:`redact` on ``text``, the ``kept`` texts in it (printable ids) left whole where each stands as a whole
    word (after a space, quote, ``=`` or ``(``; before a space, quote or punctuation): set aside while it runs.
    Inside another word (an id ``sig`` in ``&sig=…``) it is not kept; nor is anything when the result would still
    hold a signature or a key."""
    aside: dict[str, str] = {}
    marked = text
    for number, value in enumerate(sorted(kept, key=len, reverse=True)):  # the longest first: one may hold another
        if value and value in marked:
            mark = f"\x00{number}\x00"
            word = re.compile(rf"(?<![^\s'\"=(]){re.escape(value)}(?![^\s'\",;:)])")
            marked, count = word.subn(mark, marked)
            if count:
                aside[mark] = value
    result = redact(marked)
    for mark, value in aside.items():
        result = result.replace(mark, value)
    return redact(text) if aside and (holds_signature(result) or holds_key(result)) else result


def holds_signature(text: str) -> bool:
    """Does ``text`` hold a ``sig`` value that intake did not already replace?"""
    return _may_hold_signature(text) and _ANY_SIG_NOT_SCRUBBED.search(text) is not None


def host_allowed(host: str, port: int, patterns: tuple[str, ...], default_port: int) -> bool:
    """``host:port`` matches ``host``/``host:port``/``*.suffix`` patterns.

    ``*.`` stands for one or more whole leading labels, so ``*.blob.core.windows.net`` matches
    ``acct.blob.core.windows.net`` but never ``blob.core.windows.net`` itself or
    ``x.blob.core.windows.net.evil.com``. A pattern without a port allows only the default port.
    """
    host = host.lower()
    for pattern in patterns:
        pattern_host, _, pattern_port = pattern.partition(":")
        wanted_port = int(pattern_port) if pattern_port else default_port
        if port != wanted_port:
            continue
        if pattern_host.startswith("*."):
            suffix = pattern_host[1:]  # ".blob.core.windows.net"
            label_part = host[: -len(suffix)] if host.endswith(suffix) else ""
            if label_part and all(_is_label(label) for label in label_part.split(".")):
                return True
        elif host == pattern_host:
            return True
    return False


def _is_label(label: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label))


def as_utc(value: datetime) -> datetime:
    """A naive time is UTC (docs/reference.md, "The notification"); ValueError when it has no UTC
    equivalent (9999-12-31T23:59:59-01:00)."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the range of dates this receiver can handle") from None


def link_too_long() -> SourceError:
    return _not_allowed(f"it is longer than {MAX_SOURCE_URL_LENGTH} characters")


def _not_allowed(reason: str) -> SourceError:
    return SourceError(
        "source-not-allowed",
        f"The file link is not accepted: {reason}. Export the document again; if this keeps happening, ask "
        "whoever runs the receiver to check which export storage it accepts files from.",
    )


def check_source(
    url: str,
    *,
    payload_expires_on: datetime,
    allowed_hosts: tuple[str, ...],
    allow_http: bool,
    now: datetime,
) -> SourceLink:
    """Validate the exported file URL against the policy; raise :class:`SourceError`."""
    if len(url) > MAX_SOURCE_URL_LENGTH:
        raise link_too_long()
    if not url.isascii() or _SPACE_OR_CONTROL.search(url):
        raise _not_allowed("it contains spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise _not_allowed("it is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_http):
        raise _not_allowed("it must be an https:// link")
    if "@" in parts.netloc:
        raise _not_allowed("it must not contain a user name or password")
    if not host:
        raise _not_allowed("it has no host")
    default_port = _DEFAULT_PORTS[scheme]
    effective_port = default_port if port is None else port
    if not host_allowed(host, effective_port, allowed_hosts, default_port):
        shown = host if port is None else f"{host}:{port}"
        raise _not_allowed(f"the receiver does not accept files from {shown}")
    if not parts.path or parts.path == "/":
        raise _not_allowed("it does not point to a file")
    query = parse_qs(parts.query, keep_blank_values=True)
    if not query.get("sig", [""])[0]:
        raise _not_allowed("it has no SAS signature (sig)")
    expires_on = payload_expires_on
    if "se" in query:
        try:
            sas_expiry = as_utc(datetime.fromisoformat(query["se"][0].replace("Z", "+00:00")))
        except ValueError:
            raise _not_allowed("its SAS expiry (se) is not a date") from None
        expires_on = min(expires_on, sas_expiry)
    if expires_on <= now:
        raise SourceError(
            "link-expired",
            f"The file link expired at {expires_on.strftime('%Y-%m-%dT%H:%M:%SZ')}. "
            "Export the document again from SmartDocumentor.",
        )
    public = url.split("?", 1)[0].split("#", 1)[0]
    if may_repeat_secret(url, public):  # a path that holds its own signature too: never written anywhere
        public = str(without_secrets(public, link_secret_pattern(url)))
    # And another link's, as a path may carry one: to the end of the path (a signature's base64 may hold "/").
    public = without_signatures(public)
    return SourceLink(
        url=url,
        public_url=public,
        expires_on=expires_on,
        delivery=hashlib.sha256(url.encode("utf-8")).hexdigest(),
    )
