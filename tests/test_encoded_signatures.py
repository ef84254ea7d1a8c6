"""the SAS signature must never be stored or logged (docs/reference.md, "Secrets":
"even when the sender repeats the link (or its sig, in any encoding) in displayName, taskId, a
metadata key or value or any other field")."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from sim.world import World


def _everything(world: World) -> str:
    parts = []
    for name in world.storage.names():
        stored = world.storage.stored(name)
        assert stored is not None
        parts.append(name)
        parts.append(json.dumps(dict(stored.metadata)))
        parts.append(json.dumps(world.storage.tags(name) or {}))
        if name.endswith(".json"):
            parts.append(stored.data.decode("utf-8", "replace"))
    return "\n".join(parts)


async def test_a_percent_encoded_sig_name_is_still_kept_out_of_storage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``%73ig=`` is ``sig=`` to the service (and to the receiver's own URL check, parse_qs), but
    link_secret_pattern only looks for a parameter literally named ``sig``: no pattern, nothing redacted."""
    caplog.set_level(logging.DEBUG)
    world = World.make()
    plain = world.export("task-1", "x.pdf")
    signature = parse_qs(urlsplit(plain.url).query)["sig"][0]
    url = plain.url.replace("sig=", "%73ig=")
    assert parse_qs(urlsplit(url).query)["sig"][0] == signature
    body = {
        **plain.payload,
        "exportedFileUrl": url,
        "displayName": f"{signature}.pdf",
        "metadata": {"note": signature},
    }
    answer = await world.post(json.dumps(body).encode())
    assert answer.status_code == 200, answer.body
    stored = _everything(world)
    leaks = [text for text in (stored, json.dumps(answer.body), caplog.text) if signature in text]
    assert not leaks, f"the SAS signature was stored or logged: {stored[:400]}"


def _fullwidth(text: str) -> str:
    """ASCII as its fullwidth forms (U+FF01..U+FF5E), which NFKD folds back to ASCII."""
    return "".join(chr(ord(ch) - 0x21 + 0xFF01) if 0x21 <= ord(ch) <= 0x7E else ch for ch in text)


def _with_combining_marks(text: str) -> str:
    return "".join(ch + "\u0301" for ch in text)


