"""Reading ahead: the next batches of concept data are read in a background thread while the model or the tally
works on the current one (file reading, PNG decoding and numpy release the GIL for much of their time)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

_Item = TypeVar("_Item")


def prefetched(items: Iterator[_Item], depth: int = 2) -> Iterator[_Item]:
    """``items``, produced up to ``depth`` ahead in a background thread. An error raised while producing is
    raised here, in the consumer; closing this iterator stops the thread (use ``contextlib.closing``)."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> None:
        """Wait for a free slot, unless the consumer stops first."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put(item)
                if stop.is_set():
                    return
            last = done
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            last = error
        put(last)

    worker = threading.Thread(target=produce, name="concept-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
