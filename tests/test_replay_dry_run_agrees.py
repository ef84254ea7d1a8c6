"""the operator command line. docs/state-machine.md: "A replay's dry run asks the
same decide, so it cannot disagree with what the queue function then does"."""

from __future__ import annotations

import json

import pytest

from receiver.models import State
from receiver.verification import CopyStillRunning, verify_copy

from .test_ops import Ops


async def test_the_replay_dry_run_and_the_queue_function_agree_under_a_legal_hold() -> None:
    ops = Ops()
    world = ops.world
    first = world.export()
    assert (await world.post(first)).status_code == 200
    second = world.export()  # a re-export under the same name, accepted (202) before the hold was placed
    text = await ops.accept(second)
    world.storage.policy = "legal hold"
    ops.poison.add(text)

    dry = await ops("replay-poison", "--dry-run", "--json")
    (entry,) = dry.json()["messages"]
    # The hold refuses what the delivery needs (nothing recorded it failed, a hold is lifted some day): the queue
    # function tries again, so a replay now would only poison it again. The dry run leaves it (blocked).
    with pytest.raises(CopyStillRunning):
        await verify_copy(text.encode(), runtime=world.runtime, now=world.now)
    assert entry["will"] == "blocked" and "once the legal hold is lifted" in entry["why"], entry
    text_out = (await ops("replay-poison", "--dry-run")).out
    assert text_out.count(entry["why"]) == 1 and "1 message(s) BLOCKED" in text_out, text_out  # its row says why
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.COPYING, record  # the 202 still tracked
    world.storage.policy = None
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now) == "stored"


async def test_the_replay_dry_run_says_duplicate_and_the_queue_function_ends_there() -> None:
    ops = Ops()
    world = ops.world
    world.storage.policy = "legal hold"
    export = world.export()
    world.faults.lose_answer("put", "ws-1/task-1/invoice.pdf.json")
    first = await world.post(export)
    assert first.status_code == 503 and first.verification is not None
    ops.poison.add(first.verification)

    dry = await ops("replay-poison", "--dry-run", "--json")
    (entry,) = dry.json()["messages"]
    assert entry["will"] == "duplicate", entry
    # What the queue function then does with it: it must end (a duplicate), not raise again.
    outcome = await verify_copy(first.verification.encode(), runtime=world.runtime, now=world.now)
    assert outcome == "duplicate", outcome


async def test_a_message_without_a_name_after_a_template_change_is_a_duplicate_in_the_dry_run_and_the_replay() -> None:
    """A message the release before wrote (no file name) for a delivery current under the earlier template:
    the dry run says duplicate, and the queue function answers duplicate from the file at the recorded name,
    leaving no copy under today's name."""
    ops = Ops()
    world = ops.world
    export = world.export()
    world.faults.lose_answer("put", "ws-1/task-1/invoice.pdf.json")
    first = await world.post(export)
    assert first.status_code == 503 and first.verification is not None
    document = json.loads(first.verification)
    assert document.pop("blob") == "ws-1/task-1/invoice.pdf"
    text = json.dumps(document)
    dated = "{yyyy}/{workspaceId}/{taskId}/{fileName}"
    world.settings = world.settings.model_copy(update={"blob_name_template": dated})
    world.runtime.use(world.storage, world.settings)
    ops.poison.add(text)

    dry = await ops("replay-poison", "--dry-run", "--json")
    (entry,) = dry.json()["messages"]
    assert entry["will"] == "duplicate", entry
    outcome = await verify_copy(text.encode(), runtime=world.runtime, now=world.now)
    assert outcome == "duplicate", outcome
    assert world.files() == {"ws-1/task-1/invoice.pdf": export.data}


async def test_a_message_behind_a_newer_copy_whose_link_expired_ends_in_the_dry_run_and_the_replay() -> None:
    """e2 is accepted (copying), then e3, newer, is accepted too: e2 waits behind it. Once e2's link has
    expired, the dry run says its message ends (waiting, for the reconciliation) and the queue function
    ends it instead of raising into the poison queue again; the record keeps e2 copying."""
    from datetime import timedelta

    from receiver.models import State

    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    older = world.export(expires_in=timedelta(minutes=30))
    text = await ops.accept(older)
    await ops.accept(world.export())
    world.clock.advance(timedelta(minutes=31))
    ops.poison.add(text)

    dry = await ops("replay-poison", "--dry-run", "--json")
    (entry,) = dry.json()["messages"]
    assert entry["will"] == "waiting", entry
    outcome = await verify_copy(text.encode(), runtime=world.runtime, now=world.now)
    assert outcome == "waiting", outcome
    record = world.record()
    assert record is not None and [item.state for item in record.deliveries] == [
        State.STORED,
        State.COPYING,
        State.COPYING,
    ]
    # find says it waits behind the newer one (the sweep looks at that one), not that --repair fails it now.
    found = await ops("find", "--task", "task-1")
    assert "verdict: BEHIND: its link expired at" in found.out and "fails it" not in found.out, found.out


