"""ops.queues.AzureQueue, what replay-poison reads and moves, against Azurite's own queue service."""

from __future__ import annotations

import uuid

from azure.storage.queue.aio import QueueClient

from devtools.azurite import Azurite
from ops.queues import AzureQueue


async def test_a_received_message_released_is_visible_again_at_once_and_deleted_ones_are_gone(
    azurite: Azurite,
) -> None:
    """replay-poison receives messages (hidden for two minutes) and leaves some where they are: released, a dry
    run just after sees them again; a moved one is deleted with its pop receipt."""
    name = f"poison-{uuid.uuid4().hex[:12]}"
    async with QueueClient.from_connection_string(azurite.host_storage, name) as client:
        await client.create_queue()
        queue = AzureQueue(client)
        await queue.send("left")
        await queue.send("moved")
        received = await queue.receive(32, visibility_seconds=120)
        assert sorted(item.content for item in received) == ["left", "moved"]
        assert await queue.peek(32) == [] and await queue.count() == 2  # hidden, still counted
        left, moved = sorted(received, key=lambda item: item.content)
        await queue.release(left)
        assert await queue.delete(moved)
        assert [item.content for item in await queue.peek(32)] == ["left"]
        assert await queue.count() == 1
