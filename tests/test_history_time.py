"""History entries carry the time their step happened, not the time the request arrived: the
engine reads the runtime's clock at each step (docs/reference.md, "The task record")."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sim.world import World

SLOW = timedelta(seconds=40)


async def test_a_steps_history_entry_is_stamped_when_the_step_happened() -> None:
    world = World.make()
    copy = world.storage.copy_from_url

    async def slow_copy(*args: Any, **kwargs: Any) -> Any:
        world.clock.advance(SLOW)  # storage answers 40 seconds later
        return await copy(*args, **kwargs)

    world.storage.copy_from_url = slow_copy  # type: ignore[method-assign]
    export = world.export()
    received = world.now
    assert (await world.post(export)).status_code == 200
    record = world.record()
    assert record is not None
    [delivery] = record.deliveries
    assert delivery.received_at == received
    assert delivery.history[-1].at == received + SLOW
