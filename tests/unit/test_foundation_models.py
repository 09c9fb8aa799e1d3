"""pastflow.models.foundation: every named pathology foundation model, at full size on the meta
device, takes a state dict in its vendor's layout strictly; the wrong model's weights, a pickle
with code and a missing file are refused by name; reduced-size twins saved as
model.safetensors, pytorch_model.bin and .pth give the vendor's own features (HuggingFace's
Dinov2Model for Phikon-v2, CONCH's own tower and forward, torchvision's ResNet for the
ImageNet baseline); the modes; the normalisation a config gets; and a twin through
pretrain -> embed -> predict on the demo cohort."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pastflow.errors import InputError
from pastflow.models.compat import import_timm
from pastflow.models.foundation import (FOUNDATION_MODELS, create_backbone, foundation_model,
                                        load_vendor_state, main)
from pastflow.models.registry import build_image_encoder, list_encoders
from test_models_fixtures import PATCH_PX, cohort  # noqa: F401 (fixture)

NAMES = list(FOUNDATION_MODELS)

# Parameter counts of the full-size backbones (classifier heads excluded), exact as built
# here; the cards state them rounded (UNI 303 M, UNI2-h 681 M, H-optimus-0 1.1 B, Virchow2
# 632 M, Phikon-v2 303 M, CONCH's ViT-B/16 86 M before its pooler; `card_params_m`); Prov-GigaPath's demo prints
# 1,134,953,984; ResNet-50 up to layer3 is 8.5 M.
PARAMETERS = {"uni": 303_350_784, "uni2_h": 681_394_176, "conch": 87_567_104, "h_optimus_0": 1_134_774_272,
              "virchow2": 631_239_424, "prov_gigapath": 1_134_953_984,
              "phikon_v2": 303_350_784, "resnet50_imagenet": 8_543_296}
# Position embeddings fix the input grid: 224 px / 16 px tokens = 196 (+ class token unless
# the card sets no_embed_class), 224 / 14 = 256, Virchow2 keeps class + 4 registers.
POS_EMBED = {"uni": (1, 197, 1024), "uni2_h": (1, 256, 1536), "conch": (1, 785, 768),
             "h_optimus_0": (1, 256, 1536),
             "virchow2": (1, 261, 1280), "prov_gigapath": (1, 197, 1536),
             "phikon_v2": (1, 197, 1024)}
TWINS = {  # reduced-size twins: same builder, small width and depth
    "uni": dict(img_size=32, depth=2, embed_dim=32, num_heads=2),
    "uni2_h": dict(img_size=28, depth=2, embed_dim=32, num_heads=2),
    "conch": dict(img_size=32, depth=2, embed_dim=32, num_heads=2),
    "h_optimus_0": dict(img_size=28, depth=2, embed_dim=32, num_heads=2),
    "virchow2": dict(img_size=28, depth=2, embed_dim=32, num_heads=2),
    "prov_gigapath": dict(img_size=32, depth=2, embed_dim=32, num_heads=2),
    "phikon_v2": dict(img_size=32, depth=2, embed_dim=32, num_heads=2),
    "resnet50_imagenet": dict(layers=(1, 1, 1, 1)),
}
# transformers < 5 wrote the Phikon-v2 file with these names; transformers 5 renames them.
HF4_NAMES = {"attention.q_proj": "attention.attention.query",
             "attention.k_proj": "attention.attention.key",
             "attention.v_proj": "attention.attention.value",
             "attention.o_proj": "attention.output.dense"}


def hf_dinov2(hidden, layers, heads, image, patch=16, transformers4=True):
    """HuggingFace's own Dinov2Model (the Phikon-v2 architecture) and its state dict."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          image_size=image, patch_size=patch, layerscale_value=1e-5, mlp_ratio=4)
    model = Dinov2Model(config)
    state = model.state_dict()
    if transformers4:
        state = {_hf4(k): v for k, v in state.items()}
    return model, state


def _hf4(key):
    for new, old in HF4_NAMES.items():
        key = key.replace(new, old)
    return key


def torchvision_resnet50(layers=(3, 4, 6, 3)):
    import_timm()  # torchvision imports beside CPU torch only after this fix
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, list(layers))


