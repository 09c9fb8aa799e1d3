"""pastflow.embed.morphology: hand-crafted H&E features (stains, nuclei, texture) on drawn
patches with known answers, checked against skimage where it computes the same thing."""

from __future__ import annotations

import numpy as np
import pytest

from pastflow.embed.morphology import MIN_NUCLEUS_UM2, MORPHOLOGY_FEATURES, morphology_features

PINK, PURPLE, DARK_PURPLE = (230, 150, 190), (120, 80, 160), (60, 35, 105)
MPP = 0.5


def patch_with_nuclei(centres, radius: int, colour, size: int = 64) -> np.ndarray:
    """``uint8 (3, size, size)``: pink stroma with a disc of ``colour`` at each centre."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = PINK
    yy, xx = np.mgrid[:size, :size]
    for y, x in centres:
        image[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = colour
    return np.moveaxis(image, -1, 0)


def features(patches) -> dict[str, np.ndarray]:
    values = morphology_features(np.stack(patches), MPP)
    assert values.shape == (len(patches), len(MORPHOLOGY_FEATURES)) and values.dtype == np.float32
    return dict(zip(MORPHOLOGY_FEATURES, values.T))


def test_more_and_darker_nuclei_raise_haematoxylin_and_the_nucleus_count():
    few = patch_with_nuclei([(8, 8), (56, 56)], 5, PURPLE)
    many = patch_with_nuclei([(10, 10), (10, 32), (10, 54), (32, 10), (32, 32), (54, 54)], 5,
                             DARK_PURPLE)
    blank = patch_with_nuclei([], 5, PURPLE)
    f = features([few, many, blank])
    area_um2 = 64 * 64 * MPP * MPP
    assert f["nuclei_per_1000um2"] * area_um2 / 1000 == pytest.approx([2, 6, 0])
    disc_px = (patch_with_nuclei([(32, 32)], 5, PURPLE)[0] != PINK[0]).sum()
    assert f["nucleus_area_um2"] == pytest.approx([disc_px * MPP ** 2] * 2 + [0])
    assert f["nucleus_fraction"] == pytest.approx([2 * disc_px / 64 ** 2, 6 * disc_px / 64 ** 2,
                                                   0])
    assert f["h_mean"][1] > f["h_mean"][0] > f["h_mean"][2] == 0
    assert f["h_centre_mean"][1] > 0 and f["nucleus_centre_fraction"][1] > 0
    assert f["nucleus_centre_fraction"][0] == 0  # both nuclei lie outside the central half
    assert f["e_mean"][2] > 0  # pink stroma is eosin


def test_specks_below_the_minimum_size_are_not_nuclei():
    speck = patch_with_nuclei([(20, 20)], 0, DARK_PURPLE)  # one pixel: 0.25 um2
    assert MIN_NUCLEUS_UM2 > MPP ** 2
    f = features([speck])
    assert f["nuclei_per_1000um2"][0] == 0 and f["nucleus_fraction"][0] == 0


def test_texture_separates_a_flat_from_a_striped_patch():
    flat = patch_with_nuclei([], 5, PURPLE)
    striped = flat.copy()
    striped[:, :, ::4] = 40  # dark vertical lines every 4 px
    f = features([flat, striped])
    assert f["gradient_mean"][0] == 0 and f["gradient_mean"][1] > 0.05
    assert f["glcm_contrast"][0] == 0 and f["glcm_contrast"][1] > 1
    assert f["glcm_energy"][0] == pytest.approx(1) and f["glcm_energy"][1] < 0.8
    assert f["grey_std"][0] == 0 and f["grey_std"][1] > 0.1


def test_stains_and_cooccurrence_equal_skimage_on_random_patches():
    from skimage.color import rgb2hed
    from skimage.feature import graycomatrix, graycoprops

    patches = np.random.default_rng(0).integers(0, 256, (3, 3, 40, 40), dtype=np.uint8)
    f = features(list(patches))
    for k, patch in enumerate(patches):
        hed = rgb2hed(np.moveaxis(patch, 0, -1))
        assert f["h_mean"][k] == pytest.approx(hed[..., 0].mean(), rel=1e-4)
        assert f["e_std"][k] == pytest.approx(hed[..., 1].std(), rel=1e-4)
        assert f["dab_mean"][k] == pytest.approx(hed[..., 2].mean(), rel=1e-4)
        grey = np.minimum(patch.mean(axis=0) / 255 * 8, 7).astype(np.uint8)
        glcm = graycomatrix(grey, [1], [0, np.pi / 2], levels=8, symmetric=True, normed=True)
        for name in ("contrast", "homogeneity", "energy", "correlation"):
            assert f[f"glcm_{name}"][k] == pytest.approx(graycoprops(glcm, name).mean(), rel=1e-5)


def test_features_are_intensive_a_larger_spot_patch_of_the_same_tissue_matches():
    cell = patch_with_nuclei([(16, 16), (40, 44)], 5, PURPLE)
    spot = np.tile(cell, (1, 2, 2))  # the same tissue, four times the area
    f = features([cell, spot[:, :64, :64]])  # batching needs one size: compare separately
    g = dict(zip(MORPHOLOGY_FEATURES, morphology_features(spot[None], MPP)[0]))
    for name in ("h_mean", "e_mean", "nucleus_fraction", "nuclei_per_1000um2",
                 "nucleus_area_um2", "grey_mean"):
        assert g[name] == pytest.approx(f[name][0], rel=1e-5), name


def test_bad_patches_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        morphology_features(np.zeros((2, 3, 8, 8), np.float32), MPP)
    with pytest.raises(ValueError, match=r"\(n, 3, h, w\)"):
        morphology_features(np.zeros((2, 8, 8, 3), np.uint8), MPP)
