"""Items produced ahead by a background thread: in order, errors raised, stopped on exit."""

from __future__ import annotations

import itertools
import threading

import pytest

from imgpipe.prefetch import prefetched


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetched_yields_every_item_in_order(depth: int) -> None:
    assert list(prefetched(iter(range(20)), depth)) == list(range(20))


def test_an_error_in_the_producer_is_raised_after_the_items_before_it() -> None:
    def items():
        yield from (1, 2)
        raise OSError("truncated file")

    seen = []
    with pytest.raises(OSError, match="truncated file"):
        for item in prefetched(items(), 2):
            seen.append(item)
    assert seen == [1, 2]


def test_leaving_the_loop_early_stops_the_producer() -> None:
    produced = []

    def endless():
        for i in itertools.count():
            produced.append(i)
            yield i

    batches = prefetched(endless(), 2)
    assert [next(batches), next(batches)] == [0, 1]
    batches.close()  # what a `break` out of a for loop does
    assert not any(thread.name == "prefetch" for thread in threading.enumerate())
    assert len(produced) <= 5  # two taken, at most two buffered, one waiting to be put