def conch_tower(depth=12, width=768, heads=12, image=448):
    """CONCH's vision tower as its own code builds it (mahmoodlab/CONCH coca_model.py,
    vision_tower.py, transformer.py): timm's VisionTransformer class called directly, CoCa's
    poolers as query + torch MultiheadAttention + LayerNorms, 512-wide contrastive output."""
    import_timm()
    from timm.models.vision_transformer import VisionTransformer

    def pooler(d_model, n_queries):
        module = torch.nn.Module()
        module.query = torch.nn.Parameter(torch.randn(n_queries, d_model))
        module.attn = torch.nn.MultiheadAttention(d_model, 8, kdim=width, vdim=width)
        module.ln_q, module.ln_k = torch.nn.LayerNorm(d_model), torch.nn.LayerNorm(width)
        return module

    visual = torch.nn.Module()
    visual.trunk = VisionTransformer(embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4,
                                     img_size=image, patch_size=16, num_classes=0,
                                     dynamic_img_size=True)
    visual.attn_pool_contrast, visual.ln_contrast = pooler(512, 1), torch.nn.LayerNorm(512)
    visual.proj_contrast = torch.nn.Parameter(torch.randn(512, 512))
    visual.attn_pool_caption, visual.ln_caption = pooler(768, 256), torch.nn.LayerNorm(768)
    return visual


def conch_features(visual, x):
    """``encode_image(x, proj_contrast=False, normalize=False)`` as CONCH computes it."""
    pool = visual.attn_pool_contrast
    tokens = pool.ln_k(visual.trunk.forward_features(x)).permute(1, 0, 2)  # NLD -> LND
    query = pool.ln_q(pool.query).unsqueeze(1).repeat(1, x.shape[0], 1)
    pooled = pool.attn(query, tokens, tokens, need_weights=False)[0].permute(1, 0, 2)
    return visual.ln_contrast(pooled[:, 0])


def conch_file(visual) -> dict:
    """The whole CoCa state dict: the tower under ``visual.``, a text tower beside it."""
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    text = {"text.token_embedding.weight": (32007, 768), "text.positional_embedding": (128, 768),
            "text_decoder.ln_final.weight": (768,), "logit_scale": ()}
    return state | {k: torch.zeros(shape, device=visual.trunk.cls_token.device)
                    for k, shape in text.items()}


def vendor_state(name: str) -> dict:
    """A full-size state dict with the vendor's key names and shapes (meta tensors)."""
    spec = foundation_model(name)
    with torch.device("meta"):
        if name == "phikon_v2":
            return hf_dinov2(1024, 24, 16, 224)[1]
        if name == "conch":
            return conch_file(conch_tower())
        if name == "resnet50_imagenet":
            return torchvision_resnet50().state_dict()  # layer4 and fc included, as published
        return create_backbone(spec).state_dict()       # the vendors saved timm's own model


@pytest.mark.parametrize("name", NAMES)
def test_full_size_architecture_takes_the_vendors_keys_strictly(name):
    spec = foundation_model(name)
    assert name in list_encoders("image")
    with torch.device("meta"):
        backbone = create_backbone(spec)
    assert sum(p.numel() for p in backbone.parameters()) == PARAMETERS[name]
    assert PARAMETERS[name] == pytest.approx(spec.card_params_m * 1e6, rel=0.04)
    if name in POS_EMBED:
        vit = backbone.trunk if name == "conch" else backbone
        assert tuple(vit.pos_embed.shape) == POS_EMBED[name]
    load_vendor_state(backbone, spec, vendor_state(name), assign=True)
    assert all(p.is_meta for p in backbone.parameters())  # assigned, nothing allocated
    with torch.device("meta"):
        encoder = build_image_encoder(name, image_px=spec.image_px, load_weights=False,
                                      mode="full")
        features = encoder(torch.zeros(2, 3, spec.image_px, spec.image_px))
    assert tuple(features.shape) == (2, spec.out_dim) and encoder.out_dim == spec.out_dim


def test_phikon_v2_takes_transformers_5_names_too():
    spec = foundation_model("phikon_v2")
    with torch.device("meta"):
        backbone = create_backbone(spec)
        state = hf_dinov2(1024, 24, 16, 224, transformers4=False)[1]
    assert any(".q_proj." in k for k in state)
    load_vendor_state(backbone, spec, state, assign=True)


