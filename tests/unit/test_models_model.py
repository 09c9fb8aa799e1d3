"""pastflow.models.model.PastModel and pastflow.pretrain.settings on random tensors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pastflow.errors import InputError
from pastflow.models.compat import import_timm
from pastflow.pretrain.settings import resolve_pretrain_config
from pastflow.models.model import PastModel

N, GENES, PATHWAYS, PX = 6, 12, 3, 16


def tiny_config(**model) -> dict:
    """The ``model`` section of a tiny resolved config, genes and pathways filled in."""
    base = {"embed_dim": 16,
            "image": {"name": "timm", "kwargs": {"arch": "vit_tiny_patch16_224", "patch_size": 8,
                                                  "depth": 1, "embed_dim": 32, "num_heads": 2}},
            "expression": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "pathway": {"kwargs": {"hidden": [8]}},
            "reconstruction": {"hidden": 16}, "pathway_head": {"hidden": 8},
            "spatial": {"heads": 2}}
    base.update(model)  # whole sections replaced; resolve_pretrain_config fills in the defaults
    config = resolve_pretrain_config({"model": base})["model"]
    config.update(genes=[f"G{i}" for i in range(GENES)], pathways=["P0", "P1", "P2"], image_px=PX)
    return config


def random_batch(k: int = 0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    # Genes differ in abundance (rates 0.5 ... 6): the heads have gene proportions to learn.
    counts = torch.poisson(torch.linspace(0.5, 6.0, GENES).expand(N, GENES), generator=g)
    mask = torch.ones(N, GENES, dtype=torch.bool)
    mask[3:, -2:] = False  # the second half of the batch is from a sample lacking 2 genes
    counts[~mask] = 0
    batch = {"patch": torch.randn(N, 3, PX, PX, generator=g),
             "expression": torch.log1p(counts), "gene_mask": mask, "counts": counts,
             "library_size": counts.sum(1), "pathways": torch.randn(N, PATHWAYS, generator=g),
             "pathway_mask": torch.ones(N, PATHWAYS, dtype=torch.bool)}
    if k:
        batch["neighbor_patches"] = torch.randn(N, k, 3, PX, PX, generator=g)
        batch["neighbor_mask"] = torch.rand(N, k, generator=g) > 0.3
    return batch


def test_forward_returns_normalised_embeddings_and_predictions():
    torch.manual_seed(0)
    model = PastModel(tiny_config())
    out = model(random_batch())
    for key in ("image", "expression", "pathway"):
        assert out[key].shape == (N, 16)
        assert torch.allclose(out[key].norm(dim=1), torch.ones(N), atol=1e-5)
    assert out["expression_out"].shape == (N, GENES) and out["theta"].shape == (GENES,)
    assert out["pathway_pred"].shape == (N, PATHWAYS)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    image_only = model({"patch": random_batch()["patch"]})  # the embed stage's use
    assert set(image_only) == {"image_h", "image", "expression_out", "theta", "pathway_pred"}


def test_loss_parts_follow_the_weights_and_only_needed_branches_exist():
    torch.manual_seed(0)
    model = PastModel(tiny_config(losses={"clip": 0.0, "soft_clip": 2.0, "reconstruction": 0.0,
                                          "pathway_regression": 1.0, "pathway_clip": 0.0}))
    assert model.reconstruction_head is None and model.pathway_encoder is None
    assert model.expression_encoder is not None and model.pathway_head is not None
    total, parts = model.loss(random_batch())
    assert set(parts) == {"soft_clip", "pathway_regression"}
    assert total.item() == pytest.approx(2 * parts["soft_clip"].item() + parts["pathway_regression"].item(), rel=1e-6)
    total.backward()
    assert model.expression_encoder.net[0].weight.grad is not None


@pytest.mark.parametrize("likelihood", ["nb", "poisson", "mse"])
def test_reconstruction_heads_learn_the_gene_abundances(likelihood):
    torch.manual_seed(0)
    model = PastModel(tiny_config(reconstruction={"likelihood": likelihood, "hidden": 16},
                                  losses={"clip": 0.0, "pathway_clip": 0.0,
                                          "pathway_regression": 0.0, "reconstruction": 1.0}))
    batch = random_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        total, parts = model.loss(batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(parts["reconstruction"].item())
    assert losses[-1] < 0.9 * losses[0]
    assert (model.log_theta is not None) == (likelihood == "nb")
    model.eval()
    with torch.no_grad():
        predicted = model.predicted_expression(model(batch), batch["gene_mask"],
                                               batch["library_size"])
    mask = batch["gene_mask"].float()
    target = batch["expression"] if likelihood == "mse" else batch["counts"]
    # Per-gene means over the cells that measured the gene: the abundance profile.
    predicted, observed = ((x * mask).sum(0) / mask.sum(0) for x in (predicted, target))
    assert torch.corrcoef(torch.stack([predicted, observed]))[0, 1] > 0.9


def test_predicted_counts_share_the_library_over_measured_genes():
    torch.manual_seed(0)
    model = PastModel(tiny_config())
    batch = random_batch()
    mu = model.predicted_expression(model(batch), batch["gene_mask"], batch["library_size"])
    assert torch.allclose(mu.sum(1), batch["library_size"], rtol=1e-5)
    assert torch.all(mu[~batch["gene_mask"]] == 0)


def test_spatial_fusion_uses_the_neighbours():
    torch.manual_seed(0)
    model = PastModel(tiny_config(spatial={"k": 3})).eval()
    batch = random_batch(k=3)
    out = model(batch)
    moved = dict(batch, neighbor_patches=batch["neighbor_patches"] + 1.0)
    has_neighbour = batch["neighbor_mask"].any(1)
    changed = ~torch.isclose(model(moved)["image"], out["image"], atol=1e-5).all(1)
    assert torch.equal(changed, has_neighbour)
    assert torch.isfinite(model.loss(batch)[0])


def test_lora_model_trains_adapters_projections_and_heads_only(tmp_path):
    torch.manual_seed(0)
    backbone = import_timm().create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                          img_size=PX, patch_size=8, depth=1, embed_dim=32,
                                          num_heads=2)
    weights = tmp_path / "fm.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    model = PastModel(tiny_config(image={"name": "timm_lora", "kwargs": {
        "arch": "vit_tiny_patch16_224", "weights": str(weights), "patch_size": 8, "depth": 1,
        "embed_dim": 32, "num_heads": 2}}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    image_trainable = {n for n in trainable if n.startswith("image_encoder.")}
    assert image_trainable and all(".lora_" in n for n in image_trainable)
    assert any(n.startswith("image_projection.") for n in trainable)
    assert any(n.startswith("expression_encoder.") for n in trainable)


def test_model_config_errors_name_the_problem():
    with pytest.raises(InputError, match="no genes"):
        PastModel(tiny_config() | {"genes": []})
    with pytest.raises(InputError, match="no pathways"):
        PastModel(tiny_config() | {"pathways": []})
    with pytest.raises(InputError, match=r"unknown config key 'pretrain.model.embed_dimm'"):
        resolve_pretrain_config({"model": {"embed_dimm": 8}}, source="cfg.yaml")
    with pytest.raises(InputError, match=r"cfg.yaml: config key 'pretrain.model.reconstruction.likelihood': must be one of"):
        resolve_pretrain_config({"model": {"reconstruction": {"likelihood": "zinb"}}}, source="cfg.yaml")
    with pytest.raises(InputError, match="every loss weight is 0"):
        resolve_pretrain_config({"model": {"losses": {k: 0 for k in ("clip", "reconstruction",
                                                             "pathway_regression", "pathway_clip")}}})