async def test_the_dry_run_and_the_queue_function_agree_on_a_file_too_large_for_a_synchronous_copy() -> None:
    """A file over what Copy Blob From URL takes (the in-memory store's limit stands for the service's 256 MiB)
    whose webhook answered 503 before any record, its message poisoned; a container legal hold placed since. The
    dry run's copy is refused as too large, as the queue function's is: it stages, and the hold refuses it."""
    from receiver.verification import message

    ops = Ops()
    world = ops.world
    world.storage.sync_limit_bytes = 16
    export = world.export()
    text = message(export.body, world.now, plan=ops.plan(export))
    world.storage.policy = "legal hold"
    ops.poison.add(text)
    before = world.storage.snapshot()
    (entry,) = (await ops("replay-poison", "--dry-run", "--json")).json()["messages"]
    assert world.storage.snapshot() == before
    with pytest.raises(CopyStillRunning):  # tried again while the hold lasts, as the dry run says
        await verify_copy(text.encode(), runtime=world.runtime, now=world.now)
    assert entry["will"] == "blocked", entry


async def test_a_line_wrapped_message_the_host_reads_is_moved_not_dropped_as_unreadable() -> None:
    """The host decodes a message's base64 skipping white space (as .NET does): one wrapped at 76 characters is
    read by the queue function, so replay-poison moves it, and --drop-unreadable never deletes it."""
    import base64
    import textwrap

    ops = Ops()
    text = await ops.accept(ops.world.export())
    wrapped = "\n".join(textwrap.wrap(base64.b64encode(text.encode()).decode(), 76))
    ops.poison.add(wrapped)
    ran = await ops("replay-poison", "--drop-unreadable")
    assert "Moved 1 message(s)" in ran.out and "deleted" not in ran.out, ran.out
    assert [item.content for item in ops.queue.visible] == [wrapped]


async def test_a_poison_message_of_a_delivery_its_record_already_failed_is_ended_without_a_second_alert(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 202'd copy whose link expired before anything finished it: the reconciliation fails it (its ERROR). Its
    message, poisoned meanwhile, is ENDED in the dry run (moving it back only clears it), and neither the replay
    nor the queue function's try of it raises another ERROR for the same failure."""
    import logging
    from datetime import timedelta

    ops = Ops()
    world = ops.world
    assert (await world.post(world.export())).status_code == 200
    text = await ops.accept(world.export(expires_in=timedelta(hours=1)))
    world.clock.advance(timedelta(hours=2))
    assert (await ops.reconcile()).outcomes == {"expired": 1}
    ops.poison.add(text)
    dry = await ops("replay-poison", "--dry-run", "--json")
    [entry] = dry.json()["messages"]
    assert entry["will"] == "ended" and "already failed it" in entry["why"], entry
    caplog.set_level(logging.INFO, logger="receiver")
    caplog.clear()
    assert (await ops("replay-poison")).code == 0
    assert await verify_copy(text.encode(), runtime=world.runtime, now=world.now) == "failed"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors
    record = world.record()
    assert record is not None and record.deliveries[-1].state is State.FAILED


@pytest.mark.parametrize(
    ("link", "will"),
    [("http://127.0.0.1:10000/exports/f.pdf", "unknown"), ("http://[::1]:10000/exports/f.pdf", "fail")],
    ids=["refused-by-ops-defaults-only", "ipv6-refused-by-any-setting"],
)
async def test_a_link_ops_defaults_refuse_is_unknown_and_one_no_setting_allows_is_a_refusal(
    link: str, will: str
) -> None:
    """Ops run without the app's ALLOWED_SOURCE_HOSTS and ALLOW_HTTP_SOURCES judges a link by its own defaults:
    one those alone refuse is UNKNOWN (the app may allow it); an IPv6 literal, which no setting can name, is a
    refusal either way (the queue function refuses it too), never a traceback."""
    import io
    from typing import Any

    from ops.cli import run
    from receiver.settings import Settings
    from receiver.verification import message as queue_message

    ops = Ops()
    body = json.loads(ops.world.export().body)
    body["exportedFileUrl"] = f"{link}?sv=2024-11-04&se=2099-01-01T00%3A00%3A00Z&sig=abc"
    ops.poison.add(queue_message(json.dumps(body).encode(), ops.world.now))
    own = Settings(**ops.world.settings.model_dump(exclude={"allowed_source_hosts", "allow_http_sources"}))
    out, err = io.StringIO(), io.StringIO()
    kwargs: Any = {"environ": {}, "out": out, "err": err, "storage": ops.world.storage, "now": ops.world.now}
    await run(["replay-poison", "--dry-run", "--json"], settings=own, queues=ops.queues, **kwargs)
    assert "Traceback" not in err.getvalue(), err.getvalue()
    (entry,) = json.loads(out.getvalue())["messages"]
    assert entry["will"] == will, entry
