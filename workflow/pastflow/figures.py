"""Write figures light enough for the HTML report: screen resolution, palette PNGs.

The report embeds every figure base64-encoded, so each byte of a figure costs the report
1.33 bytes; a report of a few dozen tissue figures saved at print resolution outgrows what a
browser opens quickly. Every stage writes its figures through :func:`save_figure`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pastflow.atomic import atomic_path

MAX_WIDTH_PX = 1600  # a report column on a large screen; wider figures are scaled down
MAX_DPI = 100
JPEG_QUALITY = 75  # PIL's default; text stays clean at screen size


def figure_dpi(fig, dpi: float = MAX_DPI) -> float:
    """``dpi``, lowered to :data:`MAX_DPI` and so that ``fig`` is at most :data:`MAX_WIDTH_PX`
    wide."""
    return min(float(dpi), MAX_DPI, MAX_WIDTH_PX / fig.get_figwidth())


def save_figure(fig, path: str | Path, dpi: float = MAX_DPI, *, close: bool = True) -> Path:
    """Write ``fig`` to ``path`` atomically, at :func:`figure_dpi`; the format follows the
    suffix. A PNG is reduced to a 256-colour palette (2-4x smaller: plots have few colours,
    and the tissue under them is shown at screen size only); a JPEG is written at quality
    :data:`JPEG_QUALITY`. ``close``: close the figure afterwards (pyplot keeps it otherwise).
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    path = Path(path)
    dpi = figure_dpi(fig, dpi)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".png":
            buffer = io.BytesIO()
            fig.savefig(buffer, dpi=dpi, format="png")
            buffer.seek(0)
            rgba = Image.open(buffer).convert("RGBA")
            # Flattened on white: a palette has no room for a second copy of each colour
            # at every transparency.
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
            # Median cut: fast octree makes files 1.4x smaller but speckles pale flat areas
            # (the glass around tissue).
            rgb.quantize(256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG",
                                                                    optimize=True)
        elif suffix in (".jpg", ".jpeg"):
            fig.savefig(tmp, dpi=dpi, format="jpeg",
                        pil_kwargs={"quality": JPEG_QUALITY, "optimize": True})
        else:
            fig.savefig(tmp, dpi=dpi)
    if close:
        plt.close(fig)
    return path


def fit_image(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` ``(h, w[, 3])`` uint8 shrunk (Lanczos, PIL) so its longer side is at most
    ``side`` pixels: drawn into a small axis, a large image only costs time (matplotlib
    resamples it at savefig, ~10x slower than PIL) and its noise costs PNG bytes."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image))
    pil.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(pil)

