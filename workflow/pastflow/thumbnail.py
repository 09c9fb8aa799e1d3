"""Low-resolution views of a slide for figures."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pastflow.slide import open_slide


def read_thumbnail(slide_path: str, max_side: int = 1600) -> tuple[np.ndarray, float]:
    """Return ``(rgb uint8 (h, w, 3), downsample)``; level-0 px = thumbnail px * downsample.

    Reads the smallest pyramid level that is still at least ``max_side`` wide (or the
    smallest there is), then resizes, so huge slides are never decoded at full resolution.
    A slide without such a level (one huge level, no pyramid) is streamed strip by strip,
    keeping one row per block: memory stays a few strips, whatever the slide size.
    """
    from pastflow.patches.tissue import ThumbnailBuilder

    with open_slide(slide_path) as slide:
        level = slide.level_count - 1
        for lv in range(slide.level_count):
            if max(slide.level_dimensions[lv]) <= 4 * max_side:
                level = lv
                break
        w, h = slide.level_dimensions[level]
        if max(w, h) <= 4 * max_side:
            rgb = slide.read_region(level, 0, 0, w, h)
        else:
            builder = ThumbnailBuilder(w, h, math.ceil(max(w, h) / (2 * max_side)))
            for y0, strip in slide.iter_strips(level):
                builder.add(y0, strip)
            rgb = builder.result()
        level0_w = slide.level_dimensions[0][0]
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    return rgb, level0_w / rgb.shape[1]
