"""The one figure writer: screen-sized, palette PNGs, atomic."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from pastflow.figures import MAX_WIDTH_PX, fit_image, save_figure  # noqa: E402


def tissue_like(side: int = 1600, seed: int = 0) -> np.ndarray:
    """A pink/purple RGB image with stripes and pixel noise: what compresses worst."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:side, :side] / side
    stripes = 0.5 + 0.5 * np.sin(40 * (x + 0.6 * y))
    base = np.stack([200 + 40 * stripes, 120 + 60 * stripes, 190 + 30 * stripes], axis=-1)
    return np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)


def image_figure(width_in: float = 16.0):
    fig, ax = plt.subplots(figsize=(width_in, width_in * 0.6))
    ax.imshow(tissue_like())
    ax.scatter(*np.random.default_rng(1).uniform(0, 1600, (2, 3000)), s=4,
               c=np.arange(3000), cmap="magma")
    ax.set_title("a noisy 1600 px image under 3000 points")
    return fig


def test_a_noisy_image_figure_is_a_small_screen_sized_png(tmp_path):
    fig = image_figure()
    plain = io.BytesIO()
    fig.savefig(plain, dpi=110, format="png")  # how the stages saved figures before
    path = save_figure(fig, tmp_path / "maps.png", dpi=150)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.width <= MAX_WIDTH_PX and image.height <= MAX_WIDTH_PX
        assert image.mode == "P"  # a 256-colour palette
        pixels = image.width * image.height
    # Half a byte per pixel (~0.3 here; the plain PNG ~0.8), and well under the plain PNG.
    assert len(data) < 0.5 * pixels
    assert len(data) < plain.tell() / 2.5
    assert not plt.fignum_exists(fig.number)  # closed unless asked to keep it
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]  # no temporary left


def test_a_wide_figure_is_scaled_to_the_report_width(tmp_path):
    fig, ax = plt.subplots(figsize=(30, 3))
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "wide.png", dpi=120, close=False)
    assert plt.fignum_exists(fig.number)
    with Image.open(tmp_path / "wide.png") as image:
        assert image.width == pytest.approx(MAX_WIDTH_PX, abs=2)
    plt.close(fig)


def test_a_jpeg_name_is_written_as_jpeg(tmp_path):
    fig = image_figure(width_in=8)
    save_figure(fig, tmp_path / "thumbnails.jpg")
    with Image.open(tmp_path / "thumbnails.jpg") as image:
        assert image.format == "JPEG" and image.width <= 800


def test_fit_image_shrinks_only_large_images():
    big = tissue_like(side=900)[:, :600]
    assert fit_image(big, 300).shape == (300, 200, 3)
    small = big[:100, :50]
    assert fit_image(small, 300).shape == small.shape