def test_another_models_weights_are_named_with_missing_and_unexpected_keys():
    with torch.device("meta"):
        uni2 = create_backbone(foundation_model("uni2_h"))
        phikon = create_backbone(foundation_model("phikon_v2"))
    with pytest.raises(InputError) as error:
        load_vendor_state(uni2, foundation_model("uni2_h"), vendor_state("uni"), source="x.bin")
    message = str(error.value)
    assert message.startswith("x.bin: not the weights of foundation model 'uni2_h'")
    assert "1 missing ('reg_token')" in message
    assert "unexpected" not in message  # both have 24 blocks
    assert "342 of another shape (first 'blocks.0.attn.proj.bias': (1024,) in the file" in message
    assert message.endswith("these look like the weights of 'uni'")
    with torch.device("meta"):
        uni = create_backbone(foundation_model("uni"))
    with pytest.raises(InputError, match=r"'uni': 224 unexpected \('blocks\.24\.attn\.proj\.bias', "
                                         r".*\(\+221 more\)\); 342 of another shape .*"
                                         r"look like the weights of 'prov_gigapath'"):
        load_vendor_state(uni, foundation_model("uni"), vendor_state("prov_gigapath"))
    # Same architecture, other layout: UNI's timm names are not Phikon-v2's HuggingFace names.
    with pytest.raises(InputError, match=r"342 missing .*342 unexpected \('blocks\.0\.attn"
                                         r".*look like the weights of 'uni'"):
        load_vendor_state(phikon, foundation_model("phikon_v2"), vendor_state("uni"))
    # A state dict of nothing registered: the expected model and layout are named instead.
    with pytest.raises(InputError, match=r"expected Phikon-v2 .* in the HuggingFace Dinov2Model "
                                         r"layout \(model\.safetensors\)"):
        load_vendor_state(phikon, foundation_model("phikon_v2"), {"w": torch.zeros(1)})


def test_pickled_code_missing_files_and_bad_options_are_refused(tmp_path):
    twin = TWINS["uni"]
    reference = create_backbone(foundation_model("uni"), **twin)
    pickled = tmp_path / "pytorch_model.bin"
    torch.save(reference, pickled)  # the whole module: loading it would run code
    with pytest.raises(InputError, match=r"pytorch_model\.bin: holds pickled code"):
        build_image_encoder("uni", image_px=32, weights=pickled, **twin)
    with pytest.raises(InputError, match="weights file not found"):
        build_image_encoder("uni", image_px=32, weights=tmp_path / "absent.bin", **twin)
    with pytest.raises(InputError, match=r"'virchow2' needs `weights`.*huggingface\.co/paige-ai"):
        build_image_encoder("virchow2", image_px=224)
    with pytest.raises(InputError, match="'uni2_h' cuts its input into 14 px tokens: 16 px "
                                         "crops are not a whole number of them; .* its own "
                                         "28 px"):
        build_image_encoder("uni2_h", image_px=16, load_weights=False, **TWINS["uni2_h"])
    with pytest.raises(InputError, match="'h_optimus_0' takes 28 px crops only"):
        build_image_encoder("h_optimus_0", image_px=14, load_weights=False,
                            **TWINS["h_optimus_0"])
    with pytest.raises(InputError, match="mode 'partial' is not one of frozen, lora, full"):
        build_image_encoder("uni", image_px=32, load_weights=False, mode="partial", **twin)
    with pytest.raises(InputError, match="unknown foundation model 'conch_v1_5'; known: uni, "):
        foundation_model("conch_v1_5")


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights far from their initialisation (layer scale starts at 1e-5, which would hide a
    block loaded wrongly) and batch-norm statistics that are not 0 / 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator) * 0.2
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return module.eval()


