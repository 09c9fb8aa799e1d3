"""pastflow.embed: every cell's image (and expression) embedding from a pretrained model, equal
to what the model computes on the training pipeline's own tensors; the random-weight baseline;
H&E-only samples; spatial context; bad input; the ``pastflow embed`` command.

Also the fixtures ``trained`` (a tiny model pretrained on the two-sample cohort of
``test_models_fixtures``) and ``embedded`` (both samples embedded), used by test_predict.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from pastflow.embed.encode import random_model
from pastflow.embed.sample import embed_sample
from pastflow.errors import InputError
from pastflow.models.checkpoint import load_checkpoint, save_checkpoint
from pastflow.models.config import resolve_config
from pastflow.models.data import CellDataset
from pastflow.models.train import pretrain
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
        embed_sample(trained / "model", sample.store, paths[sample.name], table_path=sample.table,
                     sample=sample.name, batch_size=7, progress=False)
    return paths


def training_items(model, samples, k: int = 0):
    """The training pipeline's tensors of every cell (no augmentation), by cell id."""
    config = model.config
    dataset = CellDataset([str(s.store) for s in samples], [str(s.table) for s in samples],
                          genes=config["genes"], pathways=[], augmentation=None, k_neighbors=k,
                          patch_px=config["image_px"])
    ids = [cid for s in samples for cid in s.cell_ids]
    return {cid: dataset[i] for i, cid in enumerate(ids)}


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
    table = embed_sample(trained / "model", cohort[0].store, out, progress=False)
    assert set(table.obsm) == {"X_image", "X_image_random"}
    assert not table.obs["expression_measured"].any()
    assert ad.read_h5ad(out).obs["sample"].iloc[0] == "s1"  # named after the store


def test_spatial_model_embeds_with_the_training_neighbours(trained, cohort, tmp_path):
    config = load_checkpoint(trained / "model").config
    spatial = resolve_config({**TINY, "model": {**TINY["model"], "spatial": {"k": 3, "heads": 2}}})
    spatial["model"].update(genes=config["model"]["genes"], pathways=config["model"]["pathways"],
                            image_px=config["model"]["image_px"])
    model = random_model(spatial, seed=4)
    save_checkpoint(tmp_path / "spatial", model, spatial, step=0)
    table = embed_sample(tmp_path / "spatial", cohort[0].store, tmp_path / "s.h5ad",
                         table_path=cohort[0].table, progress=False)
    items = training_items(model, [cohort[0]], k=3)
    cells = cohort[0].cell_ids
    with torch.no_grad():
        expected = model.encode_image(torch.stack([items[c]["patch"] for c in cells]),
                                      torch.stack([items[c]["neighbor_patches"] for c in cells]),
                                      torch.stack([items[c]["neighbor_mask"] for c in cells]))
    assert table.obsm["X_image"] == pytest.approx(expected.numpy(), abs=1e-5)


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
        embed_sample(trained / "model", tmp_path / "absent.h5", out, progress=False)


def test_embed_command_writes_the_table(trained, cohort, tmp_path):
    from pastflow.cli import main

    out = tmp_path / "cli.h5ad"
    assert main(["embed", "--model", str(trained / "model"), "--store", str(cohort[1].store),
                 "--table", str(cohort[1].table), "--sample", "s2", "--out", str(out),
                 "--batch-size", "5", "--random-seed", "2", "--no-progress"]) == 0
    table = ad.read_h5ad(out)
    assert table.n_obs == 36 and table.uns["pastflow_embed"]["random_seed"] == 2
    assert np.isfinite(table.obsm["X_expression"]).all()
