"""The PAST and STAMP recipes: what each switches on, that the config's own keys win, and
each run end to end (pretrain -> embed -> predict) on the demo fixtures."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from pastflow.errors import InputError
from pastflow.pretrain.settings import resolve_pretrain_config
from test_embed import TINY
from test_models_fixtures import cohort  # noqa: F401 (fixture)


def test_past_switches_on_rank_tokens_soft_targets_and_neighbours_under_own_keys():
    past = resolve_pretrain_config({"recipe": "past"})
    model = past["model"]
    assert model["expression"]["name"] == "rank_transformer" and model["spatial"]["k"] == 6
    assert model["losses"]["soft_clip"] == 1.0 and model["losses"]["clip"] == 0.0
    assert model["losses"]["pathway_clip"] == model["losses"]["pathway_regression"] == 0.0
    assert model["losses"]["reconstruction"] == 1.0  # predict needs the head
    own = resolve_pretrain_config({"recipe": "past", "model": {"spatial": {"k": 2}}})
    assert own["model"]["spatial"]["k"] == 2 and own["model"]["losses"]["soft_clip"] == 1.0
    assert resolve_pretrain_config({})["model"]["expression"]["name"] == "mlp"  # no recipe


def test_stamp_needs_a_named_foundation_model_and_puts_lora_on_it():
    with pytest.raises(InputError, match="stamp fine-tunes a pathology foundation model"):
        resolve_pretrain_config({"recipe": "stamp"})
    stamp = resolve_pretrain_config({"recipe": "stamp", "model": {"image": {
        "name": "virchow2", "kwargs": {"weights": "/models/virchow2/pytorch_model.bin"}}}})
    image = stamp["model"]["image"]
    assert image["kwargs"] == {"mode": "lora", "weights": "/models/virchow2/pytorch_model.bin"}
    assert stamp["model"]["losses"]["pathway_clip"] == stamp["model"]["losses"]["pathway_regression"] == 1.0
    with pytest.raises(InputError, match="'pretrain.recipe': must be one of past, stamp"):
        resolve_pretrain_config({"recipe": "bleep"})


def run_end_to_end(config, cohort, tmp_path):
    from pastflow.cli import main as cli
    from pastflow.embed.sample import embed_sample
    from pastflow.embed.settings import EmbedSettings
    from pastflow.models.checkpoint import load_checkpoint
    from pastflow.models.train import pretrain

    out = tmp_path / "pretrained"
    pretrain(config, [(str(s.store), str(s.table)) for s in cohort], out, progress=False)
    checkpoint = load_checkpoint(out / "model")
    table = tmp_path / "s1.h5ad"
    embed_sample(out / "model", cohort[0].store, table, EmbedSettings(batch_size=8),
                 table_path=cohort[0].table, sample="s1", progress=False)
    predictions = tmp_path / "p.h5ad"
    assert cli(["predict", "--model", str(out / "model"), "--embedding", str(table),
                "--table", str(cohort[0].table), "--out", str(predictions)]) == 0
    predicted = ad.read_h5ad(predictions)
    assert predicted.n_obs == 36 and np.isfinite(predicted.X).all() and predicted.X.std() > 0
    return checkpoint, ad.read_h5ad(table)


def test_past_recipe_runs_end_to_end(cohort, tmp_path):
    model = {k: v for k, v in TINY["model"].items() if k != "expression"}
    model["expression"] = {"kwargs": {"context": 16, "dim": 16, "depth": 1, "heads": 2}}
    model["spatial"] = {"k": 2, "heads": 2}
    checkpoint, embedded = run_end_to_end({**TINY, "recipe": "past", "model": model}, cohort,
                                          tmp_path)
    config = checkpoint.config["model"]
    assert config["expression"]["name"] == "rank_transformer" and config["spatial"]["k"] == 2
    assert config["losses"]["soft_clip"] == 1.0 and checkpoint.config["recipe"] == "past"
    assert type(checkpoint.model.expression_encoder).__name__ == "RankTransformer"
    assert embedded.obsm["X_expression"].std() > 0


def test_stamp_recipe_runs_end_to_end_on_a_foundation_twin(cohort, tmp_path):
    from pastflow.models.foundation import create_backbone, foundation_model

    twin = dict(img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    torch.manual_seed(0)
    weights = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    backbone = create_backbone(foundation_model("uni"), **twin)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, weights)
    model = {**TINY["model"], "image": {"name": "uni", "kwargs": {"weights": str(weights),
                                                                   **twin}}}
    checkpoint, _ = run_end_to_end({**TINY, "recipe": "stamp", "model": model}, cohort,
                                   tmp_path)
    encoder = checkpoint.model.image_encoder
    assert encoder.mode == "lora" and checkpoint.config["model"]["losses"]["pathway_clip"] == 1.0
    assert checkpoint.model.pathway_encoder is not None and checkpoint.config["model"]["pathways"]
