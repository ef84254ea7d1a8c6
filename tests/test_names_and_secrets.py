"""Blob names that must not collide across tasks, the link's signature in every disguise, and a
manifest faithful to the payload (docs/reference.md, "What is stored" and "Scaling and security"), through the real
function app against Azurite."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from azure.storage.blob import ContainerClient

from receiver.models import RECORD_PREFIX
from receiver.plan import identity_segment
from receiver.runtime import RUNTIME

from .conftest import Exports, Webhook, assert_stored, name_of, notification
from .conftest import every_blob as files

# --- names: two different (workspaceId, taskId) pairs never share a blob ---

# Found by brute force in ~1 s (1e6 sha256): the 10-hex-digit (40-bit) hash of identity_segment
# collides, and both ids fold to the same readable 117-character prefix.
# These two ids shared one name while the hash was 40 bits (found in about a second of searching).
COLLIDING_TASK_IDS = ("T" * 130 + "-2280", "T" * 130 + "-653252")


async def test_two_task_ids_that_collided_under_a_40_bit_hash_get_their_own_names(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    one_id, two_id = COLLIDING_TASK_IDS
    assert identity_segment(one_id) != identity_segment(two_id)
    one = notification(exports.publish(b"%PDF task one"), taskId=one_id)
    two = notification(exports.publish(b"%PDF task two"), taskId=two_id)
    answers = [await webhook.post(one), await webhook.post(two)]
    assert [a.status for a in answers] == [200, 200], [a.body for a in answers]
    # Different (workspaceId, taskId) pairs never share a blob name (docs/reference.md).
    assert name_of(answers[0].body) != name_of(answers[1].body)
    assert_stored(destination, name_of(answers[0].body), b"%PDF task one", one["exportedFileUrl"])
    assert_stored(destination, name_of(answers[1].body), b"%PDF task two", two["exportedFileUrl"])


@pytest.mark.parametrize(
    ("template", "first", "second"),
    [
        # the taskId is not a whole path segment: "a" + "_" + "b_c.pdf" == "a_b" + "_" + "c.pdf"
        (
            "{workspaceId}/{taskId}_{fileName}",
            {"taskId": "a", "displayName": "b_c"},
            {"taskId": "a_b", "displayName": "c"},
        ),
        # workspaceId and taskId share one segment
        (
            "{workspaceId}-{taskId}/{fileName}",
            {"workspaceId": "acme-legal", "taskId": "7"},
            {"workspaceId": "acme", "taskId": "legal-7"},
        ),
        # no {workspaceId}: accepted by the settings validator
        ("{taskId}/{fileName}", {"workspaceId": "ws-one", "taskId": "t-1"}, {"workspaceId": "ws-two", "taskId": "t-1"}),
    ],
    ids=["taskId_fileName", "workspace-task", "no-workspace"],
)
async def test_no_accepted_template_lets_another_task_overwrite_a_stored_file(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
    template: str,
    first: dict[str, str],
    second: dict[str, str],
) -> None:
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", template)
    await RUNTIME.reset()
    one = notification(exports.publish(b"%PDF task one"), **first)
    two = notification(exports.publish(b"%PDF task two"), **second)
    a = await webhook.post(one)
    if a.status == 500 and a.body.get("error") == "misconfigured":
        return  # refusing such a template is a fine answer
    b = await webhook.post(two)
    assert (a.status, b.status) == (200, 200), (a.body, b.body)
    assert name_of(a.body) != name_of(b.body), f"two tasks, one blob: {name_of(a.body)}"
    assert_stored(destination, name_of(a.body), b"%PDF task one", one["exportedFileUrl"])


async def test_a_file_named_like_another_tasks_manifest_is_never_overwritten_by_it(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Template {workspaceId}/{taskId}: task "a.json"'s file would be "w/a.json", task "a"'s manifest
    name. Either the names differ, or the manifest write leaves a blob that is not a manifest alone."""
    monkeypatch.setenv("BLOB_NAME_TEMPLATE", "{workspaceId}/{taskId}")
    await RUNTIME.reset()
    other = notification(exports.publish(b"%PDF task a.json"), workspaceId="w", taskId="a.json")
    mine = notification(exports.publish(b"%PDF task a"), workspaceId="w", taskId="a")
    first = await webhook.post(other)
    if first.status == 500 and first.body.get("error") == "misconfigured":
        return
    second = await webhook.post(mine)
    assert (first.status, second.status) == (200, 200), (first.body, second.body)
    blob = destination.get_blob_client(name_of(first.body))
    stored = blob.download_blob().readall()
    assert stored == b"%PDF task a.json", f"task a.json's stored file now holds: {stored[:60]!r}"
    assert name_of(first.body) != f"{name_of(second.body)}.json", files(destination)


