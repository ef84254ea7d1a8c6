"""Dev-only simulation kit (never deployed): an in-memory :class:`receiver.storage.Storage` and its sources.

``sim.memstore.MemoryStorage`` honours the service's ETags, conditions, tags and block staging;
tests/test_storage_contract.py runs the same checks against it and against Azurite.
"""

from sim.memstore import (
    FaultPlan,
    Faults,
    ManualClock,
    MemorySources,
    MemoryStorage,
    NoFaults,
    State,
    StoredBlob,
)

__all__ = [
    "FaultPlan",
    "Faults",
    "ManualClock",
    "MemorySources",
    "MemoryStorage",
    "NoFaults",
    "State",
    "StoredBlob",
]
