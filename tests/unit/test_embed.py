"""pastflow.embed: every cell's image (and expression) embedding from a pretrained model, equal
to what the model computes on the training pipeline's own tensors; the random-weight baseline;
H&E-only samples; spatial context; bad input; the resolution contract (a store at another
mpp than the model's is refused); the ``pastflow embed`` command and its settings file.

Also the fixtures ``trained`` (a tiny model pretrained on the two-sample cohort of
``test_models_fixtures``) and ``embedded`` (both samples embedded), used by test_predict.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from pastflow.contracts import LEVEL_MPP_TOLERANCE, MPP_TOLERANCE
from pastflow.embed.encode import random_model
from pastflow.resolution import read_store_resolution, training_resolution
from pastflow.embed.sample import embed_sample
from pastflow.embed.settings import EmbedSettings
from pastflow.errors import InputError
from pastflow.models.checkpoint import load_checkpoint, save_checkpoint
from pastflow.pretrain.settings import resolve_pretrain_config
from pastflow.models.augment import prepare_images
from pastflow.models.data import CellDataset
from pastflow.models.train import pretrain
from test_models_fixtures import MPP, PATCH_PX
from test_models_fixtures import cohort  # noqa: F401 (fixture)

TINY = {
    "seed": 3,
    "model": {"embed_dim": 16,
              "image": {"name": "vit_cell", "kwargs": {"depth": 1, "embed_dim": 32,
                                                       "num_heads": 2}},
              "expression": {"name": "mlp", "kwargs": {"hidden": [32]}},
              "pathway": {"kwargs": {"hidden": [16]}},
              "reconstruction": {"likelihood": "mse", "hidden": 16},
              "pathway_head": {"hidden": 16}},
    "train": {"steps": 8, "batch_size": 8, "warmup_steps": 2, "checkpoint_every": 8,
              "num_workers": 0, "log_every": 4},
}


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    """A pretraining output folder (``model/`` inside) of 8 steps on both samples."""
    out = tmp_path_factory.mktemp("pretrained")
    pretrain(TINY, [(str(s.store), str(s.table)) for s in cohort], out, progress=False)
    return out


@pytest.fixture(scope="module")
def embedded(trained, cohort, tmp_path_factory):
    """``{sample: embedding table path}`` of both samples, with their QC tables."""
    out = tmp_path_factory.mktemp("embedded")
    paths = {}
    for sample in cohort:
        paths[sample.name] = out / f"{sample.name}.h5ad"
        embed_sample(trained / "model", sample.store, paths[sample.name],
                     EmbedSettings(batch_size=7), table_path=sample.table, sample=sample.name,
                     progress=False)
    return paths


def store_at(sample, mpp: float, out: Path) -> Path:
    """The patch store of ``sample``'s slide built at ``mpp`` um/px (same cells, same patch
    side in pixels)."""
    from pastflow.patches.store import build_patch_store

    build_patch_store(sample.store.with_suffix(".tif"), sample.cell_ids, sample.xy, out,
                      target_mpp=mpp, patch_px=PATCH_PX, slide_mpp=MPP, progress=False,
                      workers=1)
    return out


def without_resolution(model_dir: Path, out: Path) -> Path:
    """A copy of checkpoint ``model_dir`` as written before the resolution contract (no
    ``model.mpp``, ``model.patch_um``)."""
    shutil.copytree(model_dir, out)
    document = json.loads((out / "config.json").read_text())
    del document["config"]["model"]["mpp"], document["config"]["model"]["patch_um"]
    (out / "config.json").write_text(json.dumps(document))
    return out


def training_items(model, samples, k: int = 0):
    """The training pipeline's tensors of every cell (no augmentation), by cell id."""
    config = model.config
    dataset = CellDataset([str(s.store) for s in samples], [str(s.table) for s in samples],
                          genes=config["genes"], pathways=[], augmentation=None, k_neighbors=k,
                          patch_px=config["image_px"])
    ids = [cid for s in samples for cid in s.cell_ids]
    batch = prepare_images(dataset.batch(range(len(ids))), None, dataset.mean, dataset.std)
    return {cid: {key: value[i] for key, value in batch.items()} for i, cid in enumerate(ids)}