# --- secrets: the signature never leaves the link, whatever form it is sent in ---


def clean_signature_url(exports: Exports) -> tuple[str, str]:
    """An export link whose signature has no '+' or '/' (about 1 in 4), so its 43 significant
    characters appear verbatim in any encoding of the URL. Returns (url, signature)."""
    name = exports.publish().split("?", 1)[0].split("/anonymized-exports/", 1)[1]
    for minutes in range(1, 400):
        url = exports.sas_url(name, expires_in=timedelta(hours=2, minutes=minutes))
        sig = parse_qs(urlsplit(url).query)["sig"][0]
        if "+" not in sig and "/" not in sig:
            return url, sig
    raise AssertionError("no clean signature found")


def everything_stored(destination: ContainerClient) -> str:
    """Names, metadata, tags and contents of every blob, the task records included."""
    names = sorted(blob.name for blob in destination.list_blobs())
    assert any(name.startswith(RECORD_PREFIX) for name in names)
    parts: list[Any] = [names]
    for name in names:
        blob = destination.get_blob_client(name)
        props = blob.get_blob_properties()
        parts += [props.metadata, blob.get_blob_tags(), blob.download_blob().readall().decode("latin-1")]
    return json.dumps(parts)


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        r.getMessage() + " " + json.dumps({k: str(v) for k, v in r.__dict__.items()}) for r in caplog.records
    )


@pytest.mark.parametrize(
    "variant",
    [
        "top-level-field-named-with-the-link",
        "top-level-field-named-with-the-signature",
        "percent-encoded-link-in-displayName",  # encodeURIComponent(url) / quote(url, safe="")
        "percent-encoded-link-in-metadata",
        "percent-encoded-link-in-taskId",
        "signature-without-its-padding",
        "lower-case-percent-escapes",
    ],
)
async def test_the_signature_never_leaves_the_link_in_any_form(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
    variant: str,
) -> None:
    url, sig = clean_signature_url(exports)
    core = sig.rstrip("=")  # base64 padding carries no information: these 43 characters are the secret
    encoded = quote(url, safe="")
    payload = notification(url)
    if variant == "top-level-field-named-with-the-link":
        payload[url] = "extra field"
    elif variant == "top-level-field-named-with-the-signature":
        payload[sig] = "extra field"
    elif variant == "percent-encoded-link-in-displayName":
        payload["displayName"] = encoded
    elif variant == "percent-encoded-link-in-metadata":
        payload["metadata"] = {"link": encoded}
    elif variant == "percent-encoded-link-in-taskId":
        payload["taskId"] = encoded
    elif variant == "signature-without-its-padding":
        payload["displayName"] = core
        payload["metadata"] = {"ref": core}
    else:
        payload["displayName"] = quote(sig, safe="").lower().replace(core.lower(), core)  # ...%3d
    caplog.clear()

    response = await webhook.post(payload)

    assert response.status == 200, response.body
    leaks = {
        "response": core in response.text,
        "storage (names, metadata, tags, manifest)": core in everything_stored(destination),
        "logs": core in log_text(caplog),
    }
    assert not any(leaks.values()), leaks


