"""The patch store's image writer: every byte where the store's layout says, whatever the
alignment of the image in the file, with direct I/O or through the page cache."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from pastflow.patches import planar_writer
from pastflow.patches.planar_writer import ALIGN, PlanarImageWriter
from pastflow.patches.store import StoreGeometry


def geometry(width: int, height: int, margin: int) -> StoreGeometry:
    return StoreGeometry(slide_mpp=0.25, level=0, level_size=(width, height), level_mpp=0.5,
                         image_size=(width, height), mpp=0.5, patch_px=2 * margin - 2,
                         context_px=0, margin=margin)


def write_image(path, offset, image, margin, band_rows, channels_first=False):
    """``image`` ``uint8 (h, w, 3)`` into a file of random bytes, at ``offset``; returns the
    file's bytes before and after, and whether the writer stayed direct."""
    h, w, _ = image.shape
    geo = geometry(w, h, margin)
    padded_w, padded_h = geo.padded_size
    rng = np.random.default_rng(1)
    before = rng.integers(0, 256, offset + 3 * padded_w * padded_h + 5000, dtype=np.uint8)
    path.write_bytes(before.tobytes())
    with PlanarImageWriter(path, offset, geo) as writer:
        for y0 in range(0, h, band_rows):
            band = image[y0 : y0 + band_rows]
            if channels_first:
                band = np.ascontiguousarray(band.transpose(2, 0, 1))
            writer.write_band(y0, band, channels_first)
    after = np.fromfile(path, np.uint8)
    return before, after, geo, writer.direct


def supports_direct(folder) -> bool:
    fd = planar_writer._open_direct(folder / "store.bin")
    if fd is not None:
        os.close(fd)
    return fd is not None


def expected_planes(image, margin):
    planar = np.pad(image.transpose(2, 0, 1), ((0, 0), (margin, margin), (margin, margin)),
                    constant_values=255)
    return planar.ravel()


@pytest.mark.parametrize("offset", [ALIGN, 3 * ALIGN + 123, 777])
@pytest.mark.parametrize("direct", [True, False])
def test_every_byte_lands_in_place_and_nothing_else_changes(tmp_path, monkeypatch, offset, direct):
    # Small staging buffers: many aligned writes, carried tails, planes sharing blocks.
    monkeypatch.setattr(planar_writer, "STAGING_BYTES", 2 * ALIGN)
    if not direct:
        monkeypatch.setattr(planar_writer, "_open_direct", lambda path: None)
    image = np.random.default_rng(0).integers(0, 256, (97, 301, 3), dtype=np.uint8)
    for channels_first in (False, True):
        before, after, geo, stayed_direct = write_image(
            tmp_path / "store.bin", offset, image, margin=7, band_rows=13,
            channels_first=channels_first)
        assert stayed_direct == (direct and supports_direct(tmp_path))
        n = 3 * geo.padded_size[0] * geo.padded_size[1]
        np.testing.assert_array_equal(after[:offset], before[:offset])  # HDF5's bytes
        np.testing.assert_array_equal(after[offset : offset + n], expected_planes(image, 7))
        np.testing.assert_array_equal(after[offset + n :], before[offset + n :])


def test_an_image_smaller_than_a_block(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    before, after, geo, _ = write_image(tmp_path / "store.bin", 100, image, margin=2, band_rows=2)
    n = 3 * geo.padded_size[0] * geo.padded_size[1]
    assert n < ALIGN
    np.testing.assert_array_equal(after[100 : 100 + n], expected_planes(image, 2))
    np.testing.assert_array_equal(after[: 100], before[: 100])
    np.testing.assert_array_equal(after[100 + n :], before[100 + n :])


def test_a_file_system_refusing_direct_writes_gets_them_through_the_cache(tmp_path, monkeypatch):
    """Some file systems open with O_DIRECT and refuse the writes (EINVAL)."""
    real_pwrite = os.pwrite
    direct_fds = []
    real_open_direct = planar_writer._open_direct

    def open_direct(path):
        fd = real_open_direct(path)
        fd = fd if fd is not None else os.open(path, os.O_WRONLY)  # tmpfs: a stand-in
        direct_fds.append(fd)
        return fd

    def pwrite(fd, data, position):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, position)

    monkeypatch.setattr(planar_writer, "_open_direct", open_direct)
    monkeypatch.setattr(os, "pwrite", pwrite)
    image = np.random.default_rng(3).integers(0, 256, (2 * ALIGN // 50, 50, 3), dtype=np.uint8)
    _, after, geo, direct = write_image(tmp_path / "store.bin", ALIGN, image, margin=3,
                                        band_rows=40)
    n = 3 * geo.padded_size[0] * geo.padded_size[1]
    np.testing.assert_array_equal(after[ALIGN : ALIGN + n], expected_planes(image, 3))
    assert not direct


def test_bands_out_of_order_are_refused(tmp_path):
    geo = geometry(10, 20, 2)
    path = tmp_path / "store.bin"
    path.write_bytes(bytes(3 * 14 * 24))
    band = np.zeros((5, 10, 3), np.uint8)
    with pytest.raises(RuntimeError, match="expected row 5"):
        with PlanarImageWriter(path, 0, geo) as writer:
            writer.write_band(0, band, False)
            writer.write_band(10, band, False)
    with pytest.raises(RuntimeError, match="covered 5 of 20 rows"):
        with PlanarImageWriter(path, 0, geo) as writer:
            writer.write_band(0, band, False)


def test_decoding_threads_are_the_jobs_cpus_but_the_writers(monkeypatch):
    from pastflow.patches.store import default_workers

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    for cpus, workers in ((1, 1), (2, 1), (3, 2), (16, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)),
                            raising=False)
        assert default_workers() == workers
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")  # not the 16 the node has
    assert default_workers() == 2
