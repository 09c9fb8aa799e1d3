"""pastflow.models.feature_cache: a frozen foundation model (UNI's reduced-size twin) runs once
per cell over a multi-epoch pretraining, its features cached under the run's folder; the
cached run's losses equal an uncached run without augmentation; a resumed run reuses the
cache and ends with the uninterrupted run's weights; a rewritten store is not reused;
pretrain -> embed -> predict from a cached run; DDP on two CPU processes shares the work."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from pastflow.models.checkpoint import load_checkpoint
from pastflow.models.feature_cache import CACHE_DIR
from pastflow.models.foundation import FoundationEncoder, create_backbone, foundation_model
from test_models_fixtures import cohort  # noqa: F401 (fixture)
from test_models_train import DDP_DRIVER, pretrain_in_one_thread, samples_of, subprocess_env

TWIN = dict(img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
STEPS, BATCH, CELLS = 12, 8, 36  # 36 cells a sample: 4 batches an epoch, 3 epochs


def frozen_config(weights, **train) -> dict:
    return {
        "seed": 5,
        "model": {"embed_dim": 16,
                  "image": {"name": "uni", "kwargs": {"weights": str(weights), "mode": "frozen",
                                                      **TWIN}},
                  "expression": {"name": "mlp", "kwargs": {"hidden": [32]}},
                  "pathway": {"kwargs": {"hidden": [16]}},
                  "reconstruction": {"likelihood": "mse", "hidden": 16},
                  "pathway_head": {"hidden": 16}, "spatial": {"k": 2, "heads": 2}},
        # No augmentation: what the cache computes is then what every step would.
        "data": {"augment": {"hed_sigma": 0.0, "flips": False, "rot90": False}},
        "train": {"steps": STEPS, "batch_size": BATCH, "lr": 1e-3, "warmup_steps": 2,
                  "checkpoint_every": 4, "keep_checkpoints": 5, "num_workers": 0,
                  "log_every": 4, "early_stopping_patience": 0, **train},
    }


@contextlib.contextmanager
def encoder_rows():
    """A list that receives the number of patches of every forward pass of a foundation
    encoder while the block runs (a global forward hook: no model is touched)."""
    counts: list[int] = []

    def hook(module, args, output):
        if isinstance(module, FoundationEncoder):
            counts.append(len(args[0]))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def cache_files(out, suffix=".npy"):
    return sorted(p for p in (out / CACHE_DIR).glob(f"*{suffix}")
                  if not p.name.endswith(".filled.npy"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("uni") / "model.safetensors"
    backbone = create_backbone(foundation_model("uni"), **TWIN)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def runs(cohort, weights, tmp_path_factory):
    """Trained on s1, validated on s2: with the cache, and without."""
    train, val = samples_of(cohort[:1]), samples_of(cohort[1:])
    out = {}
    for name, cache in (("cached", True), ("uncached", False)):
        out[name] = tmp_path_factory.mktemp(name)
        with encoder_rows() as rows:
            result = pretrain_in_one_thread(frozen_config(weights, cache_frozen_features=cache),
                                            train, out[name], validation=val, progress=False)
        out[f"{name}_result"], out[f"{name}_rows"] = result, rows
    return out


def test_the_encoder_runs_once_per_cell_and_the_losses_are_the_uncached_ones(runs):
    cached = runs["cached_result"].history
    # Once per cell: the training sample's and the validation sample's cells, one pass each.
    assert sum(runs["cached_rows"]) == 2 * CELLS
    filled = [np.load(p.with_name(p.stem + ".filled.npy")) for p in cache_files(runs["cached"])]
    assert sorted(f.sum() for f in filled) == [CELLS, CELLS]
    # Uncached: every step's cells and their 2 neighbours, and the validation cells at each of
    # the 3 checkpoints.
    assert sum(runs["uncached_rows"]) == STEPS * BATCH * 3 + 3 * CELLS * 3
    uncached = runs["uncached_result"].history
    assert len(cached) == STEPS and cached["val_loss"].notna().sum() == 3
    for column in ("loss", "clip", "reconstruction", "pathway_clip", "val_loss"):
        assert np.allclose(cached[column], uncached[column], atol=1e-5, equal_nan=True), column
    # The cache records what it was made from.
    made = json.loads(cache_files(runs["cached"], ".json")[0].read_text())
    assert made["encoder"]["name"] == "uni" and made["encoder"]["image_px"] == 16
    assert made["dtype"] == "float32" and made["shape"] == [CELLS, 32]


def test_a_resumed_run_reuses_the_cache_and_ends_as_the_uninterrupted_one(runs, cohort,
                                                                          tmp_path, weights):
    out = tmp_path / "resumed"
    shutil.copytree(runs["cached"], out)
    for later in ("step_00000008", "step_00000012"):
        shutil.rmtree(out / "checkpoints" / later)
    shutil.rmtree(out / "model")
    with encoder_rows() as rows:
        resumed = pretrain_in_one_thread(frozen_config(weights), samples_of(cohort[:1]), out,
                                         validation=samples_of(cohort[1:]), progress=False)
    assert rows == []  # every feature read from the cache
    uninterrupted = runs["cached_result"]
    pd.testing.assert_frame_equal(resumed.history, uninterrupted.history)
    state = resumed.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in uninterrupted.model.state_dict().items())


def test_a_rewritten_store_is_not_reused(cohort, weights, tmp_path):
    store, table = tmp_path / "s1.h5", tmp_path / "s1.h5ad"
    shutil.copy(cohort[0].store, store)
    shutil.copy(cohort[0].table, table)
    config = frozen_config(weights, steps=4, checkpoint_every=4)
    out = tmp_path / "run"
    with encoder_rows() as first:
        pretrain_in_one_thread(config, [(str(store), str(table))], out, progress=False)
    [old] = cache_files(out)
    old_features = np.load(old)
    with h5py.File(store, "r+") as f:  # the same cells and size, other pixels
        f["image"][...] = 255 - f["image"][...]
    with encoder_rows() as second:
        pretrain_in_one_thread(config, [(str(store), str(table))], out, progress=False)
    [new] = cache_files(out)
    filled = np.load(new.with_name(new.stem + ".filled.npy")).sum()
    assert sum(first) == sum(second) == filled > BATCH  # computed again, once per cell
    assert new != old and not old.exists()  # the stale file is gone
    assert not np.allclose(np.load(new), old_features)


def test_pretrain_embed_and_predict_from_a_cached_run(runs, cohort, tmp_path):
    """Embed runs the encoder on the patches itself: its embeddings are the model's on the
    cached features."""
    from pastflow.cli import main as cli
    from pastflow.embed.sample import embed_sample
    from pastflow.embed.settings import EmbedSettings
    from pastflow.models.data import CellDataset

    model_dir = runs["cached"] / "model"
    table = tmp_path / "s1.h5ad"
    embed_sample(model_dir, cohort[0].store, table, EmbedSettings(batch_size=7),
                 table_path=cohort[0].table, sample="s1", progress=False)
    embedded = ad.read_h5ad(table)
    model = load_checkpoint(model_dir).model
    cache = [p for p in cache_files(runs["cached"])
             if json.loads(p.with_suffix(".json").read_text())["samples"][0]["store"]
             == str(cohort[0].store.resolve())]
    features = torch.from_numpy(np.load(cache[0]))
    neighbours = CellDataset([cohort[0].store], [cohort[0].table], genes=model.genes,
                             pathways=model.pathways, k_neighbors=2).neighbors_of(range(CELLS))
    with torch.no_grad():
        h = model.encode_features(features, features[torch.from_numpy(neighbours)],
                                  torch.from_numpy(neighbours >= 0))
    assert list(embedded.obs["cell_id"]) == cohort[0].cell_ids
    assert np.allclose(embedded.obsm["X_image"], h.numpy(), atol=1e-5)
    predictions = tmp_path / "p.h5ad"
    assert cli(["predict", "--model", str(model_dir), "--embedding", str(table),
                "--table", str(cohort[0].table), "--out", str(predictions)]) == 0
    predicted = ad.read_h5ad(predictions)
    assert predicted.n_obs == CELLS and np.isfinite(predicted.X).all()


@pytest.mark.slow  # torchrun with two gloo ranks (~15 s)
def test_ddp_ranks_share_the_feature_computation(cohort, weights, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    out = tmp_path / "ddp"
    config = frozen_config(weights, steps=6, checkpoint_every=100)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", str(driver), json.dumps(config),
                          json.dumps(samples_of(cohort)), str(out)],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "computing" in run.stderr and "(2 processes)" in run.stderr
    [cache] = cache_files(out)
    filled = np.load(cache.with_name(cache.stem + ".filled.npy"))
    features = np.load(cache)
    assert filled.sum() > CELLS and (np.abs(features[filled]).sum(axis=1) > 0).all()
    assert not (np.abs(features[~filled]).sum(axis=1) > 0).any()
    assert not list((out / CACHE_DIR).glob(".*rank*"))  # rank 1's share copied and removed
    rank0, rank1 = (load_file(out / f"rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