@pytest.mark.parametrize(
    ("field", "disguise"),
    [
        ("metadata", _fullwidth),
        ("taskId", _with_combining_marks),
        ("displayName", _fullwidth),
        ("metadata key", _with_combining_marks),
        ("metadata", lambda signature: _fullwidth(quote(signature, safe=""))),  # as the link carries it
        ("metadata", "\u200b".join),  # a zero-width space between its characters
        ("displayName", "\u00ad".join),  # a soft hyphen between them
    ],
)
async def test_a_signature_that_folds_back_to_ascii_in_the_index_tags_is_kept_out_of_storage(
    field: str, disguise: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Index tags fold text to ASCII (NFKD, marks and invisible format characters removed, anything else
    "_"): a signature disguised in fullwidth letters (percent-encoded too), with a combining mark or a
    zero-width character between its characters, would come out as the secret in the tags, the manifest's
    ``tags`` and the task record."""
    caplog.set_level(logging.DEBUG)
    world = World.make(tag_fields=("taskId", "taskNumber", "workspaceId", "displayName"))
    plain = world.export("task-1", "x.pdf")
    signature = parse_qs(urlsplit(plain.url).query)["sig"][0].rstrip("=")
    hidden = disguise(signature)
    if field == "metadata":
        body = {**plain.payload, "metadata": {"note": hidden}}
    elif field == "metadata key":
        body = {**plain.payload, "metadata": {hidden: "note"}}
    else:
        body = {**plain.payload, field: hidden}
    answer = await world.post(json.dumps(body).encode())
    assert answer.status_code == 200, answer.body
    tags = [world.storage.tags(name) or {} for name in world.storage.names()]
    assert any("REDACTED" in json.dumps(found) for found in tags), tags
    stored = _everything(world)
    # As sent, percent-encoded, and that with each "%" folded to "_".
    forms = {signature, quote(signature, safe=""), quote(signature, safe="").replace("%", "_")}
    leaks = [form for form in forms for text in (stored, json.dumps(answer.body), caplog.text) if form in text]
    assert not leaks, [line for line in stored.splitlines() if any(form in line for form in forms)][:3]


@pytest.mark.parametrize("field", ["displayName", "taskId", "workspaceId"])
async def test_a_signature_with_a_kelvin_sign_for_its_k_is_kept_out_of_names_and_storage(
    field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Blob names are NFC, and NFC turns U+212A KELVIN SIGN into "K": the link's signature written with it
    would come back whole in the file's name, the record's, the manifest, the answer and the logs."""
    caplog.set_level(logging.DEBUG)
    world = World.make()
    for _ in range(200):  # about half of all signatures hold a "K"
        plain = world.export("task-1", "x.pdf")
        signature = parse_qs(urlsplit(plain.url).query)["sig"][0].rstrip("=")
        if "K" in signature:
            break
    assert "K" in signature, "no signature with a K in 200 exports"
    hidden = signature.replace("K", "\u212a")
    body = {**plain.payload, field: f"{hidden}.pdf" if field == "displayName" else hidden}
    answer = await world.post(json.dumps(body).encode())
    assert answer.status_code == 200, answer.body
    assert any("REDACTED" in name for name in world.storage.names()), world.storage.names()
    stored = _everything(world)
    seen = {"storage": stored, "answer": json.dumps(answer.body), "logs": caplog.text}
    leaks = [where for where, text in seen.items() if signature in text]
    assert not leaks, [line for line in stored.splitlines() if signature in line][:3]


async def test_another_links_sig_in_fullwidth_letters_is_kept_out_of_the_index_tags() -> None:
    world = World.make()
    plain = world.export("task-1", "x.pdf")
    body = {**plain.payload, "metadata": {"note": _fullwidth("see sig=SECRETZZ9ABCDEF&sv=1")}}
    answer = await world.post(json.dumps(body).encode())
    assert answer.status_code == 200, answer.body
    tags = [world.storage.tags(name) or {} for name in world.storage.names()]
    assert {"note": "see sig=REDACTED"}.items() <= next(t for t in tags if "note" in t).items(), tags
    assert "SECRETZZ9ABCDEF" not in _everything(world)


@pytest.mark.parametrize("link", [["URL"], {"href": "URL"}, 7])
async def test_a_refused_body_whose_link_is_not_text_names_no_task_that_may_repeat_its_signature(
    link: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A link sent in a list or an object is refused 400; its signature's pattern is never built, so the
    log line of the refusal names no taskId (which might repeat the signature)."""
    caplog.set_level(logging.DEBUG)
    world = World.make()
    plain = world.export("task-1", "x.pdf")
    signature = parse_qs(urlsplit(plain.url).query)["sig"][0].rstrip("=")
    sent = json.loads(json.dumps(link).replace("URL", plain.url))
    answer = await world.post(json.dumps({**plain.payload, "exportedFileUrl": sent, "taskId": signature}).encode())
    assert answer.status_code == 400, answer.body
    assert "exportedFileUrl" in answer.body["message"]
    assert signature not in caplog.text, [line for line in caplog.text.splitlines() if signature in line]
    assert signature not in json.dumps(answer.body)


async def test_a_refused_overlong_task_id_holding_the_signature_across_its_cut_logs_none_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A taskId over 1024 characters is refused 400, and its log line names the task cut to 1024: the cut
    comes after the scrub, or the signature's first 42 of 43 characters (16 guesses from the whole) stay."""
    caplog.set_level(logging.DEBUG)
    world = World.make()
    plain = world.export("task-1", "x.pdf")
    signature = parse_qs(urlsplit(plain.url).query)["sig"][0].rstrip("=")
    task_id = "T" * (1024 - (len(signature) - 1)) + signature + "X" * 200
    answer = await world.post(json.dumps({**plain.payload, "taskId": task_id}).encode())
    assert answer.status_code == 400 and "taskId" in answer.body["message"], answer.body
    assert "TTTT" in caplog.text  # the task is named
    assert signature[:-1] not in caplog.text + json.dumps(answer.body)


async def test_a_large_notification_whose_task_id_held_a_sig_is_finished_by_the_queue_for_that_same_task() -> None:
    """Answered 202 (staged from the queue), its message refers to the task record: the queue function parses
    the body rebuilt from the record, whose taskId intake already made `sig=REDACTED~<hash>`. Kept as it is,
    that id names the same task: the 202's delivery is stored there, and no other task appears."""
    from receiver.models import State
    from receiver.source import signatures_apart, signatures_apart_again
    from receiver.verification import Reference, read_message, verify_copy

    world = World.make(sync_copy_max_mib=0, copy_wait_seconds=0)
    task_id = "ref://erp/doc?id=1001&sig=abcdefgh12345678"
    answer = await world.post(world.export(task_id, padding="x" * 50_000))  # over 45 KiB: a reference message
    assert answer.status_code == 202 and answer.verification is not None, answer.body
    assert isinstance(read_message(answer.verification.encode()), Reference)
    stored_id = answer.body["taskId"]
    assert stored_id == signatures_apart(task_id) == signatures_apart_again(stored_id), stored_id

    assert await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
    record = world.record(stored_id)
    assert record is not None and [d.state for d in record.deliveries] == [State.STORED], record
    assert list(world.files()) == [answer.body["blob"].split("/", 1)[1]], sorted(world.files())


@pytest.mark.parametrize("encoded", [True, False], ids=["percent-encoded", "as-is"])
async def test_another_links_sig_carried_in_the_links_own_path_is_written_nowhere(encoded: bool) -> None:
    """The link without its query (`source`, the manifest's `exportedFileUrl`) still has its path: another
    link's `sig` there, encoded or not, is REDACTED in the manifest, the file's metadata and the record."""
    from receiver.storage import Headers
    from sim.world import PDF

    world = World.make()
    other = "T3RoZXJMaW5rU2VjcmV0U2lnbmF0dXJlMTIzNA"
    url = world.sources.publish(f"ws-1/x?sv=2024-11-04&sig={other}==/export.pdf", PDF, Headers("application/pdf"))
    path, query = url.split("?", 1)
    assert f"sig%3D{other}" in path
    if not encoded:
        url = f"{unquote(path)}?{query}".replace("x?sv", "x%3Fsv")  # the `?` in the path stays encoded
    plain = world.export("task-1", "x.pdf")
    answer = await world.post(json.dumps({**plain.payload, "exportedFileUrl": url}).encode())
    assert answer.status_code == 200, answer.body
    assert other not in _everything(world) + json.dumps(answer.body)
    record = world.storage.blob_bytes(".smartdocumentor/tasks/ws-1/task-1.json")
    assert record is not None and other not in record.decode()
    # Its base64 may hold "/": nothing of it is kept after the `sig=` (the rest of the path goes with it).
    tail = world.sources.publish(f"ws-1/y?sig={other[:20]}/{other[20:]}/export.pdf", PDF, Headers("application/pdf"))
    answer = await world.post(json.dumps({**plain.payload, "exportedFileUrl": tail}).encode())
    assert answer.status_code == 200 and other[20:] not in _everything(world), answer.body


@pytest.mark.parametrize("queued", [False, True], ids=["in-the-answer", "by-the-queue"])
async def test_a_sender_typing_an_ids_hashed_form_names_another_task_and_deletes_nothing_of_the_first(
    queued: bool,
) -> None:
    """The hashed form is shown in answers and logs: a sender who sends it as an id gets it hashed again, by the
    webhook and by the queue function reading the body as sent in its message (only a body rebuilt from the
    record keeps it). Two tasks, two records, both files kept."""
    from receiver.verification import verify_copy

    world = World.make(**({"sync_copy_max_mib": 0, "copy_wait_seconds": 0} if queued else {}))
    answers: list[Any] = []
    for task_id, name in (("ref://erp/doc?id=1001&sig=abcdefgh12345678", "a.pdf"), (None, "b.pdf")):
        answer = await world.post(world.export(task_id or answers[0].body["taskId"], name))
        if queued:
            assert answer.status_code == 202 and answer.verification is not None, answer.body
            assert await verify_copy(answer.verification.encode(), runtime=world.runtime, now=world.now) == "stored"
        else:
            assert answer.status_code == 200, answer.body
        answers.append(answer)
        world.clock.advance(timedelta(minutes=1))
    first, typed = (answer.body["taskId"] for answer in answers)
    assert typed != first, (first, typed)
    assert sorted(name.rsplit("/", 1)[1] for name in world.files()) == ["a.pdf", "b.pdf"], sorted(world.files())
    for task in (first, typed):
        record = world.record(task)
        assert record is not None and [d.state.value for d in record.deliveries] == ["stored"], (task, record)
