"""What a serving process does once before it serves."""

from __future__ import annotations

import gc


def freeze_import_heap() -> None:
    """Move every object alive now to the collector's permanent generation.

    Everything imported before serving (litellm's cost map and provider tables above all: some
    600,000 objects) lives as long as the process. Left in the collected generations, each full
    collection walked it: about 350 ms, during which no request in flight made progress. Frozen, a
    full collection takes about 15 ms.
    """
    gc.collect()
    gc.freeze()
