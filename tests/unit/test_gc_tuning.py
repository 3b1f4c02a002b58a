"""The daemon's garbage-collector settings: start-up objects frozen, young objects collected less often."""

from __future__ import annotations

import gc

from apnsd.worker.daemon import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    """After tune_gc the objects alive at start-up are frozen and gen 0 collects at GC_YOUNG_THRESHOLD."""
    saved = gc.get_threshold()
    try:
        tune_gc()
        assert (GC_YOUNG_THRESHOLD, saved[1], saved[2]) == gc.get_threshold()
        assert 0 < gc.get_freeze_count()
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
