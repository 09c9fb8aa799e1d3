"""``make bench``: training-time augmentation of a batch, against doing it patch by patch.

Before, each loader worker jittered every patch on its own with scikit-image (``rgb2hed``,
``hed2rgb`` in float64), then flipped and turned it with numpy: the baseline here, re-stated
patch by patch from the same per-patch draws. pastflow now draws the parameters per patch
(:func:`pastflow.models.augment.draw_parameters`, in the workers) and applies them to the
whole batch as tensor operations on the training device
(:func:`pastflow.models.augment.prepare_images`). Both are timed in one run on the same
batch of 224 px patches (stain jitter, brightness, contrast, flips, turns, normalisation),
best of ``REPEATS``, with torch's threads as configured. The two outputs are asserted equal.
Writes ``results/bench/augment.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "results" / "bench"
BATCH = int(os.environ.get("PASTFLOW_BENCH_AUGMENT_BATCH", 64))
PATCH_PX = 224
REPEATS = 3
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def per_patch(patches: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The baseline: each patch on its own, scikit-image's stain round trip in float64."""
    from skimage.color import hed2rgb, rgb2hed

    out = np.empty(patches.shape, np.float32)
    mean, std = np.array(MEAN), np.array(STD)
    for k, (patch, row) in enumerate(zip(patches, rows)):
        rgb = patch.transpose(1, 2, 0) / 255.0
        rgb = np.clip(hed2rgb(rgb2hed(rgb) * row[0:3] + row[3:6]), 0, 1) + row[6]
        rgb = (rgb - rgb.mean()) * row[7] + rgb.mean()
        if row[8]:
            rgb = rgb[:, ::-1]
        if row[9]:
            rgb = rgb[::-1]
        rgb = np.clip(np.rot90(rgb, k=int(row[10])), 0, 1)
        out[k] = ((rgb - mean) / std).transpose(2, 0, 1)
    return out


def best_seconds(run, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.slow
def test_batch_augmentation_against_per_patch():
    from pastflow.models.augment import Augmentation, draw_parameters, prepare_images

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    augmentation = Augmentation(hed_sigma=0.05, brightness=0.1, contrast=0.1)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (BATCH, 3, PATCH_PX, PATCH_PX), dtype=np.uint8)
    rows = np.stack([draw_parameters(augmentation, np.random.default_rng(i))
                     for i in range(BATCH)])
    batch = {"patch": torch.from_numpy(patches).to(device),
             "augment": torch.from_numpy(rows).to(device)}

    def batched():
        out = prepare_images(batch, augmentation, MEAN, STD)["patch"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    expected = per_patch(patches, rows)
    np.testing.assert_allclose(batched().cpu().numpy(), expected, atol=1e-4)
    baseline_s = best_seconds(lambda: per_patch(patches, rows))
    batched()  # warm-up (kernels, constants on the device)
    pastflow_s = best_seconds(batched)
    result = {
        "device": str(device),
        "batch": BATCH,
        "patch_px": PATCH_PX,
        "per_patch_numpy_patches_per_s": round(BATCH / baseline_s, 1),
        "batch_patches_per_s": round(BATCH / pastflow_s, 1),
        "speedup": round(baseline_s / pastflow_s, 2),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "note": "per patch: scikit-image rgb2hed/hed2rgb in float64 and numpy flips, one "
                "patch at a time (what each loader worker did); batch: prepare_images on the "
                "device; the same draws, outputs equal to 1e-4",
    }
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "augment.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\naugmentation of {BATCH} patches of {PATCH_PX} px on {device}: per patch "
          f"{result['per_patch_numpy_patches_per_s']:.0f}/s, batch "
          f"{result['batch_patches_per_s']:.0f}/s -> {result['speedup']:.1f}x"
          f"\n  -> {BENCH / 'augment.json'}")