async def test_no_query_of_another_url_in_the_payload_is_named_tagged_stored_or_logged(
    configured: dict[str, str],
    exports: Exports,
    webhook: Webhook,
    destination: ContainerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another link's SAS, in displayName, a metadata value, an extra field and an extra field's name: its
    query is REDACTED before anything is named, tagged, stored or logged (docs/reference.md, Secrets)."""
    payload = notification(exports.publish(), displayName="doc https://other.example/x.pdf?sv=1&sig=SECRETA1 end")
    payload["metadata"] = {
        "note": "see https://other.example/y.pdf?sv=1&sig=SECRETB2",
        "encoded": "https%3A%2F%2Fother.example%2Fv.pdf%3Fsv%3D1%26sig%3DSECRETE5%26se%3D2027",
        "quoted": "https://other.example/q.pdf?rscd=attachment;filename='q.pdf'&sig=SECRETF6&se=2027",
        "bare": "sv=2024-11-04&sig=SECRETG7",
        "encoded-sig-first": "https%3A%2F%2Fother.example%2Fv.pdf%3Fsig%3DSECRETH8%26se%3D2027",
    }
    payload["comment"] = {"nested": ["https://other.example/z.pdf?sig=SECRETC3"]}
    payload["https://other.example/w?sig=SECRETD4"] = "extra field named with a link"
    caplog.clear()

    response = await webhook.post(payload)

    assert response.status == 200, response.body
    seen = "\n".join([response.text, everything_stored(destination), log_text(caplog)])
    assert "SECRET" not in seen, [line for line in seen.splitlines() if "SECRET" in line][:3]
    manifest = json.loads(destination.get_blob_client(f"{name_of(response.body)}.json").download_blob().readall())
    assert manifest["displayName"] == "doc https://other.example/x.pdf?REDACTED end", manifest["displayName"]
    assert manifest["metadata"]["note"] == "see https://other.example/y.pdf?REDACTED", manifest["metadata"]


async def test_two_task_ids_that_differ_only_in_a_url_query_stay_two_tasks(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Ids are opaque: a query in them is kept (only a `sig` value would go), so two tasks whose ids differ
    there get two records and two names, and neither file replaces the other."""
    first = await webhook.post(notification(exports.publish(b"%PDF one"), taskId="ref://erp/doc?id=1001"))
    second = await webhook.post(notification(exports.publish(b"%PDF two"), taskId="ref://erp/doc?id=1002"))
    assert first.status == second.status == 200, (first.body, second.body)
    assert (first.body["taskId"], second.body["taskId"]) == ("ref://erp/doc?id=1001", "ref://erp/doc?id=1002")
    names = {name_of(first.body), name_of(second.body)}
    assert len(names) == 2 and names <= set(files(destination)), (names, files(destination))


async def test_two_task_ids_that_differ_only_in_a_sig_value_stay_two_tasks_and_neither_shows_it(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """A `sig` value in an id becomes REDACTED and a hash of it: the id never shows it, and two ids that
    differ only there still name two tasks, two records and two files."""
    first = await webhook.post(notification(exports.publish(b"%PDF one"), taskId="lot-sig=SECRETA"))
    second = await webhook.post(notification(exports.publish(b"%PDF two"), taskId="lot-sig=SECRETB"))
    assert first.status == second.status == 200, (first.body, second.body)
    ids = {first.body["taskId"], second.body["taskId"]}
    assert len(ids) == 2 and all(i.startswith("lot-sig=REDACTED~") for i in ids), ids
    names = {name_of(first.body), name_of(second.body)}
    assert len(names) == 2 and names <= set(files(destination)), (names, files(destination))
    assert "SECRET" not in everything_stored(destination)


async def test_a_link_too_long_to_accept_is_refused_and_its_signature_repeated_in_the_task_id_is_not_logged(
    configured: dict[str, str], webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    """A link over 2048 characters is refused (400) before its secret's pattern is built; the log line of the
    refusal then names no task at all rather than a taskId that repeats the link's signature."""
    core = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef+xy="
    url = f"https://exports.blob.core.windows.net/c/f.pdf?sv=2024-01-01&sr=b&sp=r&pad={'p' * 2100}&sig={quote(core)}"
    for task in (core, "task-" + quote(core, safe="")):
        caplog.clear()
        response = await webhook.post(notification(url, taskId=task))
        assert (response.status, response.body["error"]) == (400, "source-not-allowed"), response.body
        assert "2048" in response.body["message"]
        logged = log_text(caplog)
        assert core not in logged and quote(core, safe="") not in logged and core not in response.text


# --- the manifest keeps the payload's text as sent ---


async def test_a_display_name_with_a_question_mark_and_a_link_is_kept_whole_in_the_manifest(
    configured: dict[str, str], exports: Exports, webhook: Webhook, destination: ContainerClient
) -> None:
    """Only the export link's query is scrubbed: ordinary text around another link, with a '?',
    stays whole in displayName, the auditing fields and extra fields."""
    display = "Contrato final? Ver https://intranet.example/doc antes de assinar"
    payload = notification(exports.publish(), displayName=display, lastCheckoutByUserName="Ana? https://x.example")
    payload["comment"] = "Reviewed? yes, see https://intranet.example/review"
    response = await webhook.post(payload)
    assert response.status == 200, response.body
    manifest = json.loads(destination.get_blob_client(f"{name_of(response.body)}.json").download_blob().readall())
    kept = {k: manifest.get(k) for k in ("displayName", "lastCheckoutByUserName", "comment")}
    assert kept == {k: payload[k] for k in kept}, kept


def test_an_id_kept_whole_in_a_record_never_shields_a_secret_around_it() -> None:
    """A record's own ids stay whole in its reason (a command there must find the task), but only where each stands
    as a word: an id that is part of a signature or of a URL (`sig`, `://`) leaves it to be redacted."""
    from receiver.source import redact_keeping

    command = "run python -m ops find --task 'ref://erp/doc?id=7' --workspace ws-1"
    assert redact_keeping(command, ["ref://erp/doc?id=7", "ws-1"]) == command
    for kept in (["sig"], ["://"], ["https"], ["sig", "://"], ["sig=SECRETSIG"]):
        text = f"copy from https://exports.blob.core.windows.net/c/f.pdf?sv=1&sig=SECRETSIG failed; task {kept[0]}"
        assert "SECRETSIG" not in redact_keeping(text, kept), kept
