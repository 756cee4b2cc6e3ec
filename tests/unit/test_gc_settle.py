"""`cli.serving.settle_gc`: once a node has started, what it loaded leaves the collector's
view and young collections are spaced out (why: its docstring's measurement)."""

from __future__ import annotations

import gc

from taskyard.cli.serving import GC_THRESHOLDS, settle_gc


def test_settling_freezes_what_is_loaded_and_spaces_out_collections() -> None:
    before = gc.get_threshold()
    try:
        settle_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
        # Cycles made afterwards are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
