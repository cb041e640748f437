"""Items produced ahead of their consumer by a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class _Failed:
    """An exception raised in the producer thread, handed to the consumer to re-raise."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items` in order, produced up to `depth` ahead by a background thread (0: inline).

    Decoding overlaps the network: PIL's decoders, torch's transforms and the inference
    runtimes release the GIL while they work. An exception in the producer is raised
    here; leaving the loop early stops the producer.
    """
    if depth < 1:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # re-raised in the consumer
            put(_Failed(error))
            return
        put(end)

    producer = threading.Thread(target=produce, name="prefetch", daemon=True)
    producer.start()
    try:
        while (item := buffer.get()) is not end:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        producer.join()
