"""The pure core: payload, URL policy, naming, tags, metadata. Unit and property tests, no I/O."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from receiver.engine import manifest_name
from receiver.intake import prepare
from receiver.outcome import Outcome
from receiver.payload import PayloadError, parse_notification
from receiver.plan import CopyPlan, file_name, fold_tag_text, identity_segment, index_tags, metadata_value
from receiver.settings import Settings, SettingsError, load_settings
from receiver.source import SourceError, check_source, host_allowed, redact, scrub_text
from receiver.verification import Message, message, plan_message, read_message

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=48)
HOST = "exportsacct.blob.core.windows.net"
SIG = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
URL = f"https://{HOST}/exports/doc.pdf?sv=2024-11-04&se=2026-12-01T00%3A00%3A00Z&sr=b&sp=r&sig={SIG}"
SETTINGS = Settings(destination_connection_string="UseDevelopmentStorage=true")
TAG_CHARS = re.compile(r"^[a-zA-Z0-9 +\-./:=_]*$")


def body(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "taskId": "8c1f0f64-2b1e-4a8e-9c55-0d7e2c1f9a10",
        "taskNumber": 7,
        "workspaceId": "ws-1",
        "exportedFileUrl": URL,
        "exportedFileContentType": "application/pdf",
        "exportedFileExpiresOn": LATER.isoformat(),
    }
    document.update(overrides)
    return document


def plan_for(document: dict[str, Any] | bytes, config: Settings = SETTINGS) -> CopyPlan | Outcome:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return prepare(raw, {"content-type": "application/json"}, config, now=NOW)


def assert_legal(plan: CopyPlan) -> None:
    """What Azure requires of everything a plan writes."""
    assert 1 <= azure_counted(plan.blob_name) <= 1024
    assert not plan.blob_name.endswith((".", "/", "\\"))
    assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in plan.blob_name)
    assert "\\" not in plan.blob_name
    segments = plan.blob_name.split("/")
    assert len(segments) <= 254
    assert all(segment not in ("", ".", "..") for segment in segments)
    assert len(plan.tags) <= 10
    for key, value in plan.tags.items():
        assert 1 <= len(key) <= 128 and TAG_CHARS.match(key), key
        assert len(value) <= 256 and TAG_CHARS.match(value), value
    for key, value in plan.metadata.items():
        assert key.isidentifier() and key.isascii()
        assert value.isascii() and value == value.strip(" ")
        assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in value)
    assert sum(len(k) + len(v) for k, v in plan.metadata.items()) < 8 * 1024
    assert azure_counted(manifest_name(plan.blob_name)) <= 1024
    assert_no_secret(json.dumps(plan.manifest) + json.dumps(plan.metadata) + repr(plan))


def assert_no_secret(text: str) -> None:
    # The signature itself, raw or decoded (the payload's own fields may well contain "sig=").
    assert SIG not in text and unquote(SIG) not in text


# --- payload ---------------------------------------------------------------------------------


def test_a_realistic_notification_parses() -> None:
    note = parse_notification(
        json.dumps(body(taskNumber="42", metadata=[{"key": "a", "value": "b"}], newField=[1])).encode()
    )
    assert note.task_number == 42
    assert note.metadata == (("a", "b"),)
    assert note.model_extra == {"newField": [1]}
    assert note.exported_file_expires_on == LATER


def test_naive_times_are_utc() -> None:
    note = parse_notification(json.dumps(body(exportedFileExpiresOn="2026-11-20T10:00:00")).encode())
    assert note.exported_file_expires_on == datetime(2026, 11, 20, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"taskNumber": True}, "taskNumber"),
        ({"taskNumber": "12a"}, "taskNumber"),
        ({"taskNumber": 1.5}, "taskNumber"),
        ({"taskNumber": -1}, "taskNumber"),
        ({"taskId": "   "}, "taskId"),
        ({"totalPages": -3}, "totalPages"),
        ({"metadata": {"a": {"nested": 1}}}, "metadata"),
        ({"metadata": [{"value": "no key"}]}, "metadata"),
        ({"exportedFileExpiresOn": "tomorrow"}, "exportedFileExpiresOn"),
        ({"exportedFileContentType": ""}, "exportedFileContentType"),
    ],
)
def test_invalid_fields_are_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_notification(json.dumps(body(**overrides)).encode())
    assert caught.value.code == "invalid-payload"
    assert [d["field"] for d in caught.value.details] == [field]
    assert field in caught.value.message


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    text = json.dumps(body()).replace('"taskNumber": 7', f'"taskNumber": 7, "weight": {constant}')
    assert constant in text
    with pytest.raises(PayloadError) as caught:
        parse_notification(text.encode())
    assert caught.value.code == "invalid-json"


def test_a_number_longer_than_python_reads_is_named_as_such_not_called_invalid_json() -> None:
    """Valid JSON all the same: the answer says what is wrong (a number of over 4300 digits) and what to do."""
    text = json.dumps(body()).replace('"taskNumber": 7', '"taskNumber": 7, "erpRef": 1' + "0" * 5000)
    with pytest.raises(PayloadError) as caught:
        parse_notification(text.encode())
    assert caught.value.code == "invalid-payload" and "4300 digits" in caught.value.message, caught.value.message
    with pytest.raises(PayloadError) as as_text:
        parse_notification(json.dumps(body(taskNumber="1" + "0" * 5000)).encode())
    assert [d["field"] for d in as_text.value.details] == ["taskNumber"]
    assert "set_int_max_str_digits" not in json.dumps(as_text.value.details), as_text.value.details


def test_lone_surrogates_are_not_valid_text() -> None:
    with pytest.raises(PayloadError) as caught:
        parse_notification(b'{"taskId": "\\ud800"}')
    assert caught.value.code == "invalid-json"


# --- URL policy ------------------------------------------------------------------------------


def check(url: str, **options: Any) -> Any:
    kwargs: dict[str, Any] = {
        "payload_expires_on": LATER,
        "allowed_hosts": ("*.blob.core.windows.net",),
        "allow_http": False,
        "now": NOW,
    }
    kwargs.update(options)
    return check_source(url, **kwargs)


def test_a_good_link_is_accepted_and_its_expiry_is_the_earlier_one() -> None:
    link = check(URL, payload_expires_on=datetime(2026, 12, 5, tzinfo=UTC))
    assert link.public_url == f"https://{HOST}/exports/doc.pdf"
    assert link.expires_on == datetime(2026, 12, 1, tzinfo=UTC)
    assert len(link.delivery) == 64
    assert SIG not in repr(link)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (URL.replace("https://", "http://"), "https"),
        (URL.replace(HOST, "blob.core.windows.net"), "does not accept files from"),
        (URL.replace(HOST, HOST + ".evil.com"), "does not accept files from"),
        (URL.replace(HOST, "evil.com/" + HOST), "does not accept files from"),
        (URL.replace(HOST, HOST + ":8443"), "does not accept files from"),
        (URL.replace("https://", "https://me@"), "user name"),
        (URL.split("?")[0], "SAS"),
        (URL.replace("&sig=", "&sog="), "SAS"),
        (URL + "&x=" + "a" * 2048, "2048"),
        (URL.replace("doc.pdf", "doc pdf"), "spaces"),
        (URL.replace("se=2026-12-01T00%3A00%3A00Z", "se=someday"), "se"),
        (f"https://{HOST}/?sig=x", "file"),
        ("not a url", "spaces"),
        ("https://[::1/x?sig=1", "valid URL"),
    ],
)
def test_links_outside_the_policy_are_refused(url: str, reason: str) -> None:
    with pytest.raises(SourceError) as caught:
        check(url)
    assert caught.value.code == "source-not-allowed"
    assert reason in caught.value.message
    assert_no_secret(caught.value.message)


def test_expired_sas_or_payload_date_is_link_expired() -> None:
    with pytest.raises(SourceError) as caught:
        check(URL, payload_expires_on=datetime(2026, 12, 5, tzinfo=UTC), now=datetime(2026, 12, 2, tzinfo=UTC))
    assert caught.value.code == "link-expired"
    assert "2026-12-01T00:00:00Z" in caught.value.message
    with pytest.raises(SourceError) as caught:
        check(URL, payload_expires_on=NOW - timedelta(seconds=1))
    assert caught.value.code == "link-expired"


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("a.blob.core.windows.net", 443, True),
        ("a.b.blob.core.windows.net", 443, True),
        ("blob.core.windows.net", 443, False),
        ("a.blob.core.windows.net.evil.com", 443, False),
        ("evilblob.core.windows.net", 443, False),
        ("a.blob.core.windows.net", 444, False),
        ("127.0.0.1", 10000, True),
        ("127.0.0.1", 10001, False),
        ("127.0.0.2", 10000, False),
    ],
)
def test_host_patterns(host: str, port: int, allowed: bool) -> None:
    assert host_allowed(host, port, ("*.blob.core.windows.net", "127.0.0.1:10000"), 443) is allowed


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=60))
def test_no_suffix_trick_gets_past_a_wildcard(prefix: str) -> None:
    host = f"{prefix}.blob.core.windows.net.evil.com"
    assert not host_allowed(host, 443, ("*.blob.core.windows.net",), 443)
    other = f"{prefix}blob.core.windows.net"
    assert host_allowed(other, 443, ("*.blob.core.windows.net",), 443) is False or other.endswith(
        ".blob.core.windows.net"
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_url_policy_never_crashes_and_never_echoes_a_query(url: str) -> None:
    try:
        link = check(url + "?sig=SECRETSIG&se=2027-01-01", allowed_hosts=("*",), allow_http=True)
    except SourceError as exc:
        assert exc.code in {"source-not-allowed", "link-expired"}
        assert "SECRETSIG" not in exc.message
    else:
        assert "SECRETSIG" not in link.public_url


def test_redact_removes_queries_and_signatures() -> None:
    text = f"copy from {URL} failed; sig={SIG}"
    assert_no_secret(redact(text))
    assert "sig=" not in redact(text).replace("sig=REDACTED", "")
    assert "https://exportsacct.blob.core.windows.net/exports/doc.pdf?REDACTED" in redact(text)


# What a URL with a query looks like to a reader: a scheme, "://", a path up to "?" or "#", then "?" and a query.
URL_WITH_QUERY = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s?#\"'<>]*\?(?!REDACTED)[^\s\"'<>]+")


@given(
    st.lists(
        st.sampled_from(["://", "https", "h", "?", "#", "&", "sig=", "x=1", "/", " ", "'", "-", "%3F", "a", "."]),
        max_size=40,
    ).map("".join)
)
@example("://https://other.example/x.pdf?token=SECRET")  # a token starting with "://"
@example("://x#https://other.example/p?code=SECRET")
@example("doc https%3A%2F%2Fo%2Fv.pdf%3Fsig%3DSECRET%26se%3D1")  # sig right after an encoded "?"
@example("token sv=1&%73ig=SECRET")  # the name percent-encoded, no URL around it
@settings(max_examples=400, deadline=None)
def test_no_url_query_survives_scrubbing_in_any_arrangement(text: str) -> None:
    """Whatever surrounds it (a token starting with "://", a fragment, a quote), no URL keeps a query in a
    field value or a log line, and no sig value survives."""
    for scrubbed in (scrub_text(text), redact(text)):
        assert URL_WITH_QUERY.search(scrubbed) is None, (text, scrubbed)
        signature = r"(?i)(s|%73)(i|%69)(g|%67)(=|%3D)(?!REDACTED)[^&\s\"'<>%#]"
        assert re.search(signature, scrubbed) is None, (text, scrubbed)


_LINK = "https://example.blob.core.windows.net/c/x.pdf?sv=2024-11-04&se=2030-01-01T00%3A00%3A00Z&sig="
_LINK_SIGNATURE = "Kk9+AbKxyz0K12"


def _written_as(char: str, form: int) -> str:
    """One character of a signature as a sender may write it: as it is, percent-encoded once or twice, a
    form-decoded "+" (a space), or the KELVIN SIGN for a "K" (NFC turns it back)."""
    forms = [char, f"%{ord(char):02X}", f"%25{ord(char):02x}"]
    forms += {"+": [" "], "K": ["\u212a"]}.get(char, [])
    return forms[form % len(forms)]


@given(st.lists(st.integers(0, 3), min_size=len(_LINK_SIGNATURE), max_size=len(_LINK_SIGNATURE)), st.text(max_size=5))
@example([3 if char == "K" else 0 for char in _LINK_SIGNATURE], "")  # every K a KELVIN SIGN, nothing else changed
@settings(max_examples=300, deadline=None)
def test_the_links_own_signature_written_any_way_is_out_of_the_body_and_the_names_made_from_it(
    forms: list[int], around: str
) -> None:
    """However each character of the link's own signature is written, the body keeps none of it, and
    neither does a blob name made from a field holding it (names are NFC)."""
    link = _LINK + quote(_LINK_SIGNATURE, safe="")
    written = "".join(_written_as(char, form) for char, form in zip(_LINK_SIGNATURE, forms, strict=True))
    sent = body(exportedFileUrl=link, displayName=f"{around}{written}{around}", taskId=written)
    notification = parse_notification(json.dumps(sent).encode())
    for text in (notification.display_name or "", notification.task_id):
        for made in (text, file_name(text, "t", "application/pdf", "/x.pdf"), identity_segment(text)):
            assert _LINK_SIGNATURE not in made, (written, made)


# --- naming, tags, metadata ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("display", "content_type", "expected"),
    [
        ("scan.pdf", "application/pdf", "scan.pdf"),
        ("scan", "application/pdf", "scan.pdf"),
        ("photo.jpeg", "image/jpeg", "photo.jpeg"),
        ("photo", "image/jpeg", "photo.jpg"),
        ("a/b\\c", "image/png", "a_b_c.png"),
        ("trailing.", "application/pdf", "trailing.pdf"),
        ("", "application/pdf", "task-1.pdf"),
        (None, "application/pdf", "task-1.pdf"),
        ("Relatório", "application/pdf", "Relatório.pdf"),
        ("data", "application/x-custom", "data.bin"),
        # Code points Azure refuses in a blob name (private use, noncharacters): a macOS Apple logo, say.
        ("Report \uf8ff\ufdd0\U000f0041\U0001ffff \U0001f600", "application/pdf", "Report ____ \U0001f600.pdf"),
    ],
)
def test_file_names(display: str | None, content_type: str, expected: str) -> None:
    assert file_name(display, "task-1", content_type, "/exports/source.bin") == expected


def test_tags_fold_accents_and_skip_collisions() -> None:
    tags, dropped = index_tags(
        [("taskId", "t-1")],
        (("taskId", "x"), ("Relatório", "Ação #1"), ("Relatorio", "dup"), ("", "empty")),
    )
    assert tags == {"taskId": "t-1", "Relatorio": "Acao _1"}
    assert [d["key"] for d in dropped] == ["taskId", "Relatorio", ""]
    assert fold_tag_text("x" * 300, 256) == "x" * 256


def test_metadata_values_are_ascii_and_reversible() -> None:
    for text in ["Bezpečnost", " leading and trailing ", "100% sure", "日本語", "a\nb"]:
        encoded = metadata_value(text)
        assert encoded.isascii() and encoded == encoded.strip()
        assert unquote(encoded) == text


def test_a_long_display_name_stays_inside_the_limits() -> None:
    plan = plan_for(body(displayName="Ž" * 4000, metadata={f"k{i}": "v" * 1000 for i in range(30)}))
    assert isinstance(plan, CopyPlan)
    assert_legal(plan)


def azure_counted(name: str) -> int:
    """A name's length as Azure Storage counts it: UTF-16 code units (a character outside the BMP, an emoji
    say, counts two; a name of 513 of them is refused with 400 OutOfRangeInput)."""
    return len(name.encode("utf-16-le")) // 2


@pytest.mark.parametrize(
    "template", ["{workspaceId}/{taskId}/{displayName}/{fileName}", "{workspaceId}/{taskId}/{fileName}"]
)
def test_a_display_name_of_emoji_is_cut_to_azures_1024_as_azure_counts_them(template: str) -> None:
    """Emoji count two toward Azure's 1024 (UTF-16): a name of 700 code points can be 1 300 of Azure's
    characters, and every copy of it would be refused, the document sent back for review each time."""
    config = Settings(destination_connection_string="UseDevelopmentStorage=true", blob_name_template=template)
    ids = {"workspaceId": "\U0001f4c1" * 128, "taskId": "\U0001f4c4" * 128}
    plan = plan_for(body(displayName="\U0001f600" * 600, **ids), config)
    assert isinstance(plan, CopyPlan)
    assert azure_counted(plan.blob_name) <= 1019 and azure_counted(manifest_name(plan.blob_name)) <= 1024
    assert plan.blob_name.endswith("\U0001f600.pdf") and plan.blob_name.split("/")[:2] == [
        identity_segment(ids["workspaceId"]),
        identity_segment(ids["taskId"]),
    ]


def test_a_cut_with_a_hash_keeps_an_extension_of_emoji_inside_the_limit() -> None:
    """What follows the display name's last dot is kept whole as its extension when the type gives none; ten
    emoji there count twenty toward the limit, and the cut with a hash leaves room for all of them."""
    config = Settings(
        destination_connection_string="UseDevelopmentStorage=true",
        blob_name_template="{workspaceId}/" + "p" * 731 + "/{taskId}/{fileName}",
    )
    document = body(
        workspaceId="\U0001f4c1" * 128, taskId="\U0001f4c4" * 128, displayName="a." + "\U0001f600" * 10,
        exportedFileContentType="application/octet-stream", exportedFileUrl=NO_EXTENSION_URL,
    )  # fmt: skip
    plan = plan_for(document, config)
    assert isinstance(plan, CopyPlan) and azure_counted(plan.blob_name) <= 1019, plan


def test_ids_outside_the_bmp_that_leave_no_room_still_never_share_a_name() -> None:
    """The settings leave room for ids of 128 characters of the Basic Multilingual Plane; ids of emoji count
    twice that. The cut that then reaches the ids keeps a hash of the whole name: two tasks, two names."""
    config = Settings(
        destination_connection_string="UseDevelopmentStorage=true",
        blob_name_template="{workspaceId}/" + "p" * 731 + "/{taskId}/{fileName}",
    )
    emoji = "\U0001f600"
    plans = [
        plan_for(body(workspaceId=emoji * 128, taskId=emoji * 127 + last, displayName="invoice"), config)
        for last in "ab"
    ]
    names = [plan.blob_name for plan in plans if isinstance(plan, CopyPlan)]
    assert len(set(names)) == 2 and all(azure_counted(name) <= 1019 for name in names), names
    assert all(name.endswith(".pdf") and "\ud83d" not in name for name in names)


def test_a_name_escaped_out_of_the_records_folder_stays_inside_the_limit() -> None:
    """A first segment named like the records' folder gets "~" and a hash (17 characters): the name is cut
    to leave room for them, with the ids at their longest too."""
    config = Settings(
        destination_connection_string="UseDevelopmentStorage=true",
        blob_name_template="{displayName}/" + "p" * 715 + "/{workspaceId}/{taskId}/{fileName}",
    )
    plan = plan_for(body(displayName=".smartdocumentor", workspaceId="w" * 128, taskId="t" * 128), config)
    assert isinstance(plan, CopyPlan)
    assert plan.blob_name.startswith(".smartdocumentor~") and azure_counted(plan.blob_name) <= 1019, plan.blob_name
    assert plan.blob_name.split("/")[-3:-1] == ["w" * 128, "t" * 128]


def test_manifest_drops_queries_from_extra_fields() -> None:
    plan = plan_for(body(previewUrl=URL))
    assert isinstance(plan, CopyPlan)
    assert plan.manifest["previewUrl"] == f"https://{HOST}/exports/doc.pdf?REDACTED"  # the query, nothing else
    assert plan.manifest["exportedFileUrl"] == f"https://{HOST}/exports/doc.pdf"


# --- properties over whole bodies ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
any_text = st.text(max_size=300)
notifications = st.fixed_dictionaries(
    {
        "taskId": st.one_of(any_text.filter(lambda s: s.strip()), st.uuids().map(str)),
        "taskNumber": st.one_of(st.integers(min_value=0, max_value=10**12), st.integers(0, 999).map(str)),
        "workspaceId": st.one_of(any_text.filter(lambda s: s.strip()), st.uuids().map(str)),
        "exportedFileUrl": st.just(URL),
        "exportedFileContentType": st.sampled_from(["application/pdf", "image/jpeg", "image/png", "text/x-odd"]),
        "exportedFileExpiresOn": st.just(LATER.isoformat()),
    },
    optional={
        "displayName": st.one_of(st.none(), any_text),
        "totalPages": st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
        "metadata": st.one_of(
            st.none(),
            st.dictionaries(any_text, any_text, max_size=15),
            st.lists(st.fixed_dictionaries({"key": any_text, "value": any_text}), max_size=15),
        ),
        "lastCheckoutByUserName": st.one_of(st.none(), any_text),
        "extra": json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notifications)
def test_any_well_formed_notification_gives_a_legal_plan(document: dict[str, Any]) -> None:
    result = plan_for(document)
    if isinstance(result, Outcome):
        # Only text that is not valid Unicode (a lone surrogate) may still be refused here.
        assert result.status_code == 400, result.body
        return
    assert_legal(result)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(list(body())), json_values, max_size=8)))
def test_any_json_body_gives_a_4xx_or_a_legal_plan(document: Any) -> None:
    result = prepare(json.dumps(document).encode(), {}, SETTINGS, now=NOW)
    if isinstance(result, Outcome):
        assert 400 <= result.status_code < 500
        assert result.body["status"] == "rejected"
        assert result.body["message"]
        assert_no_secret(json.dumps(result.body))
    else:
        assert_legal(result)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_4xx_or_a_legal_plan(raw: bytes) -> None:
    result = prepare(raw, {}, SETTINGS, now=NOW)
    assert isinstance(result, Outcome) and result.status_code == 400


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(any_text, any_text), max_size=30))
def test_tags_always_satisfy_azure(metadata: list[tuple[str, str]]) -> None:
    tags, dropped = index_tags([("taskId", "t")], tuple(metadata))
    assert len(tags) <= 10
    assert len(tags) + len(dropped) == 1 + len(metadata)
    for key, value in tags.items():
        assert 1 <= len(key) <= 128 and TAG_CHARS.match(key)
        assert len(value) <= 256 and TAG_CHARS.match(value)


# --- settings ---------------------------------------------------------------------------------


def test_settings_name_the_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.setenv("ALLOWED_SOURCE_HOSTS", "a.example.com, *.blob.core.windows.net")
    monkeypatch.setenv("MAX_BODY_BYTES", "not-a-number")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.setting == "MAX_BODY_BYTES"
    monkeypatch.delenv("MAX_BODY_BYTES")
    loaded = load_settings()
    assert loaded.allowed_source_hosts == ("a.example.com", "*.blob.core.windows.net")


def test_exactly_one_destination(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESTINATION_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.setenv("DESTINATION_ACCOUNT_URL", "https://acct.blob.core.windows.net")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "DESTINATION_ACCOUNT_URL" in caught.value.message
    monkeypatch.delenv("DESTINATION_CONNECTION_STRING")
    assert load_settings().destination_account_url == "https://acct.blob.core.windows.net"


def test_a_utf8_byte_order_mark_is_tolerated() -> None:
    note = parse_notification(b"\xef\xbb\xbf" + json.dumps(body()).encode())
    assert note.task_number == 7


# --- names are injective per task ------------------------------------------------------------

ids = st.text(min_size=1, max_size=400).filter(lambda s: s.strip() == s and s.strip())


def name_for(workspace_id: str, task_id: str) -> str:
    result = plan_for(body(workspaceId=workspace_id, taskId=task_id))
    assert isinstance(result, CopyPlan), result
    return result.blob_name


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("w", "INV/2026/7"), ("w", "INV_2026_7")),
        (("w", "task-17."), ("w", "task-17")),
        (("acme:legal", "t"), ("acme_legal", "t")),
        (("w", "x" * 300 + "a"), ("w", "x" * 300 + "b")),
        (("w", "caf\u00e9"), ("w", "cafe\u0301")),  # the same text, NFC and NFD
        (("w", "a~b"), ("w", "a_b")),
    ],
)
def test_tasks_that_look_alike_get_different_names(first: tuple[str, str], second: tuple[str, str]) -> None:
    one, two = name_for(*first), name_for(*second)
    assert one != two
    assert one.endswith(".pdf") and two.endswith(".pdf")


def test_a_plain_guid_stays_readable() -> None:
    task = "9bbeda52-e5d8-4def-b1ba-6cba90a710bd"
    assert name_for("2f0c7a55-8f0e-4c1b-9a43-5b1f0c6d3e21", task).split("/")[1] == task


@settings(max_examples=300, deadline=None)
@given(ids, ids, ids, ids)
def test_different_ids_never_share_a_name(w1: str, t1: str, w2: str, t2: str) -> None:
    assume((w1, t1) != (w2, t2))
    one, two = plan_for(body(workspaceId=w1, taskId=t1)), plan_for(body(workspaceId=w2, taskId=t2))
    if isinstance(one, CopyPlan) and isinstance(two, CopyPlan):
        assert one.blob_name != two.blob_name
        assert one.blob_name.endswith(".pdf") and len(one.blob_name) <= 1019


NO_EXTENSION_URL = URL.replace("/doc.pdf?", "/doc?")


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=4096) | st.builds(lambda n: "s." + "x" * n, st.integers(0, 300)),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=0, max_value=1000),
    st.sampled_from([("application/pdf", URL), ("application/octet-stream", NO_EXTENSION_URL)]),
    ids,
    ids,
)
@example("D" * 300, 4, 0, ("application/pdf", URL), "task-1", "task-2")
@example("\U0001f600" * 300, 3, 0, ("application/pdf", URL), "\U0001f4c4" * 128, "t" * 128)
@example("D" * 300, 12, 0, ("application/pdf", URL), "t" * 400, "t" * 399)
@example("s." + "x" * 253, 0, 700, ("application/octet-stream", NO_EXTENSION_URL), "t" * 128, "t" * 127 + "u")
def test_no_cut_takes_an_id_from_a_name_nor_the_extension(
    display: str, repeats: int, prefix: int, kind: tuple[str, str], task: str, other: str
) -> None:
    """However long the display name (dots in it too), the template's own text, and however often the
    template repeats the display name, a name the settings allow keeps both ids as whole segments (two
    tasks never share a name) and the extension."""
    assume(task != other)
    segments = ["p" * prefix] if prefix else []
    template = "/".join([*segments, *["{displayName}"] * repeats, "{workspaceId}/{taskId}/{fileName}"])
    try:
        config = Settings(destination_connection_string="UseDevelopmentStorage=true", blob_name_template=template)
    except ValueError:
        return  # a template that leaves no room is refused at start
    content_type, url = kind
    made = [
        plan_for(body(displayName=display, taskId=t, exportedFileContentType=content_type, exportedFileUrl=url), config)
        for t in (task, other)
    ]
    one, two = made
    if not isinstance(one, CopyPlan) or not isinstance(two, CopyPlan):
        return  # an id the payload refuses
    assert one.blob_name != two.blob_name
    at = len(segments) + repeats
    for plan, task_id in ((one, task), (two, other)):
        assert azure_counted(plan.blob_name) <= 1019
        assert plan.blob_name.split("/")[at : at + 2] == ["ws-1", identity_segment(task_id)]
        if content_type == "application/pdf":
            assert plan.blob_name.endswith(".pdf")


def test_a_template_that_leaves_no_room_for_a_file_name_is_refused_at_start() -> None:
    template = "/".join(["{workspaceId}"] + ["{taskId}"] * 7 + ["{fileName}"])
    with pytest.raises(ValueError, match="is too long: with a workspaceId and a taskId of 128 characters"):
        Settings(destination_connection_string="UseDevelopmentStorage=true", blob_name_template=template)


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("{workspaceId}/../{taskId}/{fileName}", "'.' or '..' segment"),
        ("{workspaceId}/./{taskId}/{fileName}", "'.' or '..' segment"),
        ("{workspaceId}/{taskId}/{fileName}.", "must not end with '.'"),
        ("{workspaceId}/a\x01/{taskId}/{fileName}", "control characters"),
    ],
)
def test_a_template_whose_own_text_would_give_names_azure_or_a_url_alters_is_refused_at_start(
    template: str, said: str
) -> None:
    """A URL folds a '..' segment away before the request leaves (ws-1/../T and ws-2/../T both reach T: two
    tasks, one name); a name ending in '.' is one Azure advises against and this receiver never gives."""
    with pytest.raises(ValueError, match=re.escape(said)):
        Settings(destination_connection_string="UseDevelopmentStorage=true", blob_name_template=template)


# --- no input crashes ------------------------------------------------------------------------

EXTREME_DATES = ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999-23:59"]


@pytest.mark.parametrize("value", EXTREME_DATES)
@pytest.mark.parametrize("field", ["exportedFileExpiresOn", "lastCheckedOutUntil"])
def test_dates_outside_the_utc_range_are_a_clear_400(field: str, value: str) -> None:
    result = plan_for(body(**{field: value}))
    assert isinstance(result, Outcome) and result.status_code == 400, result
    assert result.body["error"] == "invalid-payload"
    assert field in result.body["message"]


@pytest.mark.parametrize("value", EXTREME_DATES)
def test_a_sas_expiry_outside_the_utc_range_is_refused(value: str) -> None:
    result = plan_for(body(exportedFileUrl=URL.replace("se=", f"se={value}&x=")))
    assert isinstance(result, Outcome) and result.status_code == 400, result
    assert result.body["error"] == "source-not-allowed"


@pytest.mark.parametrize("depth", [33, 256, 5000])
def test_deep_nesting_is_a_clear_400(depth: int) -> None:
    nested = '{"a": [' * depth + '"x"' + "]}" * depth  # built as text: json.dumps itself stops near 1000
    raw = json.dumps(body(extra="HOLE")).replace('"HOLE"', nested).encode()
    result = plan_for(raw)
    assert isinstance(result, Outcome) and result.status_code == 400, result
    assert result.body["error"] in ("invalid-payload", "invalid-json")


def test_moderate_nesting_is_kept() -> None:
    nested: Any = "x"
    for _ in range(10):
        nested = {"a": nested}
    result = plan_for(body(extra=nested))
    assert isinstance(result, CopyPlan)
    assert result.manifest["extra"] == nested


# --- the link's signature is never repeated ---------------------------------------------------


def test_the_signature_is_scrubbed_from_every_field_that_repeats_the_link() -> None:
    signature = parse_qs(URL.split("?", 1)[1])["sig"][0]
    result = plan_for(
        body(
            displayName=f"see {URL}",
            taskId=f"T {URL}",
            lastCheckoutByUserName=signature,
            metadata={"link": URL, signature: "key", "encoded": quote(URL, safe="")},
            extra={"nested": [URL]},
        )
    )
    assert isinstance(result, CopyPlan)
    everything = json.dumps(
        [result.blob_name, result.tags, result.metadata, result.manifest, result.task_id, repr(result)]
    )
    assert signature not in everything
    assert quote(signature, safe="") not in everything
    assert "REDACTED" in everything


def test_the_signature_is_scrubbed_even_with_its_letters_percent_encoded() -> None:
    signature = unquote(parse_qs(URL.split("?", 1)[1])["sig"][0])
    odd = f"%{ord(signature[0]):02X}" + signature[1:]  # the same signature to the service
    link = URL.replace(f"sig={SIG}", f"sig={odd}")
    result = plan_for(body(exportedFileUrl=link, displayName=odd, metadata={"ref": link}))
    assert isinstance(result, CopyPlan)
    everything = json.dumps([result.blob_name, result.tags, result.metadata, result.manifest])
    assert signature[1:].rstrip("=") not in everything


# --------------------------------------------------------------------------- the queue message's name

DATED = Settings(
    destination_connection_string="UseDevelopmentStorage=true",
    blob_name_template="{yyyy}/{workspaceId}/{taskId}/{fileName}",
)


def queued_plan(raw: bytes, sent_with: Settings, run_with: Settings) -> CopyPlan:
    sent = plan_for(raw, sent_with)
    assert isinstance(sent, CopyPlan)
    found = read_message(message(raw, NOW, plan=sent).encode())
    assert isinstance(found, Message)
    plan = plan_message(found, run_with)
    assert isinstance(plan, CopyPlan)
    return plan


def test_a_queued_delivery_keeps_the_name_it_was_given_after_the_template_changes() -> None:
    raw = json.dumps(body(displayName="Scan")).encode()
    plan = queued_plan(raw, SETTINGS, DATED)
    expected = "ws-1/8c1f0f64-2b1e-4a8e-9c55-0d7e2c1f9a10/Scan.pdf"
    assert plan.blob_name == expected
    assert plan.manifest["blob"] == f"{SETTINGS.destination_container}/{expected}"
    # Everything else is what today's settings make of the notification.
    today = plan_for(raw, DATED)
    assert isinstance(today, CopyPlan) and today.blob_name.startswith("2026/")
    assert (plan.tags, plan.metadata, plan.delivery) == (today.tags, today.metadata, today.delivery)


@pytest.mark.parametrize(
    "name",
    [
        ".smartdocumentor/tasks/ws-1/task.json",
        "ws-1/another-task/Scan.pdf",
        ".SmartDocumentor/x.pdf",
        "ws-1/doc.pdf.json",
        "ws-1/../x.pdf",
        "ws-1//x.pdf",
        "ws-1/x.pdf.",
        "ws-1\\x.pdf",
        "ws-1/x\x00.pdf",
        "ws-1/x\ue000.pdf",
        "",
        "a" * 1021,
    ],
)
def test_a_queue_message_naming_a_name_the_receiver_never_gives_is_planned_under_todays_template(name: str) -> None:
    raw = json.dumps(body(displayName="Scan")).encode()
    plan = plan_message(Message(raw, NOW, name), DATED)
    today = plan_for(raw, DATED)
    assert isinstance(plan, CopyPlan) and isinstance(today, CopyPlan)
    assert plan.blob_name == today.blob_name and plan.manifest == today.manifest


def test_a_queue_message_without_a_name_is_planned_under_todays_template() -> None:
    raw = json.dumps(body(displayName="Scan")).encode()
    text = json.dumps({"v": 2, "receivedAt": NOW.isoformat(), "body": raw.decode()})
    found = read_message(text.encode())
    assert found == Message(raw, NOW, None)


def test_a_queued_name_of_a_workspace_named_like_the_records_folder_is_kept() -> None:
    raw = json.dumps(body(displayName="Scan", workspaceId=".smartdocumentor")).encode()
    plan = queued_plan(raw, SETTINGS, DATED)
    assert plan.blob_name.startswith(".smartdocumentor~") and plan.blob_name.endswith("/Scan.pdf")


def test_a_queued_name_over_1019_characters_is_kept_whatever_write_manifest_says_now() -> None:
    raw = json.dumps(body(displayName="Scan")).encode()
    name = "ws-1/8c1f0f64-2b1e-4a8e-9c55-0d7e2c1f9a10/" + "D" * 975 + ".pdf"
    assert 1019 < len(name) <= 1024
    plan = plan_message(Message(raw, NOW, name), DATED)
    assert isinstance(plan, CopyPlan) and plan.blob_name == name


@pytest.mark.parametrize("path", ["/c/sig={sig}/f.pdf", "/c/f{sig}.pdf", "/c/{encoded}/f.pdf"])
def test_a_link_whose_path_holds_its_own_signature_never_shows_it(path: str) -> None:
    sig = "Kb3xQ9Zt7Lm2Pq8Rw1YvN4sT6uJ0aEdGhIkOpXcVbM="
    shown = path.format(sig=sig.rstrip("="), encoded=quote(sig, safe=""))
    link = check(f"https://{HOST}{shown}?sv=1&se=2099-01-01&sig={quote(sig, safe='')}")
    assert sig.rstrip("=")[:20] not in unquote(link.public_url), link.public_url
    assert link.public_url.startswith(f"https://{HOST}/c/"), link.public_url
