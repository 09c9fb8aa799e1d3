"""pastflow.models encoders: the registry, timm image encoders, LoRA from local weights,
expression / pathway encoders, spatial fusion, and the torchvision import fix."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pastflow.errors import InputError
from pastflow.models import registry
from pastflow.models.compat import import_timm
from pastflow.models.expression import RankTransformer, VectorMLP
from pastflow.models.registry import (build_expression_encoder, build_image_encoder,
                                      build_pathway_encoder, list_encoders, register_image_encoder)
from pastflow.models.spatial import SpatialFusion

TINY_VIT = dict(arch="vit_tiny_patch16_224", image_px=16, patch_size=8, depth=2, embed_dim=32,
                num_heads=2)


def test_timm_and_torchvision_import_beside_cpu_torch():
    timm = import_timm()
    import torchvision  # noqa: F401  (fails without the fix on this CPU-torch machine)

    assert hasattr(torch.ops.torchvision, "nms")  # real or declared, the schema exists
    assert timm.is_model("resnet18")


def test_registry_lists_builds_and_rejects_unknown_names_and_options():
    assert {"timm", "vit_cell", "resnet18_cell", "timm_lora"} <= set(list_encoders("image"))
    assert {"mlp", "rank_transformer"} <= set(list_encoders("expression"))
    assert list_encoders("pathway") == ["pathway_mlp"]
    with pytest.raises(InputError, match=r"unknown image encoder 'vit_huge_cell'.*resnet18_cell"):
        build_image_encoder("vit_huge_cell", image_px=16)
    with pytest.raises(InputError, match="mlp.*hiden"):
        build_expression_encoder("mlp", n_genes=10, hiden=[8])
    with pytest.raises(ValueError, match="twice"):
        register_image_encoder("vit_cell")(lambda image_px: None)


def test_a_registered_encoder_is_built_by_name():
    @register_image_encoder("test_mean_colour")
    def mean_colour(image_px: int) -> torch.nn.Module:
        class MeanColour(torch.nn.Module):
            out_dim = 3

            def forward(self, x):
                return x.mean(dim=(2, 3))
        return MeanColour()

    try:
        encoder = build_image_encoder("test_mean_colour", image_px=8)
        x = torch.rand(2, 3, 8, 8)
        assert torch.allclose(encoder(x), x.mean(dim=(2, 3)))
    finally:
        del registry._BUILDERS["image"]["test_mean_colour"]


@pytest.mark.parametrize("name, kwargs, out_dim", [
    ("vit_cell", dict(image_px=16, depth=1), 192),
    ("resnet18_cell", dict(image_px=16), 512),
    ("timm", dict(TINY_VIT), 32),
    ("timm", dict(arch="resnet10t", image_px=24), 512),   # no img_size argument: still builds
    ("timm", dict(arch="mobilenetv3_small_050", image_px=32), 1024),  # pre-logits head width
])
def test_image_encoders_map_patches_to_out_dim_features(name, kwargs, out_dim):
    encoder = build_image_encoder(name, **kwargs)
    side = kwargs["image_px"]
    assert encoder.out_dim == out_dim
    features = encoder(torch.rand(3, 3, side, side))
    assert features.shape == (3, out_dim) and torch.isfinite(features).all()


def test_image_encoders_never_download():
    with pytest.raises(InputError, match="download"):
        build_image_encoder("timm", arch="resnet18", image_px=16, pretrained=True)
    with pytest.raises(InputError, match="unknown timm architecture"):
        build_image_encoder("timm", arch="not_a_net", image_px=16)
    with pytest.raises(InputError, match="multiple"):
        build_image_encoder("vit_cell", image_px=20)


@pytest.fixture()
def foundation_weights(tmp_path):
    """A 'foundation model': a tiny timm ViT with random weights, saved as safetensors."""
    torch.manual_seed(3)
    model = import_timm().create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                       img_size=16, patch_size=8, depth=2, embed_dim=32,
                                       num_heads=2).eval()
    path = tmp_path / "foundation.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_lora_loads_local_weights_freezes_them_and_trains_only_adapters(foundation_weights):
    reference, path = foundation_weights
    lora = TINY_VIT | {"weights": path, "r": 4, "alpha": 8}
    encoder = build_image_encoder("timm_lora", **lora).eval()
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # Adapters sit on the attention projections of both blocks, not on the patch embedding.
    assert {n.split(".lora_")[0] for n in trainable} == {
        f"backbone.blocks.{b}.attn.{m}" for b in (0, 1) for m in ("qkv", "proj")}
    x = torch.rand(4, 3, 16, 16)
    # B starts at zero: the adapted model computes what the foundation model does.
    assert torch.allclose(encoder(x), reference(x), atol=1e-6)

    frozen = {n: p.detach().clone() for n, p in encoder.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.5)
    encoder.train()
    for _ in range(2):
        optimizer.zero_grad()
        encoder(x).pow(2).mean().backward()
        optimizer.step()
    encoder.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in encoder.named_parameters() if n in frozen)
    assert not torch.allclose(encoder(x), reference(x), atol=1e-4)  # the adapters learned


def test_lora_weights_from_plain_torch_state_dict_and_refusals(foundation_weights, tmp_path):
    reference, _ = foundation_weights
    plain = tmp_path / "plain.pth"
    torch.save({"model": reference.state_dict()}, plain)  # nested, as training scripts save
    encoder = build_image_encoder("timm_lora", **TINY_VIT, weights=plain).eval()
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(encoder(x), reference(x), atol=1e-6)

    pickled = tmp_path / "pickled.pt"
    torch.save(reference, pickled)  # the whole module: unpickling it would run code
    with pytest.raises(InputError, match=r"pickled\.pt: holds pickled code"):
        build_image_encoder("timm_lora", **TINY_VIT, weights=pickled)
    wider = TINY_VIT | {"embed_dim": 64}
    with pytest.raises(InputError, match=r"plain\.pth: 30 tensors do not fit the architecture, "
                                         r"first 'cls_token': \(1, 1, 32\) in the file"):
        build_image_encoder("timm_lora", **wider, weights=plain)
    with pytest.raises(InputError, match="weights file not found"):
        build_image_encoder("timm_lora", **TINY_VIT, weights=tmp_path / "absent.safetensors")


def test_vector_mlp_ignores_masked_inputs():
    torch.manual_seed(0)
    encoder = build_pathway_encoder("pathway_mlp", n_pathways=5, hidden=[8]).eval()
    assert isinstance(encoder, VectorMLP) and encoder.out_dim == 8
    x = torch.randn(3, 5)
    mask = torch.tensor([True, True, False, True, False]).expand(3, 5)
    changed = x.clone()
    changed[:, [2, 4]] = 100.0
    assert torch.equal(encoder(x, mask), encoder(changed, mask))
    assert not torch.allclose(encoder(x), encoder(changed))


def test_rank_transformer_tokens_are_the_top_genes_in_order():
    encoder = RankTransformer(n_genes=6, context=3, dim=8, depth=1, heads=2)
    values = torch.tensor([[0.0, 2.0, 0.5, 3.0, 0.0, 1.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 4.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.ones_like(values, dtype=torch.bool)
    mask[0, 3] = False  # gene 3 is not measured in this cell's sample
    genes, top, padding = encoder.tokens(values, mask)
    assert genes[0].tolist() == [1, 5, 2] and top[0].tolist() == [2.0, 1.0, 0.5]
    assert padding[0].tolist() == [False, False, False]
    assert padding[1].tolist() == [False, True, True]  # nothing expressed: one token kept
    assert genes[2, 0].item() == 1 and padding[2].tolist() == [False, True, True]


def test_rank_transformer_sees_only_its_context():
    torch.manual_seed(0)
    encoder = build_expression_encoder("rank_transformer", n_genes=8, context=3, dim=16, depth=1,
                                       heads=2, dropout=0.0).eval()
    values = torch.tensor([[5.0, 0.0, 4.0, 0.2, 3.0, 0.1, 0.0, 0.3]])
    outside = values.clone()
    outside[0, 3] = 0.25  # still below the top 3
    inside = values.clone()
    inside[0, 4] = 3.5    # a top-3 gene's value
    out = encoder(values)
    assert out.shape == (1, 16) and torch.isfinite(encoder(torch.zeros(2, 8))).all()
    assert torch.equal(out, encoder(outside))
    assert not torch.allclose(out, encoder(inside))
    # Padding is masked out: the embedding of a gene that is only padding changes nothing.
    few = torch.tensor([[0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    before = encoder(few)
    with torch.no_grad():
        encoder.gene_embedding.weight[0] += torch.randn(16)  # gene 0: a padding token here
    assert torch.allclose(encoder(few), before, atol=1e-6)
    with torch.no_grad():
        encoder.gene_embedding.weight[2] += torch.randn(16)  # gene 2: its one real token
    assert not torch.allclose(encoder(few), before, atol=1e-4)


def test_spatial_fusion_attends_only_to_real_neighbours():
    torch.manual_seed(0)
    fusion = SpatialFusion(dim=8, heads=2).eval()
    cell = torch.randn(3, 8)
    neighbours = torch.randn(3, 4, 8)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True],
                         [False, False, False, False]])
    out = fusion(cell, neighbours, mask)
    # An isolated cell: the residual alone.
    assert torch.allclose(out[2], fusion.norm(cell[2:3])[0], atol=1e-6)
    # Absent neighbours do not matter; the order of neighbours does not either.
    changed = neighbours.clone()
    changed[0, 2:] = 50.0
    assert torch.allclose(fusion(cell, changed, mask)[0], out[0], atol=1e-6)
    order = torch.tensor([3, 1, 0, 2])
    assert torch.allclose(fusion(cell, neighbours[:, order], mask[:, order])[1], out[1], atol=1e-6)
    # Real neighbours do.
    moved = neighbours.clone()
    moved[1, 0] += 1.0
    assert not torch.allclose(fusion(cell, moved, mask)[1], out[1], atol=1e-4)
