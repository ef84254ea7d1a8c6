"""the SAS signature must never be stored or logged (docs/reference.md, "Secrets":
"even when the sender repeats the link (or its sig, in any encoding) in displayName, taskId, a
metadata key or value or any other field")."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlsplit

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
