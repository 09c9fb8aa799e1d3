"""Bounded memory, in small: the stages that read a whole slide hold only strips or tiles of it.

A single-level (pyramid-less) 6144 x 6144 px slide is 113 MB of RGB; the thumbnail and the
patch store are built from it while numpy's allocations are traced (``tracemalloc`` counts
every numpy buffer), and their peak must stay a fraction of the slide. The 40,000 px version
of this check, with whole-process peak RSS, is ``tests/benchmarks/test_bench_memory.py``.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_interruptions import write_large_slide

SIDE = 6144
SLIDE_BYTES = SIDE * SIDE * 3


@pytest.fixture(scope="module")
def flat_slide(tmp_path_factory) -> Path:
    return write_large_slide(tmp_path_factory.mktemp("flat") / "he.tif", side=SIDE)


def traced_peak(function, *args, **kwargs) -> tuple[object, int]:
    """``(result, peak bytes allocated while it ran)``."""
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_thumbnail_of_a_slide_without_pyramid_is_streamed(flat_slide):
    from pastflow.slide import open_slide
    from pastflow.thumbnail import read_thumbnail

    (thumb, downsample), peak = traced_peak(read_thumbnail, str(flat_slide), max_side=512)
    assert peak < SLIDE_BYTES / 8, f"{peak / 1e6:.0f} MB for a {SLIDE_BYTES / 1e6:.0f} MB slide"
    assert thumb.shape == (512, 512, 3) and downsample == pytest.approx(SIDE / 512)
    # It shows the slide: glass around the 2 x 2-tile block of tissue in the middle.
    with open_slide(flat_slide) as slide:
        whole = slide.read_region(0, 0, 0, SIDE, SIDE)
    expected = np.asarray(Image.fromarray(whole).resize((512, 512), Image.Resampling.BOX), float)
    assert np.abs(thumb.astype(float) - expected).mean() < 2.0
    assert thumb[256, 256].max() < 235 and thumb[20, 20].min() > 240


def test_patch_store_of_a_slide_without_pyramid_is_built_strip_by_strip(flat_slide, tmp_path):
    from pastflow.patches.store import build_patch_store

    xy = np.random.default_rng(0).uniform(2900, 3200, (500, 2))
    ids = [f"c{i}" for i in range(len(xy))]
    stats, peak = traced_peak(build_patch_store, flat_slide, ids, xy, tmp_path / "s.h5",
                              target_mpp=0.5, patch_px=64, workers=1, progress=False)
    # The store's own image (resampled to 0.5 um/px) is 28 MB; it is written, never held.
    assert stats.image_size == (SIDE // 2, SIDE // 2)
    assert peak < SLIDE_BYTES / 4, f"{peak / 1e6:.0f} MB for a {SLIDE_BYTES / 1e6:.0f} MB slide"
