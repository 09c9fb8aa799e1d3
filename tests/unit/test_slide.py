"""pastflow.slide: one reader over OpenSlide, tifffile and Pillow, on real and written slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from pastflow.errors import InputError
from pastflow.slide import level_for_mpp, open_slide

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGES = DATA / "images"


def real_image(name: str) -> Path:
    path = IMAGES / name
    if not path.is_file():
        pytest.skip(f"{path} not available (../shared/data is absent)")
    return path


def textured_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs plus fine detail: survives JPEG well, yet no two regions alike."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 230, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    return image


def halve(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)


def write_pyramid(
    path: Path,
    image: np.ndarray,
    mpp: float,
    *,
    n_levels: int = 3,
    layout: str = "generic",
    tile: int = 128,
    compression: str = "jpeg",
) -> list:
    """Write ``image`` as a tiled pyramid; returns the levels written.

    ``layout="generic"``: reduced levels as top-level IFDs (subfiletype=1) with their own
    resolution tags, as OpenSlide's generic-tiff expects. ``layout="ome"``: OME-TIFF with the
    reduced levels in SubIFDs of level 0 (10x's post-Xenium H&E layout).
    """
    levels = [image]
    for _ in range(n_levels - 1):
        levels.append(halve(levels[-1]))
    options = dict(tile=(tile, tile), compression=compression, photometric="rgb")
    with tifffile.TiffWriter(path, ome=(layout == "ome")) as tw:
        for i, level in enumerate(levels):
            if layout == "ome" and i == 0:
                tw.write(
                    level,
                    subifds=n_levels - 1,
                    resolution=(1e4 / mpp, 1e4 / mpp),
                    resolutionunit="CENTIMETER",
                    metadata={"PhysicalSizeX": mpp, "PhysicalSizeY": mpp},
                    **options,
                )
            elif layout == "ome":
                tw.write(level, subfiletype=1, **options)
            else:
                level_mpp = mpp * 2**i
                tw.write(
                    level,
                    subfiletype=0 if i == 0 else 1,
                    resolutionunit="CENTIMETER",
                    resolution=(1e4 / level_mpp, 1e4 / level_mpp),
                    **options,
                )
    return levels


@pytest.fixture(scope="module")
def generic_pyramid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "generic.tif"
    write_pyramid(path, textured_rgb(700, 900), mpp=0.25, layout="generic")
    return path


@pytest.fixture(scope="module")
def ome_pyramid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "pyramid.ome.tif"
    write_pyramid(path, textured_rgb(700, 900, seed=1), mpp=0.3, layout="ome")
    return path


# --------------------------------------------------------------------------- real files


@pytest.mark.realdata
def test_svs_is_read_through_openslide():
    path = real_image("CMU-1-Small-Region.svs")
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        assert slide.level_dimensions == [(2220, 2967)]
        assert slide.mpp == pytest.approx(0.499, abs=1e-3)
        region = slide.read_region(0, 1000, 1200, 64, 48)
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        assert region.mean() < 240  # tissue there, not glass
        expected = np.asarray(openslide.OpenSlide(str(path)).read_region((1000, 1200), 0, (64, 48)))
        np.testing.assert_array_equal(region, expected[..., :3])
        # Past the right edge: the part inside is the slide, the rest is white.
        edge = slide.read_region(0, 2200, 1200, 40, 10)
        np.testing.assert_array_equal(edge[:, :20], expected_region(path, 2200, 1200, 20, 10))
        assert (edge[:, 20:] == 255).all()


def expected_region(path, x, y, w, h) -> np.ndarray:
    return np.asarray(openslide.OpenSlide(str(path)).read_region((x, y), 0, (w, h)))[..., :3]


@pytest.mark.realdata
def test_real_ome_tiff_is_read_through_tifffile_tile_by_tile():
    path = real_image("OS-1-detail.ome.tif")
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_dimensions == [(1101, 1101)]
        assert slide.mpp == pytest.approx(0.2271, abs=1e-4)
        whole = tifffile.imread(path)
        strips = list(slide.iter_strips(0))
        np.testing.assert_array_equal(np.concatenate([s for _, s in strips]), whole)
        np.testing.assert_array_equal(
            slide.read_region(0, 500, 300, 37, 600), whole[300:900, 500:537]
        )


@pytest.mark.realdata
def test_png_is_read_through_pillow_without_mpp():
    path = real_image("tiatoolbox_target_image.png")
    with open_slide(path) as slide:
        assert slide.backend == "pillow"
        assert slide.level_dimensions == [(1000, 1000)]
        assert slide.mpp is None  # PNG density is a display setting, not the scan's
        whole = np.asarray(Image.open(path).convert("RGB"))
        region = slide.read_region(0, 990, -5, 20, 15)
        np.testing.assert_array_equal(region[5:, :10], whole[:10, 990:])
        assert (region[:5] == 255).all() and (region[:, 10:] == 255).all()


# --------------------------------------------------------------------------- written pyramids


def test_ome_pyramid_levels_in_subifds_are_seen_by_tifffile_only(ome_pyramid):
    with open_slide(ome_pyramid) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_dimensions == [(900, 700), (450, 350), (225, 175)]
        assert slide.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        assert slide.mpp == pytest.approx(0.3)
        assert slide.level_mpp(2) == pytest.approx(1.2)
        level2 = tifffile.TiffFile(ome_pyramid).series[0].levels[2].asarray()
        np.testing.assert_array_equal(np.concatenate([s for _, s in slide.iter_strips(2)]), level2)
    # Why OME goes through tifffile: OpenSlide sees level 0 only.
    assert openslide.OpenSlide(str(ome_pyramid)).level_count == 1


def test_generic_pyramid_reads_the_same_through_tifffile_and_openslide(generic_pyramid):
    fast = open_slide(generic_pyramid)
    reference = open_slide(generic_pyramid, backend="openslide")
    assert fast.backend == "tifffile"
    assert (
        fast.level_dimensions == reference.level_dimensions == [(900, 700), (450, 350), (225, 175)]
    )
    assert fast.mpp == pytest.approx(0.25) and reference.mpp == pytest.approx(0.25)
    for level, (x, y, w, h) in [
        (0, (100, 130, 300, 200)),
        (0, (-20, 650, 90, 80)),
        (1, (400, 10, 70, 40)),
        (2, (0, 0, 225, 175)),
    ]:
        a, b = fast.read_region(level, x, y, w, h), reference.read_region(level, x, y, w, h)
        np.testing.assert_array_equal(a, b)
    corner = fast.read_region(0, -20, 650, 90, 80)
    assert (corner[:, :20] == 255).all() and (corner[50:] == 255).all()  # outside -> white


@pytest.mark.parametrize("workers", [1, 3])
def test_iter_strips_decodes_every_tile_exactly_once(generic_pyramid, workers):
    slide = open_slide(generic_pyramid)
    decoded: list[tuple[int, int]] = []
    original = slide._decode_segment

    def counting(level, index):
        decoded.append((level, index))
        return original(level, index)

    slide._decode_segment = counting
    strips = list(slide.iter_strips(0, workers=workers))
    n_tiles = (900 // 128 + 1) * (700 // 128 + 1)
    assert sorted(decoded) == [(0, i) for i in range(n_tiles)]
    assert [y for y, _ in strips] == list(range(0, 700, 128))
    whole = tifffile.TiffFile(generic_pyramid).series[0].levels[0].asarray()
    np.testing.assert_array_equal(np.concatenate([s for _, s in strips]), whole)


def test_channels_first_strips_with_recycled_buffers(generic_pyramid):
    import queue

    slide = open_slide(generic_pyramid)
    whole = tifffile.TiffFile(generic_pyramid).series[0].levels[1].asarray()
    recycle: queue.SimpleQueue = queue.SimpleQueue()
    strips, buffers = [], set()
    for _, strip in slide.iter_strips(1, channels_first=True, recycle=recycle):
        assert strip.shape[0] == 3
        strips.append(strip.copy())
        buffers.add(id(strip))
        recycle.put(strip)  # done with it: the reader refills it
    np.testing.assert_array_equal(np.concatenate(strips, axis=1), whole.transpose(2, 0, 1))
    assert len(buffers) <= 2  # full-height strips share one buffer; the short last one its own


def test_striped_uncompressed_tiff(tmp_path):
    image = textured_rgb(300, 200, seed=3)
    path = tmp_path / "striped.tif"
    tifffile.imwrite(
        path, image, rowsperstrip=64, resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    with open_slide(path) as slide:
        assert slide.backend == "tifffile" and slide.mpp == pytest.approx(0.5)
        assert [y for y, _ in slide.iter_strips(0)] == [0, 64, 128, 192, 256]
        np.testing.assert_array_equal(np.concatenate([s for _, s in slide.iter_strips(0)]), image)
        np.testing.assert_array_equal(slide.read_region(0, 50, 60, 30, 100), image[60:160, 50:80])


def test_level_for_mpp_picks_the_coarsest_level_not_coarser_than_the_target(generic_pyramid):
    slide = open_slide(generic_pyramid)  # levels at 0.25, 0.5, 1.0 um/px
    assert level_for_mpp(slide, 0.5) == 1
    assert level_for_mpp(slide, 0.505) == 1  # within 2%
    assert level_for_mpp(slide, 0.45) == 0
    assert level_for_mpp(slide, 0.75) == 1
    assert level_for_mpp(slide, 8.0) == 2
    assert level_for_mpp(slide, 0.1) == 0  # even level 0 is coarser: read it (and upsample)
    assert level_for_mpp(slide, 0.5, mpp=0.5) == 0  # a given mpp overrides the file's


# --------------------------------------------------------------------------- bad input


def test_missing_and_unsupported_files_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        open_slide(tmp_path / "nope.svs")
    assert "nope.svs" in str(err.value)
    junk = tmp_path / "junk.svs"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(InputError, match="junk.svs"):
        open_slide(junk)
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(InputError, match="broken.png: cannot decode"):
        open_slide(broken_png)


def test_truncated_tiff_raises_input_error(tmp_path, generic_pyramid):
    data = generic_pyramid.read_bytes()
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"truncated.tif: truncated file: level 0 image data ends"):
        open_slide(truncated)


@pytest.mark.realdata
def test_truncated_svs_raises_input_error(tmp_path):
    data = real_image("CMU-1-Small-Region.svs").read_bytes()
    truncated = tmp_path / "cut.svs"
    truncated.write_bytes(data[:1_000_000])  # the first IFD sits past 1.2 MB
    with pytest.raises(InputError, match="cut.svs"):
        open_slide(truncated)


def test_corrupt_tile_raises_input_error_naming_the_file(tmp_path, generic_pyramid):
    data = bytearray(generic_pyramid.read_bytes())
    page = tifffile.TiffFile(generic_pyramid).pages[0]
    offset, count = page.dataoffsets[5], page.databytecounts[5]
    data[offset : offset + count] = b"\x00" * count  # tile 5 of level 0: no JPEG left
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(bytes(data))
    slide = open_slide(corrupt)
    slide.read_region(0, 0, 0, 64, 64)  # tile 0 is intact
    with pytest.raises(InputError, match="corrupt.tif: cannot decode level 0 tile 5"):
        list(slide.iter_strips(0))


def _zero_tile_counts(source, out, tiles) -> None:
    """Copy ``source`` with TileByteCounts 0 for ``tiles`` of level 0 (never-scanned glass)."""
    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tif:
        tag = tif.pages[0].tags[325]
        size = {3: 2, 4: 4, 16: 8}[int(tag.dtype)]
        for i in tiles:
            at = tag.valueoffset + i * size
            data[at:at + size] = bytes(size)
    out.write_bytes(bytes(data))


def test_a_few_empty_tiles_read_white_but_a_level_without_data_is_refused(tmp_path,
                                                                          generic_pyramid):
    with tifffile.TiffFile(generic_pyramid) as tif:
        n_tiles = len(tif.pages[0].databytecounts)
    sparse = tmp_path / "sparse.tif"
    _zero_tile_counts(generic_pyramid, sparse, [0, 1])
    with open_slide(sparse) as slide:
        assert (slide.read_region(0, 0, 0, 8, 8) == 255).all()  # glass, not an error
    empty = tmp_path / "empty.tif"
    _zero_tile_counts(generic_pyramid, empty, range(n_tiles))
    with pytest.raises(InputError, match=rf"empty.tif: no image data: all {n_tiles} tiles of "
                                         r"level 0 \(900 x 700 px\) are empty or absent"):
        open_slide(empty)


def test_declared_size_against_file_size():
    from pastflow.slide import check_declared_size

    check_declared_size(Path("small.png"), 20_000, 10_000, 100)  # 600 MB: under the 1 GB floor
    check_declared_size(Path("slide.tif"), 100_000, 80_000, 1_000_000_000)  # 24:1, a real scan
    with pytest.raises(InputError, match=r"bomb.png: declares 40000 x 40000 px \(4.8 GB decoded\) "
                                         r"in 4,000,000 bytes of image data, more than 1000:1"):
        check_declared_size(Path("bomb.png"), 40_000, 40_000, 4_000_000)
