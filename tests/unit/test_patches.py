"""pastflow.patches on small slides: store build, random reads, tissue flags, gallery, CLI."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from pastflow.errors import InputError
from pastflow.patches.gallery import save_gallery
from pastflow.patches.reader import PatchStore, export_patches, export_patches_h5
from pastflow.patches.resample import resample_strips
from pastflow.patches.store import build_patch_store
from pastflow.patches.tissue import ThumbnailBuilder, tissue_mask
from pastflow.slide import open_slide

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

MPP = 0.25  # level 0 of the dot slide
WIDTH, HEIGHT = 1536, 1024
TISSUE_RIGHT = 1024  # x < 1024: pink tissue; x >= 1024: glass
DOT_RADIUS = 8.0  # level-0 px (2 um)
PINK, PURPLE = np.array([236, 168, 200]), np.array([70, 35, 120])


def render_dots(centres: np.ndarray) -> np.ndarray:
    """Tissue (left) and glass (right) with anti-aliased purple dots at ``centres`` ``(n, 2)``.

    Pixel centres are at integer coordinates, so a dot at ``(x, y)`` has its darkness
    centroid exactly at ``(x, y)`` in array indices.
    """
    image = np.full((HEIGHT, WIDTH, 3), 255.0)
    image[:, :TISSUE_RIGHT] = PINK
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    for x, y in centres:
        y0, y1 = int(max(0, y - DOT_RADIUS - 2)), int(min(HEIGHT, y + DOT_RADIUS + 3))
        x0, x1 = int(max(0, x - DOT_RADIUS - 2)), int(min(WIDTH, x + DOT_RADIUS + 3))
        dist = np.hypot(rows[y0:y1, x0:x1] - y, cols[y0:y1, x0:x1] - x)
        cover = np.clip(DOT_RADIUS + 0.5 - dist, 0.0, 1.0)[..., None]
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - cover) + PURPLE * cover
    return np.rint(image).astype(np.uint8)


def halve(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)


def write_generic_pyramid(
    path: Path, image: np.ndarray, n_levels: int = 3, compression: str | None = "zlib"
) -> None:
    """Reduced levels as top-level IFDs with resolution tags (OpenSlide's generic-tiff layout)."""
    level = image
    with tifffile.TiffWriter(path) as tw:
        for i in range(n_levels):
            mpp = MPP * 2**i
            tw.write(
                level,
                tile=(128, 128),
                compression=compression,
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
            )
            level = halve(level)


@pytest.fixture(scope="module")
def dots(tmp_path_factory):
    """A 3-level lossless pyramid with dots on a jittered grid; ``(path, ids, xy)``."""
    rng = np.random.default_rng(7)
    grid = np.stack(
        np.meshgrid(np.arange(48, WIDTH - 40, 96.0), np.arange(48, HEIGHT - 40, 96.0)), -1
    ).reshape(-1, 2)
    xy = grid + rng.uniform(-10, 10, grid.shape)
    path = tmp_path_factory.mktemp("dots") / "dots.tif"
    write_generic_pyramid(path, render_dots(xy))
    ids = [f"cell-{i}" for i in range(len(xy))]
    return path, ids, xy


def darkness_centroid(patch: np.ndarray) -> np.ndarray:
    """``[x, y]`` centroid of purple (dark, blue > red) pixels within 8 px of the patch centre."""
    size = patch.shape[-1]
    rgb = patch.astype(float)
    weight = np.clip((PINK.sum() - rgb.sum(0)) / (PINK.sum() - PURPLE.sum()), 0, 1)
    rows, cols = np.mgrid[:size, :size]
    near = np.hypot(rows - (size - 1) / 2, cols - (size - 1) / 2) < 8
    weight = weight * near
    return np.array([(cols * weight).sum(), (rows * weight).sum()]) / weight.sum()


def build(dots, tmp_path, **kwargs) -> tuple[PatchStore, object]:
    path, ids, xy = dots
    stats = build_patch_store(path, ids, xy, tmp_path / "store.h5", progress=False, **kwargs)
    return PatchStore(tmp_path / "store.h5"), stats


# --------------------------------------------------------------------------- centring and scale


@pytest.mark.parametrize("target_mpp, level, resampled", [(0.5, 1, False), (0.4, 0, True)])
def test_each_patch_is_centred_on_its_cell(dots, tmp_path, target_mpp, level, resampled):
    store, stats = build(dots, tmp_path, target_mpp=target_mpp, patch_px=32)
    assert stats.level == level and store.attrs["resampled"] == resampled
    assert store.mpp == pytest.approx(target_mpp, rel=1e-3)
    tissue = np.flatnonzero(dots[2][:, 0] < TISSUE_RIGHT - 20)
    patches = store.read(tissue)
    corners = np.floor(store.centers[tissue] - 31 / 2 + 0.5)
    for k, i in enumerate(tissue):
        found = darkness_centroid(patches[k])
        # The dot sits where the cell's store coordinate says, to a small fraction of a pixel ...
        np.testing.assert_allclose(found, store.centers[i] - corners[k], atol=0.08)
        # ... and so within half a pixel (the crop's rounding) of the patch centre.
        assert np.all(np.abs(found - 15.5) <= 0.5 + 0.08)


def test_resampling_from_0_25_to_0_5_halves_the_image_and_the_dots(dots, tmp_path):
    path, ids, xy = dots
    single = tmp_path / "single_level.tif"
    write_generic_pyramid(single, tifffile.imread(path), n_levels=1)  # no level at 0.5
    stats = build_patch_store(
        single, ids, xy, tmp_path / "s.h5", target_mpp=0.5, patch_px=32, progress=False
    )
    store = PatchStore(tmp_path / "s.h5")
    assert stats.level == 0 and store.attrs["resampled"]
    assert stats.image_size == (WIDTH // 2, HEIGHT // 2)
    assert store.mpp == pytest.approx(0.5)
    patch = store[0].astype(float)
    dark = (PINK.sum() - patch.sum(0)) / (PINK.sum() - PURPLE.sum())
    area_px = np.clip(dark, 0, 1).sum()
    expected = np.pi * (DOT_RADIUS / 2) ** 2  # radius 8 px at 0.25 um/px = 4 px at 0.5
    assert area_px == pytest.approx(expected, rel=0.08)
    # Same cells, same resolution, read from the 0.5 um/px level instead: the same patch.
    pyramid_store, _ = build(dots, tmp_path / "pyr", target_mpp=0.5, patch_px=32)
    diff = np.abs(store.read(np.arange(10)).astype(int) - pyramid_store.read(np.arange(10)))
    assert diff.mean() < 2.0


def test_resample_strips_has_no_seams():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (403, 211, 3), dtype=np.uint8)
    for dst in [(105, 201), (130, 259), (422, 806)]:  # 0.5x, ~0.64x, 2x
        strips = ((y, image[y : y + 37]) for y in range(0, 403, 37))
        bands = list(resample_strips(strips, (211, 403), dst))
        out = np.concatenate([band for _, band in bands])
        whole = np.asarray(Image.fromarray(image).resize(dst, Image.Resampling.BILINEAR))
        assert out.shape == whole.shape
        assert np.abs(out.astype(int) - whole).max() <= 1
        assert [y for y, _ in bands] == np.cumsum([0] + [len(b) for _, b in bands[:-1]]).tolist()


# --------------------------------------------------------------------------- edges, context, tissue


def test_edge_cells_are_padded_white_and_outside_cells_flagged(dots, tmp_path):
    path, _, _ = dots
    xy = np.array([[0.0, 0.0], [WIDTH - 1.0, 500.0], [300.0, 300.0], [-500.0, 200.0]])
    build_patch_store(
        path,
        ["corner", "right", "inner", "outside"],
        xy,
        tmp_path / "e.h5",
        target_mpp=0.5,
        patch_px=40,
        progress=False,
    )
    store = PatchStore(tmp_path / "e.h5")
    corner, right, inner, outside = store.read(np.arange(4))
    # Cell at level-0 pixel (0, 0) -> store pixel (-0.25, -0.25) + margin: the crop's first
    # 20 rows and columns lie in the margin.
    assert (corner[:, :20, :] == 255).all() and (corner[:, :, :20] == 255).all()
    np.testing.assert_array_equal(corner[:, 25:, 25], np.broadcast_to(PINK[:, None], (3, 15)))
    assert (right[:, :, 20:] == 255).all() and (right[:, :, :15] == 255).all()  # glass, then margin
    assert (inner != 255).any()
    assert store.in_slide.tolist() == [True, True, True, False]
    assert not store.in_tissue[3]
    assert (outside[:, :, :20] == 255).all()  # moved to the left edge: its left half is margin


def test_context_patch_is_centred_like_the_patch(dots, tmp_path):
    store, stats = build(dots, tmp_path, target_mpp=0.5, patch_px=32, context_px=96)
    assert stats.context_px == 96 and store.margin >= 49
    indices = np.array([3, 0, 7])
    context, patches = store.read_context(indices), store.read(indices)
    assert context.shape == (3, 3, 96, 96)
    np.testing.assert_array_equal(context[:, :, 32:64, 32:64], patches)


def test_tissue_flag_follows_the_stain(dots, tmp_path):
    path, ids, xy = dots
    glass = np.array([[1300.0, 200.0], [1450.0, 900.0], [1100.0, 500.0]])  # no dots there
    all_xy = np.concatenate([xy, glass])
    build_patch_store(
        path,
        ids + ["g1", "g2", "g3"],
        all_xy,
        tmp_path / "t.h5",
        target_mpp=0.5,
        patch_px=32,
        progress=False,
    )
    store = PatchStore(tmp_path / "t.h5")
    expected = all_xy[:, 0] < TISSUE_RIGHT
    # Isolated dots on glass are specks, not tissue; cells within one thumbnail pixel of the
    # tissue border may go either way.
    decided = np.abs(all_xy[:, 0] - TISSUE_RIGHT) > 8 / MPP
    np.testing.assert_array_equal(store.in_tissue[decided], expected[decided])
    assert not store.in_tissue[-3:].any()


def test_tissue_mask_threshold_is_clamped_for_all_tissue_or_all_glass():
    rng = np.random.default_rng(0)
    stain = np.clip(rng.normal(PINK, 25, (60, 80, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask(stain, 8.0).all()  # Otsu alone would split the tissue in two
    glass = np.clip(rng.normal(245, 4, (60, 80, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, 8.0).any()


def test_thumbnail_builder_samples_one_row_per_block():
    image = np.arange(50 * 40 * 3, dtype=np.uint32).reshape(50, 40, 3) % 251
    image = image.astype(np.uint8)
    thumb = ThumbnailBuilder(40, 50, factor=8)
    for y0 in range(0, 50, 13):
        thumb.add(y0, image[y0 : y0 + 13])
    result = thumb.result()
    assert result.shape == (7, 5, 3)
    rows = [4, 12, 20, 28, 36, 44, 49]  # middle row of each block of 8; last block: last row
    expected = image[rows].reshape(7, 5, 8, 3).mean(2)
    assert np.abs(result.astype(float) - expected).max() <= 0.5
    planar = ThumbnailBuilder(40, 50, factor=8)
    for y0 in range(0, 50, 13):
        planar.add(y0, image[y0 : y0 + 13].transpose(2, 0, 1), channels_first=True)
    np.testing.assert_array_equal(planar.result(), result)


# --------------------------------------------------------------------------- the reader


def test_reader_random_access_pickling_and_export(dots, tmp_path):
    store, stats = build(dots, tmp_path, target_mpp=0.5, patch_px=24)
    assert len(store) == len(dots[1]) and list(store.cell_ids[:2]) == ["cell-0", "cell-1"]
    assert stats.bytes_per_cell == pytest.approx(
        (tmp_path / "store.h5").stat().st_size / len(store)
    )
    batch = store.read([5, 0, 5])
    np.testing.assert_array_equal(batch[0], store[5])
    np.testing.assert_array_equal(batch[1], store[0])
    np.testing.assert_array_equal(batch[2], batch[0])
    # A pickled store (as sent to a spawned DataLoader worker) carries only its path.
    assert len(pickle.dumps(store)) < 500
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.read([5, 0]), batch[:2])
    np.testing.assert_array_equal(store.index_of(["cell-5", "cell-0"]), [5, 0])
    with pytest.raises(KeyError, match="cell-x"):
        store.index_of(["cell-x"])
    # The literal [n, 3, h, w] layout, in memory and as HDF5.
    np.testing.assert_array_equal(export_patches(store, [1, 2]), store.read([1, 2]))
    out = export_patches_h5(store, tmp_path / "literal.h5", indices=[2, 4, 6], size=16)
    with h5py.File(out) as f:
        assert f["patches"].shape == (3, 3, 16, 16)
        assert list(f["cell_ids"].asstr()[:]) == ["cell-2", "cell-4", "cell-6"]
        np.testing.assert_array_equal(f["patches"][:], store.read([2, 4, 6], size=16))
    with pytest.raises(ValueError, match="margin"):
        store.read([0], size=200)
    with pytest.raises(ValueError, match="without context"):
        store.read_context([0])
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5" * 100)
    with pytest.raises(InputError, match="junk.h5: not a readable patch store"):
        len(PatchStore(junk))


def test_a_batch_read_by_threads_is_the_one_thread_read(dots, tmp_path, monkeypatch):
    store, _ = build(dots, tmp_path, target_mpp=0.5, patch_px=24)
    rows = np.random.default_rng(0).integers(0, len(store), 500)
    one = PatchStore(store.path, threads=1).read(rows, size=20)
    np.testing.assert_array_equal(PatchStore(store.path, threads=4).read(rows, size=20), one)
    # By default: the job's CPUs where the store was made, one thread in a loader's worker.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert PatchStore(store.path)._read_threads() == 3
    assert pickle.loads(pickle.dumps(PatchStore(store.path)))._read_threads() == 1  # spawned
    made_here = PatchStore(store.path)
    assert made_here._read_threads() == 3  # (known before the fork)
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked worker
    assert made_here._read_threads() == 1


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_the_image_is_mapped_read_only_with_huge_pages_asked_for(dots, tmp_path):
    """Huge pages: 1.6x faster random reads (a patch's rows are a plane's width apart)."""
    store, _ = build(dots, tmp_path, target_mpp=0.5, patch_px=24)
    assert not store.image.flags.writeable
    smaps = Path("/proc/self/smaps").read_text().split("\n")
    mapping = next(i for i, line in enumerate(smaps) if line.endswith(str(store.path)))
    flags = next(line for line in smaps[mapping:] if line.startswith("VmFlags:")).split()
    assert "hg" in flags  # MADV_HUGEPAGE


def test_store_holds_the_slide_level_with_white_margins(dots, tmp_path):
    store, _ = build(dots, tmp_path, target_mpp=0.5, patch_px=32)
    level1 = open_slide(dots[0]).read_region(1, 0, 0, WIDTH // 2, HEIGHT // 2)
    m = store.margin
    image = store.image
    assert image.shape == (3, HEIGHT // 2 + 2 * m, WIDTH // 2 + 2 * m)
    np.testing.assert_array_equal(image[:, m:-m, m:-m], level1.transpose(2, 0, 1))
    assert (image[:, :m] == 255).all() and (image[:, -m:] == 255).all()
    assert (image[:, :, :m] == 255).all() and (image[:, :, -m:] == 255).all()


def test_gallery_is_written(dots, tmp_path):
    store, _ = build(dots, tmp_path, target_mpp=0.5, patch_px=32)
    png = save_gallery(store, tmp_path / "gallery.png", n=12, title="dots")
    with Image.open(png) as image:
        assert image.size[0] > 400 and image.size[1] > 100


# --------------------------------------------------------------------------- failures


def test_failure_mid_build_leaves_no_output(dots, tmp_path):
    path, ids, xy = dots
    data = bytearray(path.read_bytes())
    page = tifffile.TiffFile(path).pages[1]  # level 1, the level a 0.5 um/px store reads
    index = len(page.dataoffsets) // 2
    offset, count = page.dataoffsets[index], page.databytecounts[index]
    data[offset : offset + count] = b"\xff" * count  # no longer zlib
    broken = tmp_path / "broken.tif"
    broken.write_bytes(bytes(data))
    out = tmp_path / "out" / "store.h5"
    with pytest.raises(InputError, match=f"broken.tif: cannot decode level 1 tile {index}"):
        build_patch_store(broken, ids, xy, out, target_mpp=0.5, patch_px=32, progress=False)
    assert list(out.parent.iterdir()) == []  # neither the store nor a temporary file


def test_bad_input_raises_input_error_naming_the_file(dots, tmp_path):
    path, ids, xy = dots
    out = tmp_path / "s.h5"
    with pytest.raises(InputError, match="cells.csv: no cells"):
        build_patch_store(path, [], np.zeros((0, 2)), out, cells_path="cells.csv")
    with pytest.raises(InputError, match="none of the 2 cells lies inside the slide"):
        build_patch_store(path, ["a", "b"], [[-100.0, 5.0], [5.0, 1e6]], out, patch_px=32)
    with pytest.raises(ValueError, match="give patch_px or patch_um"):  # no default size
        build_patch_store(path, ids, xy, out)
    with pytest.raises(InputError, match="occur more than once"):
        build_patch_store(path, ["a", "a"], [[1.0, 1.0], [2.0, 2.0]], out)
    with pytest.raises(InputError, match="missing or infinite"):
        build_patch_store(path, ["a", "b"], [[1.0, np.nan], [2.0, 2.0]], out)
    with pytest.raises(InputError, match=r"2 cell ids but coordinates of shape \(3, 2\)"):
        build_patch_store(path, ["a", "b"], np.zeros((3, 2)), out)
    png = tmp_path / "slide.png"
    Image.fromarray(tifffile.imread(path)).save(png)
    with pytest.raises(InputError, match="slide.png: no microns-per-pixel"):
        build_patch_store(png, ids, xy, out)
    assert not out.exists()
    # The same PNG with its mpp given builds.
    stats = build_patch_store(
        png, ids, xy, out, slide_mpp=MPP, target_mpp=0.5, patch_px=32, progress=False
    )
    assert stats.n_cells == len(ids) and stats.image_size == (WIDTH // 2, HEIGHT // 2)


# --------------------------------------------------------------------------- real slide, CLI


@pytest.mark.realdata
def test_real_svs_store_matches_openslide(tmp_path):
    import openslide

    svs = DATA / "images" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} not available (../shared/data is absent)")
    grid = np.stack(np.meshgrid(np.arange(100, 2200, 150.0), np.arange(100, 2900, 150.0)), -1)
    xy = grid.reshape(-1, 2) + 0.3
    ids = [f"c{i}" for i in range(len(xy))]
    stats = build_patch_store(
        svs, ids, xy, tmp_path / "cmu.h5", target_mpp=0.5, patch_px=64, progress=False
    )
    assert stats.level == 0 and stats.mpp == pytest.approx(0.499)  # within 2%: not resampled
    store = PatchStore(tmp_path / "cmu.h5")
    osr = openslide.OpenSlide(str(svs))
    corners = np.floor(store.centers - 63 / 2 + 0.5).astype(int) - store.margin
    for i in [0, 40, len(xy) - 1]:
        x, y = corners[i]
        expected = np.asarray(osr.read_region((int(x), int(y)), 0, (64, 64)))[..., :3]
        np.testing.assert_array_equal(store[i], expected.transpose(2, 0, 1))
    # The slide has glass around the tissue: both flags occur, and tissue patches are stained.
    assert 0.2 < store.in_tissue.mean() < 0.95
    patches = store.read(np.arange(len(store))).astype(float)
    spread = patches.max(1) - patches.min(1)  # per-pixel channel spread ~ saturation
    per_cell = spread.mean((1, 2))
    assert per_cell[store.in_tissue].mean() > 2 * per_cell[~store.in_tissue].mean()


def write_ingested_table(
    zarr_path: Path,
    slide: Path,
    xy: np.ndarray,
    ids: list[str],
    mpp: float,
    drop: str | None = None,
    unit: dict | None = None,
) -> None:
    import anndata
    import pandas as pd

    obs = pd.DataFrame(
        {"cell_id": ids, "sample": "S1", "x_px": xy[:, 0], "y_px": xy[:, 1]},
        index=[str(i) for i in range(len(ids))],
    )
    if drop:
        obs = obs.drop(columns=drop)
    table = anndata.AnnData(
        X=np.zeros((len(ids), 0), np.float32),
        obs=obs,
        uns={"pastflow": {"slide_path": str(slide), "mpp": mpp, "sample": "S1", **(unit or {})}},
    )
    table.write_zarr(zarr_path / "tables" / "table")


def run_cli(argv: list[str]) -> None:
    """``pastflow patches ARGS`` through this stage's own parser (the CLI's InputError -> exit 2
    handling belongs to pastflow.cli)."""
    import argparse

    from pastflow.patches.cli import add_parser

    parser = argparse.ArgumentParser(prog="pastflow")
    add_parser(parser.add_subparsers(dest="stage", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_builds_store_and_gallery(dots, tmp_path):
    path, ids, xy = dots
    table = tmp_path / "S1.zarr"
    write_ingested_table(table, path, xy, ids, MPP)
    out, gallery = tmp_path / "patches" / "S1.h5", tmp_path / "patches" / "S1_gallery.png"
    settings = tmp_path / "config.yaml"  # a workflow config: only its patches section is read
    settings.write_text("patches: {patch_um: 12, mpp: 0.5, context_um: 30}\nqc: {min_cells: 1}\n")
    run_cli(
        [
            "patches",
            "--ingested",
            str(table),
            "--out",
            str(out),
            "--gallery",
            str(gallery),
            "--settings",
            str(settings),
            "--no-progress",
        ]
    )
    store = PatchStore(out)
    assert len(store) == len(ids) and store.patch_px == 24 and store.context_px == 60
    np.testing.assert_array_equal(store.xy_level0, xy)
    assert gallery.stat().st_size > 10_000
    assert store.unit == "cell"  # a table without a unit (ingested before units): cells

    # A spot sample is cut at its diameter plus spot_context_um, whatever patch_um says.
    spots = tmp_path / "spots.zarr"
    write_ingested_table(spots, path, xy, ids, MPP, unit={"unit": "spot", "unit_diameter_um": 20.0})
    settings.write_text("patches: {patch_um: 12, mpp: 0.5, spot_context_um: 6}\n")
    run_cli(["patches", "--ingested", str(spots), "--out", str(tmp_path / "spots.h5"),
             "--settings", str(settings), "--no-progress"])
    spot_store = PatchStore(tmp_path / "spots.h5")
    assert spot_store.unit == "spot" and spot_store.patch_px == 52  # (20 + 6) um at 0.5 um/px
    assert spot_store.attrs["unit_diameter_um"] == 20.0

    bad = tmp_path / "bad.zarr"
    write_ingested_table(bad, path, xy, ids, MPP, drop="y_px")
    with pytest.raises(InputError, match="bad.zarr/tables/table: obs lacks column"):
        run_cli(
            ["patches", "--ingested", str(bad), "--out", str(tmp_path / "bad.h5"), "--no-progress"]
        )
    assert not (tmp_path / "bad.h5").exists()
