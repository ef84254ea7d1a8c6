"""two different tasks whose file names collide (docs/reference.md, "Blob names":
"two different (workspaceId, taskId) pairs never share a name")."""

from __future__ import annotations

from datetime import timedelta

from receiver.plan import identity_segment
from sim.world import World


async def test_a_task_whose_id_looks_like_the_reserved_prefix_never_shares_a_file_name() -> None:
    world = World.make()
    first = world.export("T", "doc.pdf", workspace_id=".smartdocumentor")
    answer = await world.post(first)
    assert answer.status_code == 200, answer.body
    name = answer.body["blob"].split("/", 1)[1]
    # "_.smartdocumentor" is already safe, so it is kept as its own segment.
    assert identity_segment("_.smartdocumentor") == "_.smartdocumentor"
    world.clock.advance(timedelta(minutes=5))
    second = world.export("T", "doc.pdf", workspace_id="_.smartdocumentor")
    other = await world.post(second)
    assert other.status_code == 200, other.body
    # The two tasks must not share a file: the first task's answered, current file must still hold its bytes.
    assert world.files()[name] == first.data, "task 1's current file was overwritten by another task"
    assert other.body["blob"].split("/", 1)[1] != name, "two different tasks share one blob name"
