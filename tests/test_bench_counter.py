"""The bench's counting machinery counts a known chain correctly (no timing: lifetimes are given)."""

from __future__ import annotations

from bench.counter import Seen, most_at_once, round_trips
from bench.run import chain


def request(started: float, ended: float, *, path: str = "/customer/c/file.pdf", method: str = "GET") -> Seen:
    return Seen(
        method=method,
        account="customer",
        path=path,
        comp=None,
        restype=None,
        copy=False,
        sync=False,
        if_match=False,
        if_none_match=False,
        user_agent="azsdk-python-storage-blob",
        status=200,
        started=started,
        ended=ended,
    )


def test_side_by_side_requests_count_once_and_a_chain_counts_each_link() -> None:
    # Two side by side, then three side by side, then one: three sequential round trips.
    seen = [
        request(0.0, 1.0),
        request(0.01, 1.02),
        request(1.03, 2.0),
        request(1.04, 2.1),
        request(1.05, 2.05),
        request(2.2, 3.0),
    ]
    assert round_trips(seen) == 3
    assert most_at_once(seen) == 3
    assert [len(group) for group in chain(seen)] == [2, 3, 1]


def test_a_request_sent_the_instant_an_answer_left_follows_it() -> None:
    seen = [request(0.0, 1.0), request(1.0, 2.0)]
    assert round_trips(seen) == 2
    assert most_at_once(seen) == 1


def test_nothing_is_no_round_trip() -> None:
    assert round_trips([]) == 0
    assert most_at_once([]) == 0


def test_the_staging_proxy_reads_and_azurite_checks_are_not_the_receivers() -> None:
    own = request(0.0, 1.0)
    staging = request(0.0, 1.0)
    staging.user_agent = "bench-staging-emulator"
    emulator = request(0.0, 1.0)
    emulator.user_agent = "axios/1.7"
    assert not own.by_emulator and staging.by_emulator and emulator.by_emulator


def test_requests_are_named_by_what_they_touch() -> None:
    record = request(0.0, 1.0, path="/customer/c/.smartdocumentor/tasks/w/t.json", method="PUT")
    assert record.describe.startswith("Put Blob of the task record")
    block = request(0.0, 1.0, method="PUT")
    block.comp, block.copy = "block", True
    assert block.describe.startswith("Put Block From URL to the file")
