"""The cyclic garbage collector's pace in a server process.

CPython collects its youngest objects after every 700 new container objects. A server
ingesting events makes a few per event and keeps a batch's for as long as the batch
waits for the disk, so at that pace the collector walks the same in-flight objects
again and again: measured on 4 StreamEvents streams, 10% of the event loop's time, and
5.2-5.4 µs of the engine process's CPU per event against 4.6-4.8 µs with the youngest
generation collected every 10,000 (docs/benchmarks.md). The older generations keep
their default ratios (each collected after 10 of the one below), so a full collection
comes after about a million new objects, and garbage in reference cycles is still
freed within a fraction of a second under load.
"""

from __future__ import annotations

import gc

YOUNGEST_THRESHOLD = 10_000  # new container objects between two young collections
OLDER_RATIOS = (10, 10)  # CPython's defaults


def configure_garbage_collection() -> None:
    """Set this process's collector pace (a server, gateway or REST worker process)."""
    gc.set_threshold(YOUNGEST_THRESHOLD, *OLDER_RATIOS)