def twin_with_reference(name: str):
    """``(state in the vendor's layout, image_px, features computed the vendor's way)``."""
    twin = TWINS[name]
    px = twin.get("img_size", 32)
    x = torch.rand(3, 3, px, px, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if name == "phikon_v2":      # HuggingFace's model: CLS of the last hidden state
            model, _ = hf_dinov2(32, 2, 2, 32)
            _randomise(model, 0)
            state = {_hf4(k): v for k, v in model.state_dict().items()}
            return state, px, model(pixel_values=x).last_hidden_state[:, 0]
        if name == "conch":          # CONCH's tower and forward
            visual = _randomise(conch_tower(2, 32, 2, 32), 0)
            return conch_file(visual), px, conch_features(visual, x)
        if name == "resnet50_imagenet":  # torchvision's model, through layer3, average pooled
            model = _randomise(torchvision_resnet50(twin["layers"]), 0)
            h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            h = model.layer3(model.layer2(model.layer1(h)))
            return model.state_dict(), px, h.mean(dim=(2, 3))
        backbone = _randomise(create_backbone(foundation_model(name), **twin), 0)
        out = backbone(x)
        if name == "virchow2":       # the card: class token beside the mean of the patch tokens
            out = torch.cat([out[:, 0], out[:, 5:].mean(dim=1)], dim=-1)  # 1-4: registers
        return backbone.state_dict(), px, out


@pytest.mark.parametrize("name", NAMES)
def test_a_twin_in_each_vendor_file_layout_gives_the_vendors_features(name, tmp_path):
    state, px, expected = twin_with_reference(name)
    plain = {k: v.contiguous() for k, v in state.items()}
    files = [tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin",
             tmp_path / "checkpoint.pth"]
    save_file(plain, files[0])
    torch.save(plain, files[1])
    torch.save({"model": plain}, files[2])  # nested, as training scripts save
    x = torch.rand(3, 3, px, px, generator=torch.Generator().manual_seed(1))
    for path in files:
        encoder = build_image_encoder(name, image_px=px, weights=path, **TWINS[name]).eval()
        with torch.no_grad():
            features = encoder(x)
        assert features.shape == expected.shape and encoder.out_dim == expected.shape[1]
        assert torch.allclose(features, expected, atol=1e-5), path.name
        assert features.std() > 0.05  # not a degenerate model that any loading would match


def test_modes_frozen_lora_and_full(tmp_path):
    state, px, _ = twin_with_reference("uni")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    twin = TWINS["uni"]

    frozen = build_image_encoder("uni", image_px=px, weights=path, **twin)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert frozen.training and not frozen.backbone.training  # stays in eval mode

    lora = build_image_encoder("uni", image_px=px, weights=path, mode="lora", **twin)
    trainable = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    # STAMP's defaults: rank 8 on every block's attention qkv and output projections.
    assert {n.split(".lora_")[0] for n in trainable} == {
        f"backbone.blocks.{i}.attn.{m}" for i in range(2) for m in ("qkv", "proj")}
    assert trainable["backbone.blocks.0.attn.qkv.lora_A.default.weight"].shape == (8, 32)
    ranked = build_image_encoder("uni", image_px=px, weights=path, mode="lora", r=4, alpha=16,
                                 target_modules=r".*attn\.qkv", **twin)
    lora_a = {n: p.shape for n, p in ranked.named_parameters()
              if n.endswith("lora_A.default.weight")}
    assert lora_a == {f"backbone.blocks.{i}.attn.qkv.lora_A.default.weight": (4, 32)
                      for i in range(2)}

    # CONCH: the adapters go on its ViT trunk, not on the pooler's MultiheadAttention.
    conch = build_image_encoder("conch", image_px=32, load_weights=False, mode="lora",
                                **TWINS["conch"])
    assert {n.split(".lora_")[0] for n, p in conch.named_parameters() if p.requires_grad} == {
        f"backbone.trunk.blocks.{i}.attn.{m}" for i in range(2) for m in ("qkv", "proj")}

    full = build_image_encoder("uni", image_px=px, weights=path, mode="full", **twin)
    assert all(p.requires_grad for p in full.parameters())
    full.train()
    assert full.backbone.training


def test_the_table_command_prints_every_model_with_computed_sizes(capsys):
    main(["--table"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| name | arch | input_px | mpp | patch_um | out_dim | params_m |")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines[2:]}
    assert list(rows) == NAMES
    assert rows["virchow2"][5:8] == ["2560", "631.2", "1.18"]  # out_dim, M params, bf16 GiB
    assert rows["uni"][1:5] == ["vit_large_patch16_224", "224", "0.5", "112.0"]


def embed_and_predict(model_dir, sample, tmp_path) -> None:
    """Embed ``sample`` with the checkpoint and predict its expression: finite, non-constant
    image embeddings of its 36 cells, finite predictions."""
    import anndata as ad

    from pastflow.cli import main as cli
    from pastflow.embed.sample import embed_sample
    from pastflow.embed.settings import EmbedSettings

    table = tmp_path / f"{sample.name}.h5ad"
    embed_sample(model_dir, sample.store, table, EmbedSettings(batch_size=16),
                 table_path=sample.table, sample=sample.name, progress=False)
    embedded = ad.read_h5ad(table)
    assert embedded.obsm["X_image"].shape == (36, 16)
    assert np.isfinite(embedded.obsm["X_image"]).all() and embedded.obsm["X_image"].std() > 0
    predictions = tmp_path / "p.h5ad"
    assert cli(["predict", "--model", str(model_dir), "--embedding", str(table),
                "--table", str(sample.table), "--out", str(predictions)]) == 0
    predicted = ad.read_h5ad(predictions)
    assert predicted.n_obs == 36 and np.isfinite(predicted.X).all()


def test_a_lora_twin_goes_through_pretrain_embed_and_predict(cohort, tmp_path):
    """UNI's twin (16 px input, 8 px tokens) on the demo cohort: the checkpoint rebuilds it
    without the vendor file, the frozen base weights stay the vendor's, only the adapters and
    heads move, and embed / predict read the checkpoint."""
    from pastflow.models.checkpoint import load_checkpoint
    from pastflow.models.train import pretrain
    from test_embed import TINY

    twin = dict(img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    reference = _randomise(create_backbone(foundation_model("uni"), **twin), 0)
    weights = tmp_path / "pytorch_model.bin"
    torch.save(reference.state_dict(), weights)
    config = {**TINY, "model": {**TINY["model"], "image": {
        "name": "uni", "kwargs": {"weights": str(weights), "mode": "lora", **twin}}}}
    out = tmp_path / "pretrained"
    pretrain(config, [(str(s.store), str(s.table)) for s in cohort], out, progress=False)

    weights.unlink()  # the checkpoint alone rebuilds the model
    model = load_checkpoint(out / "model").model
    encoder = model.image_encoder
    assert encoder.spec.name == "uni" and encoder.mode == "lora"
    base = {n.replace(".base_layer", ""): p for n, p in encoder.backbone.state_dict().items()
            if "lora_" not in n}
    assert all(torch.equal(base[n], v) for n, v in reference.state_dict().items())
    assert any(p.abs().sum() > 0 for n, p in encoder.named_parameters() if "lora_B" in n)

    embed_and_predict(out / "model", cohort[0], tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_every_models_twin_in_its_vendor_file_goes_through_pretrain_embed_and_predict(
        name, cohort, tmp_path):
    """Each registered model's reduced-size twin, saved as its vendor's file (``.bin``,
    ``.safetensors``, ``.pth``), frozen: pretraining reads it, the checkpoint alone rebuilds
    it (the file deleted), and embed and predict run on the demo cohort."""
    from pastflow.models.train import pretrain
    from test_embed import TINY

    # Crops of whole tokens: 14 px for the 14 px-token ViTs, the stores' 16 px otherwise;
    # a model whose card fixes its input size is built for the crop.
    spec = foundation_model(name)
    crop = 14 if name in ("uni2_h", "h_optimus_0", "virchow2") else PATCH_PX
    twin = dict(TWINS[name])
    if name in ("h_optimus_0", "prov_gigapath"):
        twin["img_size"] = crop
        state = _randomise(create_backbone(spec, **twin), 0).state_dict()
    else:
        state, _, _ = twin_with_reference(name)
    weights = tmp_path / spec.files[0]
    plain = {k: v.contiguous() for k, v in state.items()}
    if weights.suffix == ".safetensors":
        save_file(plain, weights)
    else:
        torch.save(plain, weights)
    config = {**TINY, "data": {"patch_px": crop}, "model": {**TINY["model"], "image": {
        "name": name, "kwargs": {"weights": str(weights), **twin}}}}
    out = tmp_path / "pretrained"
    pretrain(config, [(str(s.store), str(s.table)) for s in cohort], out, progress=False)
    weights.unlink()
    embed_and_predict(out / "model", cohort[0], tmp_path)


def test_patches_are_normalised_as_the_image_encoder_was_trained_unless_set():
    from pastflow.pretrain.settings import resolve_pretrain_config

    def data(section):
        resolved = resolve_pretrain_config(section)["data"]
        return resolved["mean"], resolved["std"]

    optimus = {"model": {"image": {"name": "h_optimus_0"}}}
    assert data(optimus) == ([0.707223, 0.578729, 0.703617], [0.211883, 0.230117, 0.177517])
    assert data({}) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # resnet18_cell
    assert data({**optimus, "data": {"mean": [0.5, 0.5, 0.5]}}) == (
        [0.5, 0.5, 0.5], [0.211883, 0.230117, 0.177517])
    resolved = resolve_pretrain_config(optimus)
    assert resolve_pretrain_config(resolved) == resolved  # a checkpoint's config is stable