def test_image_and_expression_embeddings_equal_the_models_on_training_tensors(
        embedded, trained, cohort):
    table = ad.read_h5ad(embedded["s1"])
    sample = cohort[0]
    model = load_checkpoint(trained / "model").model
    assert table.obs["cell_id"].tolist() == sample.cell_ids  # every cell, store order
    assert table.obsm["X_image"].shape == (36, 16) and table.obsm["X_expression"].shape == (36, 16)
    assert table.obs["expression_measured"].all()
    items = training_items(model, [sample])
    patches = torch.stack([items[c]["patch"] for c in sample.cell_ids])
    with torch.no_grad():
        image = model.encode_image(patches).numpy()
        expression = model.expression_projection(model.expression_encoder(
            torch.stack([items[c]["expression"] for c in sample.cell_ids]),
            torch.stack([items[c]["gene_mask"] for c in sample.cell_ids]))).numpy()
    assert table.obsm["X_image"] == pytest.approx(image, abs=1e-5)
    assert table.obsm["X_expression"] == pytest.approx(expression, abs=1e-5)
    assert table.obs[["x_px", "y_px"]].to_numpy() == pytest.approx(sample.xy)
    assert table.uns["pastflow_embed"]["image_cells_per_s"] > 0


def test_morphology_features_are_those_of_the_encoders_crop(embedded, trained, cohort):
    from pastflow.embed.morphology import MORPHOLOGY_FEATURES, morphology_features
    from pastflow.patches.reader import PatchStore
    from pastflow.resolution import crop_px

    table = ad.read_h5ad(embedded["s1"])
    meta = table.uns["pastflow_embed"]
    store = PatchStore(cohort[0].store)
    size = crop_px(store, load_checkpoint(trained / "model").config["model"]["image_px"])
    assert meta["crop_px"] == size
    expected = morphology_features(store.read(np.arange(len(store)), size=size), store.mpp)
    assert table.obsm["X_morphology"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert list(meta["morphology_features"]) == list(MORPHOLOGY_FEATURES)
    assert meta["morphology_cells_per_s"] > 0
    assert np.ptp(table.obsm["X_morphology"], axis=0).max() > 0  # cells differ


def test_missing_genes_are_masked_in_expression_embeddings(embedded, trained, cohort):
    """s2 lacks CD6 and BG07: the embedding must equal the model's with those genes masked."""
    table = ad.read_h5ad(embedded["s2"])
    model = load_checkpoint(trained / "model").model
    items = training_items(model, [cohort[1]])
    first = items[cohort[1].cell_ids[0]]
    assert not first["gene_mask"].all()
    with torch.no_grad():
        expected = model.expression_projection(model.expression_encoder(
            first["expression"][None], first["gene_mask"][None])).numpy()[0]
    assert table.obsm["X_expression"][0] == pytest.approx(expected, abs=1e-5)


def test_random_baseline_is_the_seeded_architecture_untrained(embedded, trained, cohort):
    table = ad.read_h5ad(embedded["s1"])
    config = load_checkpoint(trained / "model").config
    baseline = random_model(config, seed=0)
    items = training_items(baseline, [cohort[0]])
    with torch.no_grad():
        expected = baseline.encode_image(
            torch.stack([items[c]["patch"] for c in cohort[0].cell_ids])).numpy()
    assert table.obsm["X_image_random"] == pytest.approx(expected, abs=1e-5)
    assert not np.allclose(table.obsm["X_image_random"], table.obsm["X_image"], atol=1e-2)
    other = random_model(config, seed=1)
    assert not torch.equal(next(other.parameters()), next(baseline.parameters()))
    state = torch.random.get_rng_state()
    random_model(config, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's stream untouched


def test_he_only_sample_gets_image_embeddings_only(trained, cohort, tmp_path):
    out = tmp_path / "he.h5ad"
    table = embed_sample(trained / "model", cohort[0].store, out, EmbedSettings(),
                         progress=False)
    assert set(table.obsm) == {"X_image", "X_image_random", "X_morphology"}
    assert not table.obs["expression_measured"].any()
    assert ad.read_h5ad(out).obs["sample"].iloc[0] == "s1"  # named after the store


def spatial_model(trained):
    """A random-weight model with spatial context (k = 3) over the trained model's genes,
    pathways and patch size: ``(config, model)``."""
    config = load_checkpoint(trained / "model").config
    spatial = resolve_pretrain_config({**TINY, "model": {**TINY["model"],
                                                          "spatial": {"k": 3, "heads": 2}}})
    spatial["model"].update(genes=config["model"]["genes"], pathways=config["model"]["pathways"],
                            image_px=config["model"]["image_px"])
    return spatial, random_model(spatial, seed=4)


def test_spatial_model_embeds_with_the_training_neighbours(trained, cohort, tmp_path):
    spatial, model = spatial_model(trained)
    save_checkpoint(tmp_path / "spatial", model, spatial, step=0)
    table = embed_sample(tmp_path / "spatial", cohort[0].store, tmp_path / "s.h5ad",
                         EmbedSettings(), table_path=cohort[0].table, progress=False)
    items = training_items(model, [cohort[0]], k=3)
    cells = cohort[0].cell_ids
    with torch.no_grad():
        expected = model.encode_image(torch.stack([items[c]["patch"] for c in cells]),
                                      torch.stack([items[c]["neighbor_patches"] for c in cells]),
                                      torch.stack([items[c]["neighbor_mask"] for c in cells]))
    assert table.obsm["X_image"] == pytest.approx(expected.numpy(), abs=1e-5)


def test_shards_over_several_devices_and_loader_workers_change_nothing(trained, cohort):
    """The GPU path's plumbing, on CPU: the cells split into one shard per device (here two
    CPU "devices", each a thread with its own replica of the model), batches read ahead by
    worker processes, the shards joined in order. With spatial context a cell at a shard's
    edge keeps its neighbours from the other shard. Same embeddings as one device's."""
    from pastflow.embed.encode import embed_images
    from pastflow.patches.reader import PatchStore

    spatial, model = spatial_model(trained)
    store = PatchStore(cohort[0].store)
    rows = np.random.default_rng(0).permutation(len(store))[:30]  # any order is kept
    kwargs = dict(mean=spatial["data"]["mean"], std=spatial["data"]["std"], batch_size=4,
                  progress=False)
    one = embed_images(model, store, rows, device="cpu", **kwargs)
    two = embed_images(model, store, rows, device=["cpu", "cpu"], num_workers=1, **kwargs)
    assert one.shape == (30, 16) and np.isfinite(one).all()
    # Neighbours found within each shard instead would change the edge cells' embeddings.
    assert two == pytest.approx(one, abs=1e-5)


def test_embed_devices_are_every_visible_gpu_for_plain_cuda(monkeypatch):
    from pastflow.embed.encode import embed_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert embed_devices("cuda") == [torch.device("cuda", i) for i in range(3)]
    assert embed_devices("cuda:1") == [torch.device("cuda", 1)]
    assert embed_devices("cpu") == [torch.device("cpu")]


def test_a_table_of_another_sample_is_refused_and_nothing_is_written(trained, cohort, tmp_path,
                                                                      capsys):
    from pastflow.cli import main

    out = tmp_path / "wrong.h5ad"
    code = main(["embed", "--model", str(trained / "model"), "--store", str(cohort[0].store),
                 "--table", str(cohort[1].table), "--out", str(out), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(cohort[1].table) in err and "same sample" in err
    assert not out.exists() and not list(tmp_path.glob(".wrong*"))
    with pytest.raises(InputError, match="patch store not found"):
        embed_sample(trained / "model", tmp_path / "absent.h5", out, EmbedSettings(),
                     progress=False)


def test_embed_command_reads_its_settings_file(trained, cohort, tmp_path, embedded, capsys):
    from pastflow.cli import main

    out = tmp_path / "cli.h5ad"
    settings = tmp_path / "embed.json"  # as the workflow writes it
    settings.write_text(json.dumps({"embed": {"batch_size": 5, "random_seed": 2}}))
    assert main(["embed", "--model", str(trained / "model"), "--store", str(cohort[1].store),
                 "--table", str(cohort[1].table), "--sample", "s2", "--out", str(out),
                 "--settings", str(settings), "--no-progress"]) == 0
    table = ad.read_h5ad(out)
    meta = table.uns["pastflow_embed"]
    assert table.n_obs == 36 and meta["random_seed"] == 2 and meta["batch_size"] == 5
    assert np.isfinite(table.obsm["X_expression"]).all()
    # The batch size changes nothing; the seed changes only the random baseline.
    default = ad.read_h5ad(embedded["s2"])
    assert table.obsm["X_image"] == pytest.approx(default.obsm["X_image"], abs=1e-5)
    assert not np.allclose(table.obsm["X_image_random"], default.obsm["X_image_random"])
    # Settings are checked by their class, naming the key; the old flags are gone.
    settings.write_text("embed:\n  batch_size: 0\n")
    assert main(["embed", "--model", str(trained / "model"), "--store", str(cohort[1].store),
                 "--out", str(tmp_path / "bad.h5ad"), "--settings", str(settings)]) == 2
    assert "embed.batch_size" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5ad").exists()
    with pytest.raises(SystemExit):
        main(["embed", "--model", str(trained / "model"), "--store", str(cohort[1].store),
              "--out", str(out), "--batch-size", "5"])


# ----------------------------------------------------------------------------- resolution


def test_store_and_checkpoint_record_the_resolution(trained, cohort):
    assert read_store_resolution(cohort[0].store) == pytest.approx((MPP, PATCH_PX * MPP))
    model = json.loads((trained / "model" / "config.json").read_text())["config"]["model"]
    assert model["image_px"] == PATCH_PX
    assert model["mpp"] == pytest.approx(MPP) and model["patch_um"] == pytest.approx(PATCH_PX * MPP)
    # Stores built for one target resolution always agree: a level used as it is lies within
    # LEVEL_MPP_TOLERANCE of the target, a resampled one on it.
    assert 2 * LEVEL_MPP_TOLERANCE < MPP_TOLERANCE


def test_a_store_at_another_resolution_is_refused_by_embed(trained, cohort, tmp_path, capsys):
    from pastflow.cli import main

    coarse = store_at(cohort[0], 2 * MPP, tmp_path / "coarse.h5")
    assert read_store_resolution(coarse) == pytest.approx((1.0, PATCH_PX * 1.0))
    out = tmp_path / "coarse.h5ad"
    with pytest.raises(InputError) as err:
        embed_sample(trained / "model", coarse, out, EmbedSettings(), progress=False)
    message = str(err.value)
    assert err.value.path == str(coarse)  # the store is named, and the model, both resolutions
    assert str(trained / "model") in message
    assert "1.0000 um/px" in message and "0.5000 um/px" in message
    assert "16.0 um" in message and "8.0 um" in message  # the crops in microns
    assert "MPP_TOLERANCE" in message
    assert not out.exists()
    # Through the command: exit status 2 and the message, nothing written.
    assert main(["embed", "--model", str(trained / "model"), "--store", str(coarse),
                 "--out", str(out), "--no-progress"]) == 2
    assert "1.0000 um/px" in capsys.readouterr().err and not out.exists()


def test_a_store_within_the_tolerance_passes_and_an_old_checkpoint_warns(trained, cohort,
                                                                         tmp_path, caplog):
    # 4% coarser: resampled (beyond LEVEL_MPP_TOLERANCE), still within MPP_TOLERANCE.
    near = store_at(cohort[0], 1.04 * MPP, tmp_path / "near.h5")
    mpp = read_store_resolution(near)[0]
    assert mpp == pytest.approx(1.04 * MPP, rel=0.01) and abs(mpp / MPP - 1) > LEVEL_MPP_TOLERANCE
    table = embed_sample(trained / "model", near, tmp_path / "near.h5ad", EmbedSettings(),
                         progress=False)
    assert table.n_obs == 36
    assert table.uns["pastflow_embed"]["store_mpp"] == pytest.approx(mpp)
    assert table.uns["pastflow_embed"]["model_mpp"] == pytest.approx(MPP)
    # A checkpoint written before model.mpp: accepted, with a warning naming it.
    old = without_resolution(trained / "model", tmp_path / "old")
    coarse = store_at(cohort[0], 2 * MPP, tmp_path / "coarse.h5")
    with caplog.at_level(logging.WARNING):
        table = embed_sample(old, coarse, tmp_path / "old.h5ad", EmbedSettings(),
                             progress=False)
    assert table.n_obs == 36 and np.isnan(table.uns["pastflow_embed"]["model_mpp"])
    assert any("records no resolution" in r.getMessage() and str(old) in r.getMessage()
               for r in caplog.records)


def test_training_stores_must_agree_on_the_resolution(cohort, tmp_path):
    near = store_at(cohort[1], 1.04 * MPP, tmp_path / "near.h5")
    mpp, patch_um = training_resolution([cohort[0].store, near], PATCH_PX)
    assert mpp == pytest.approx(MPP * 1.02, rel=0.01) and patch_um == pytest.approx(PATCH_PX * mpp)
    coarse = store_at(cohort[1], 2 * MPP, tmp_path / "coarse.h5")
    with pytest.raises(InputError, match="must agree") as err:
        training_resolution([cohort[0].store, coarse], PATCH_PX)
    assert str(coarse) in str(err.value) and str(cohort[0].store) in str(err.value)
    assert "1.0000 um/px" in str(err.value) and "0.5000 um/px" in str(err.value)


def test_a_probe_encoder_embeds_every_cell_at_its_own_input_side(trained, cohort, tmp_path):
    """``embed.probe_encoders``: ResNet50-ImageNet (truncated after layer3, HEST's baseline)
    from a torchvision-layout file: every cell's crop, resized to 224 px and normalised with
    ImageNet's statistics, gives the encoder's own features in ``X_probe_resnet50_imagenet``."""
    import torch.nn.functional as F

    from pastflow.models.foundation import build_foundation_encoder
    from pastflow.patches.reader import PatchStore
    from pastflow.resolution import crop_px
    from test_foundation_models import torchvision_resnet50

    torch.manual_seed(0)
    weights = tmp_path / "resnet50-0676ba61.pth"
    torch.save(torchvision_resnet50().state_dict(), weights)
    sample = cohort[0]
    out = tmp_path / "probe.h5ad"
    embed_sample(trained / "model", sample.store, out,
                 EmbedSettings(batch_size=16, probe_encoders={"resnet50_imagenet": str(weights)}),
                 sample=sample.name, progress=False)
    table = ad.read_h5ad(out)
    features = table.obsm["X_probe_resnet50_imagenet"]
    assert features.shape == (36, 1024) and np.isfinite(features).all()
    meta = table.uns["pastflow_embed"]["probe_encoders"]["resnet50_imagenet"]
    assert meta["input_px"] == 224 and meta["cells_per_s"] > 0
    store = PatchStore(sample.store)
    size = crop_px(store, load_checkpoint(trained / "model").config["model"]["image_px"])
    assert meta["field_um"] == pytest.approx(size * store.mpp)
    encoder = build_foundation_encoder("resnet50_imagenet", image_px=224, weights=weights).eval()
    crops = torch.from_numpy(store.read(np.arange(len(store)), size=size)).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    resized = F.interpolate((crops - mean) / std, size=(224, 224), mode="bilinear",
                            align_corners=False, antialias=True)
    with torch.no_grad():
        expected = encoder(resized).numpy()
    assert features == pytest.approx(expected, abs=1e-4)
