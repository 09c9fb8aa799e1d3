"""Named pathology foundation models, built from their model cards, loaded from local files.

One table, :data:`FOUNDATION_MODELS`, holds each model's facts: the timm architecture and
keyword arguments its model card gives, the vendor's file names, normalisation, input size,
the resolution it was trained at and its feature width. Every entry is registered as an image
encoder under its name, so a config selects one as::

    model:
      image:
        name: uni
        kwargs: {weights: /data/models/uni/pytorch_model.bin, mode: lora}

Nothing is downloaded: the user fetches the file from the vendor's page (after accepting its
terms) and gives its path. Files are read by :func:`pastflow.models.weights.read_state_dict`
(safetensors, or ``torch.load(weights_only=True)``), renamed from the vendor's layout to
timm's where they differ, and loaded strictly: a missing or unexpected tensor, or a shape that
differs, is an :class:`~pastflow.errors.InputError` naming the file and the first few keys.

Modes: ``frozen`` (the backbone does not train; its batch norms stay in eval mode), ``lora``
(STAMP: the backbone frozen, low-rank adapters on the attention projections, ``r``/``alpha``/
``target_modules`` from the kwargs, rank 8 and alpha 8 by default) and ``full`` (everything
trains).

CONCH's vision tower is a timm ViT-B/16 trunk followed by CoCa's attentional pooler
(:class:`ConchVisual`), rebuilt from the vendor's code (mahmoodlab/CONCH,
``conch/open_clip_custom``); only the tower is read from its CoCa checkpoint.

``python -m pastflow.models.foundation --table`` prints the table with parameter counts and
bf16 weight memory computed from the architectures (built on the meta device, no memory).
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pastflow.errors import InputError
from pastflow.foundation_inputs import FOUNDATION_INPUTS
from pastflow.models.compat import import_timm
from pastflow.models.data import IMAGENET_MEAN, IMAGENET_STD
from pastflow.models.image import ImageEncoder
from pastflow.models.lora import VIT_ATTENTION_MODULES, add_lora, count_parameters
from pastflow.models.registry import register_image_encoder
from pastflow.models.weights import read_state_dict

log = logging.getLogger(__name__)

MODES = ("frozen", "lora", "full")
_SHOWN_KEYS = 3  # keys named in an error message, per kind


# -- vendor layouts -> timm names --------------------------------------------------------------

def timm_layout(state: dict) -> tuple[dict, list[str]]:
    """Files saved from the timm model itself: names are already timm's."""
    return dict(state), []


def torchvision_resnet_truncated(state: dict) -> tuple[dict, list[str]]:
    """torchvision's ResNet-50 (and timm's ``resnet50.tv_in1k``, same names): keep the stem and
    ``layer1``-``layer3``; ``layer4`` and ``fc`` are dropped on purpose (the truncated model)."""
    kept = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    return kept, []


# CONCH's file is a whole CoCa model (mahmoodlab/CONCH, coca_model.py): ``visual.trunk.*`` (a
# timm ViT), ``visual.attn_pool_contrast.*`` and ``visual.ln_contrast.*`` make its image
# features (``encode_image(proj_contrast=False, normalize=False)``); the contrastive
# projection, the captioning pooler, the text tower, decoder and temperature are not used.
_CONCH_TOWER = ("visual.trunk.", "visual.attn_pool_contrast.", "visual.ln_contrast.")
_CONCH_UNUSED = ("visual.proj_contrast", "visual.attn_pool_caption.", "visual.ln_caption.",
                 "text.", "text_decoder.", "logit_scale")


def conch_layout(state: dict) -> tuple[dict, list[str]]:
    """CONCH's CoCa checkpoint -> :class:`ConchVisual` names (``visual.`` dropped)."""
    mapped, unmapped = {}, []
    for key, value in state.items():
        if key.startswith(_CONCH_TOWER):
            mapped[key[len("visual."):]] = value
        elif not key.startswith(_CONCH_UNUSED):
            unmapped.append(key)
    return mapped, unmapped


# HuggingFace Dinov2Model names (transformers < 5 wrote the files the vendors published:
# ``attention.attention.query``; transformers 5 reads them as ``attention.q_proj``); both are
# accepted. ``mask_token`` is used only by iBOT's masked-patch loss, so it is dropped.
_HF_BLOCK = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_HF_BLOCK_NAMES = {
    "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
}
_HF_QKV = {"attention.attention.query": "q", "attention.attention.key": "k",
           "attention.attention.value": "v", "attention.q_proj": "q",
           "attention.k_proj": "k", "attention.v_proj": "v"}
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}


def hf_dinov2_layout(state: dict) -> tuple[dict, list[str]]:
    """HuggingFace ``Dinov2Model`` -> timm ``VisionTransformer``: separate query/key/value
    projections are stacked into timm's ``qkv`` (q, k, v order, as timm splits them) and
    ``layer_scale{1,2}.lambda1`` become ``ls{1,2}.gamma``. Returns ``(mapped, unmapped)``."""
    mapped, unmapped, qkv = {}, [], {}
    for key, value in state.items():
        name = key[len("dinov2."):] if key.startswith("dinov2.") else key
        if name == "embeddings.mask_token":
            continue
        if name in _HF_TOP:
            mapped[_HF_TOP[name]] = value
            continue
        block = _HF_BLOCK.fullmatch(name)
        if block is None:
            unmapped.append(key)
            continue
        index, rest = block.groups()
        module, _, kind = rest.rpartition(".")
        if module in _HF_QKV:
            qkv.setdefault((index, kind), {})[_HF_QKV[module]] = value
        elif module in _HF_BLOCK_NAMES:
            mapped[f"blocks.{index}.{_HF_BLOCK_NAMES[module]}.{kind}"] = value
        elif rest in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
            mapped[f"blocks.{index}.ls{rest[len('layer_scale')]}.gamma"] = value
        else:
            unmapped.append(key)
    for (index, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            mapped[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in "qkv"])
        else:
            unmapped.extend(f"encoder.layer.{index}.attention.{p}.{kind}" for p in parts)
    return mapped, unmapped


class AttentionalPooler(nn.Module):
    """CoCa's attentional pooler: learned queries attend over the tokens.

    ``tokens (n, L, context_dim)`` -> ``(n, n_queries, d_model)``. Parameter names are those
    of the vendor's module (``query``, ``attn`` a :class:`torch.nn.MultiheadAttention` with
    ``kdim = vdim = context_dim``, ``ln_q``, ``ln_k``), so its weights load unchanged.
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = self.ln_k(tokens).transpose(0, 1)                  # (L, n, context_dim)
        queries = self.ln_q(self.query).unsqueeze(1).expand(-1, tokens.shape[0], -1)
        pooled = self.attn(queries, keys, keys, need_weights=False)[0]
        return pooled.transpose(0, 1)


class ConchVisual(nn.Module):
    """CONCH's image features: every token of a timm ViT trunk (after its final norm), pooled
    by one learned query (8 heads, 512 wide) and layer-normed: ``(n, 3, s, s)`` -> ``(n, 512)``."""

    def __init__(self, trunk: nn.Module, contrast_dim: int = 512, heads: int = 8):
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(contrast_dim, trunk.num_features, heads)
        self.ln_contrast = nn.LayerNorm(contrast_dim)
        self.num_features = contrast_dim

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(patches)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


# -- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FoundationModel:
    """One pathology foundation model as its model card defines it.

    ``timm_kwargs`` are the card's ``timm.create_model`` arguments; the strings
    ``"SwiGLUPacked"`` and ``"SiLU"`` stand for ``timm.layers.SwiGLUPacked`` and
    ``torch.nn.SiLU`` (resolved when built, so that the table stays plain data).
    """

    name: str
    title: str
    page: str                       # where the user downloads the file, after accepting terms
    licence: str
    files: tuple[str, ...]          # the vendor's file names, any of which pastflow reads
    arch: str
    timm_kwargs: dict[str, Any]
    image_px: int                   # the input side it was trained on
    mpp: float                      # microns per pixel of its training tiles (20x)
    out_dim: int                    # width of the features the encoder returns
    card_params_m: float            # parameter count the vendor states, millions
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # timm's pooled features, "cls_mean_patch" (Virchow) or "conch" (CoCa's pooler)
    pooling: str = "timm"
    to_timm: Callable[[dict], tuple[dict, list[str]]] = field(default=timm_layout, repr=False)
    layout: str = "timm"            # the file's key names, in words

    @property
    def patch_um(self) -> float:
        """Side of its input tile in microns."""
        return self.image_px * self.mpp


def _input(name: str) -> dict:
    """``image_px`` and ``mpp`` of ``name``, from the torch-free table the workflow reads."""
    image_px, mpp = FOUNDATION_INPUTS[name]
    return {"image_px": image_px, "mpp": mpp}


FOUNDATION_MODELS: dict[str, FoundationModel] = {m.name: m for m in (
    FoundationModel(
        name="uni", title="UNI (ViT-L/16)", page="https://huggingface.co/MahmoodLab/UNI",
        licence="CC-BY-NC-ND-4.0", files=("pytorch_model.bin",),
        arch="vit_large_patch16_224",
        timm_kwargs=dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
        **_input("uni"), out_dim=1024, card_params_m=303),
    FoundationModel(
        name="uni2_h", title="UNI2-h (ViT-H/14, 8 registers)",
        page="https://huggingface.co/MahmoodLab/UNI2-h", licence="CC-BY-NC-ND-4.0",
        files=("pytorch_model.bin",), arch="vit_giant_patch14_224",
        timm_kwargs=dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                         embed_dim=1536, mlp_ratio=2.66667 * 2, no_embed_class=True,
                         mlp_layer="SwiGLUPacked", act_layer="SiLU", reg_tokens=8,
                         dynamic_img_size=True),
        **_input("uni2_h"), out_dim=1536, card_params_m=681),
    FoundationModel(
        name="conch", title="CONCH vision tower (ViT-B/16, CoCa pooler)",
        page="https://huggingface.co/MahmoodLab/CONCH", licence="CC-BY-NC-ND-4.0",
        files=("pytorch_model.bin",), arch="vit_base_patch16_224",
        # conch_ViT-B-16.json: image_size 448, patch 16; the trunk is timm's ViT-B (width 768,
        # 12 blocks, 12 heads, MLP x4) built with dynamic_img_size.
        timm_kwargs=dict(img_size=448, patch_size=16, dynamic_img_size=True),
        # mpp: CONCH is benchmarked on 20x tiles (its pretraining pairs mix magnifications).
        **_input("conch"), out_dim=512, card_params_m=86, pooling="conch",
        mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
        to_timm=conch_layout, layout="CONCH CoCa (open_clip)"),
    FoundationModel(
        name="h_optimus_0", title="H-optimus-0 (ViT-g/14, 4 registers)",
        page="https://huggingface.co/bioptimus/H-optimus-0", licence="Apache-2.0",
        files=("model.safetensors", "pytorch_model.bin"),
        arch="vit_giant_patch14_reg4_dinov2",
        timm_kwargs=dict(img_size=224, init_values=1e-5, dynamic_img_size=False),
        **_input("h_optimus_0"), out_dim=1536, card_params_m=1100,
        mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517)),
    FoundationModel(
        name="virchow2", title="Virchow2 (ViT-H/14, 4 registers)",
        page="https://huggingface.co/paige-ai/Virchow2", licence="CC-BY-NC-ND-4.0",
        files=("model.safetensors", "pytorch_model.bin"), arch="vit_huge_patch14_224",
        timm_kwargs=dict(img_size=224, init_values=1e-5, mlp_ratio=5.3375, reg_tokens=4,
                         global_pool="", dynamic_img_size=True, mlp_layer="SwiGLUPacked",
                         act_layer="SiLU"),
        # The card's embedding: class token beside the mean of the patch tokens (1280 + 1280).
        **_input("virchow2"), out_dim=2560, card_params_m=632, pooling="cls_mean_patch"),
    FoundationModel(
        name="prov_gigapath", title="Prov-GigaPath tile encoder (ViT-g/16)",
        page="https://huggingface.co/prov-gigapath/prov-gigapath", licence="Apache-2.0",
        files=("pytorch_model.bin",), arch="vit_giant_patch14_dinov2",
        timm_kwargs=dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40,
                         num_heads=24, init_values=1e-5, mlp_ratio=5.33334),
        **_input("prov_gigapath"), out_dim=1536, card_params_m=1134),
    FoundationModel(
        name="phikon_v2", title="Phikon-v2 (ViT-L/16, DINOv2)",
        page="https://huggingface.co/owkin/phikon-v2", licence="owkin non-commercial",
        files=("model.safetensors",), arch="vit_large_patch16_224",
        # HuggingFace Dinov2Config of the card: hidden 1024, 24 layers, 16 heads, patch 16,
        # image 224, layer scale, GELU MLP x4, no registers; features = CLS after layernorm.
        timm_kwargs=dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True),
        **_input("phikon_v2"), out_dim=1024, card_params_m=303,
        to_timm=hf_dinov2_layout, layout="HuggingFace Dinov2Model"),
    FoundationModel(
        name="resnet50_imagenet", title="ResNet-50, ImageNet, truncated after layer3",
        page="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        licence="BSD-3-Clause (torchvision)",
        files=("resnet50-0676ba61.pth", "model.safetensors"), arch="resnet50",
        # The HEST-Benchmark / CLAM baseline: layer3's 1024 channels, average pooled.
        timm_kwargs=dict(features_only=True, out_indices=(3,)),
        **_input("resnet50_imagenet"), out_dim=1024, card_params_m=8.5,
        to_timm=torchvision_resnet_truncated, layout="torchvision ResNet"),
)}


# -- building and loading ----------------------------------------------------------------------

def foundation_model(name: str) -> FoundationModel:
    """The table entry ``name``; :class:`InputError` listing the known names otherwise."""
    try:
        return FOUNDATION_MODELS[name]
    except KeyError:
        raise InputError(None, f"unknown foundation model {name!r}; known: "
                               f"{', '.join(FOUNDATION_MODELS)}") from None


def encoder_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` patches are normalised with for image encoder ``name``: a named
    foundation model's own, ImageNet's for any other encoder."""
    spec = FOUNDATION_MODELS.get(name)
    return (spec.mean, spec.std) if spec else (IMAGENET_MEAN, IMAGENET_STD)


def _resolve_layers(kwargs: dict) -> dict:
    timm = import_timm()
    layers = {"SwiGLUPacked": timm.layers.SwiGLUPacked, "SiLU": nn.SiLU}
    return {k: layers.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}


def create_backbone(spec: FoundationModel, **overrides) -> nn.Module:
    """``spec``'s timm architecture, untrained (``pretrained=False``); ``overrides`` replace
    card arguments (a reduced-size twin for tests: ``depth=2, embed_dim=64, ...``)."""
    timm = import_timm()
    kwargs = _resolve_layers({**spec.timm_kwargs, **overrides})
    if kwargs.get("features_only"):
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    backbone = timm.create_model(spec.arch, pretrained=False, num_classes=0, **kwargs)
    return ConchVisual(backbone) if spec.pooling == "conch" else backbone


def check_input_side(name: str, backbone: nn.Module, image_px: int, own_px: int) -> None:
    """Refuse crops a ViT cannot take, before timm's assertion deep in a forward pass: not a
    whole number of its tokens, or another size than the one its card fixes (a model built
    without ``dynamic_img_size``). CNNs take any size."""
    vit = getattr(backbone, "trunk", backbone)
    embed = getattr(vit, "patch_embed", None)
    if embed is None:
        return
    token = int(embed.patch_size[0])
    fix = ("leave patches.mpp and patches.patch_um unset, and pretrain.data.patch_px null, "
           "for its own")
    if image_px % token:
        raise InputError(None, f"image encoder {name!r} cuts its input into {token} px tokens: "
                               f"{image_px} px crops are not a whole number of them; {fix} "
                               f"{own_px} px")
    if not getattr(vit, "dynamic_img_size", False) and getattr(embed, "strict_img_size", False) \
            and image_px != own_px:
        raise InputError(None, f"image encoder {name!r} takes {own_px} px crops only (its card "
                               f"builds it for that size); got {image_px} px: {fix}")


def _shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _first(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:_SHOWN_KEYS])
    return shown + (f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def _looks_like(state: dict, exclude: str) -> str | None:
    """The registered model whose full-size weights ``state`` is, if any (meta-device builds)."""
    for other in FOUNDATION_MODELS.values():
        if other.name == exclude:
            continue
        mapped, unmapped = other.to_timm(state)
        if unmapped or not mapped:
            continue
        with torch.device("meta"):
            expected = _shapes(create_backbone(other).state_dict())
        if _shapes(mapped) == expected:
            return other.name
    return None


def load_vendor_state(backbone: nn.Module, spec: FoundationModel, state: dict, *,
                      source: str | Path | None = None, assign: bool = False) -> nn.Module:
    """Load a state dict in the vendor's layout into ``backbone`` (built by
    :func:`create_backbone`), strictly.

    Raises:
        InputError: naming ``source``, the model, how many tensors are missing, unexpected or
            of another shape, the first few of each, and the registered model the tensors
            belong to when they are another's.
    """
    mapped, unmapped = spec.to_timm(state)
    own = _shapes(backbone.state_dict())
    got = _shapes(mapped)
    missing = set(own) - set(got)
    unexpected = (set(got) - set(own)) | set(unmapped)
    reshaped = [k for k in set(own) & set(got) if own[k] != got[k]]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        if reshaped:
            k = sorted(reshaped)[0]
            parts.append(f"{len(reshaped)} of another shape (first {k!r}: {got[k]} in the "
                         f"file, {own[k]} in {spec.name})")
        other = _looks_like(state, spec.name)
        hint = (f"; these look like the weights of {other!r}" if other else
                f"; expected {spec.title} in the {spec.layout} layout ({', '.join(spec.files)})")
        raise InputError(source, f"not the weights of foundation model {spec.name!r}: "
                                 f"{'; '.join(parts)}{hint}")
    backbone.load_state_dict(mapped, strict=True, assign=assign)
    return backbone


def load_foundation_weights(backbone: nn.Module, spec: FoundationModel,
                            path: str | Path) -> nn.Module:
    """Read ``path`` without running code from it and load it strictly into ``backbone``."""
    state = read_state_dict(path)
    load_vendor_state(backbone, spec, state, source=path)
    log.info("%s: loaded %d tensors into %s", path, len(state), spec.name)
    return backbone


# -- the encoder -------------------------------------------------------------------------------

class FoundationEncoder(ImageEncoder):
    """A foundation model's backbone with its card's pooling: ``(n, 3, s, s)`` -> ``(n, out_dim)``.

    A frozen backbone stays in eval mode when the model trains, so that batch-norm statistics
    (ResNet) and dropout do not change what it computes.
    """

    def __init__(self, backbone: nn.Module, spec: FoundationModel, mode: str):
        # ImageEncoder's __init__ reads num_features, which a features_only CNN lacks.
        nn.Module.__init__(self)
        self.backbone, self.arch, self.spec, self.mode = backbone, spec.arch, spec, mode
        # A features_only CNN's feature_info has channels(); a ViT's is a plain list.
        if callable(getattr(getattr(backbone, "feature_info", None), "channels", None)):
            self.out_dim = int(backbone.feature_info.channels()[-1])
        elif spec.pooling == "cls_mean_patch":
            self.out_dim = 2 * int(backbone.num_features)
        else:
            self.out_dim = int(backbone.num_features)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        out = self.backbone(patches)
        if isinstance(out, (list, tuple)):                  # feature maps -> global average
            return out[-1].mean(dim=(2, 3))
        if self.spec.pooling == "cls_mean_patch":
            prefix = int(self.backbone.num_prefix_tokens)  # class + register tokens
            return torch.cat([out[:, 0], out[:, prefix:].mean(dim=1)], dim=-1)
        return out

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode == "frozen":
            self.backbone.eval()
        return self


def build_foundation_encoder(name: str, image_px: int, weights: str | Path | None = None,
                             mode: str = "frozen", r: int = 8, alpha: float = 8,
                             dropout: float = 0.15,
                             target_modules: str | list[str] = VIT_ATTENTION_MODULES,
                             load_weights: bool = True, **overrides) -> FoundationEncoder:
    """Foundation model ``name`` from the local file ``weights``, in ``mode``.

    ``image_px`` is the patch side the data gives; a model built for another size takes it
    through interpolated position embeddings (ViTs) or global pooling (ResNet), but its
    features are those of its own ``image_px`` and ``mpp`` (see the table). ``load_weights=
    False`` skips the file (a pastflow checkpoint supplies every tensor); ``overrides`` change
    timm arguments (reduced-size twins in tests).
    """
    spec = foundation_model(name)
    if mode not in MODES:
        raise InputError(None, f"image encoder {name!r}: mode {mode!r} is not one of "
                               f"{', '.join(MODES)}")
    if weights is None and load_weights:
        raise InputError(None, f"image encoder {name!r} needs `weights`: the local path of "
                               f"{' or '.join(spec.files)} from {spec.page} "
                               "(docs/foundation-models.md)")
    backbone = create_backbone(spec, **overrides)
    if load_weights:
        load_foundation_weights(backbone, spec, weights)
    own_px = int(overrides.get("img_size", spec.image_px))
    check_input_side(name, backbone, image_px, own_px)
    if image_px != own_px:
        log.warning("%s was trained on %d px tiles at %g um/px; the patches are %d px",
                    name, own_px, spec.mpp, image_px)
    if mode == "lora":
        backbone = add_lora(backbone, r=r, alpha=alpha, dropout=dropout,
                            target_modules=target_modules)
    elif mode == "frozen":
        backbone.requires_grad_(False)
    trainable, total = count_parameters(backbone)
    log.info("%s (%s): %d of %d parameters trainable", name, mode, trainable, total)
    return FoundationEncoder(backbone, spec, mode)


# Registered by the imported module only: run as ``python -m``, this file is also ``__main__``,
# and registering twice is an error.
if __name__ == "pastflow.models.foundation":
    for _name in FOUNDATION_MODELS:
        register_image_encoder(_name)(partial(build_foundation_encoder, _name))


# -- the table, printed ------------------------------------------------------------------------

def table_rows() -> list[dict]:
    """One row per model with parameter counts computed on the meta device."""
    rows = []
    for spec in FOUNDATION_MODELS.values():
        with torch.device("meta"):
            params = sum(p.numel() for p in create_backbone(spec).parameters())
        rows.append({"name": spec.name, "title": spec.title, "arch": spec.arch,
                     "input_px": spec.image_px, "mpp": spec.mpp, "patch_um": spec.patch_um,
                     "out_dim": spec.out_dim, "params_m": round(params / 1e6, 1),
                     "bf16_gib": round(params * 2 / 2**30, 2),
                     "mean": spec.mean, "std": spec.std, "files": ", ".join(spec.files),
                     "layout": spec.layout, "licence": spec.licence, "page": spec.page})
    return rows


def format_table(rows: list[dict]) -> str:
    columns = ["name", "arch", "input_px", "mpp", "patch_um", "out_dim", "params_m", "bf16_gib",
               "files", "layout"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pastflow.models.foundation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true",
                        help="print the registered models as a Markdown table")
    args = parser.parse_args(argv)
    if args.table:
        print(format_table(table_rows()))
    else:
        parser.print_help()


if __name__ == "__main__":
    from pastflow.models.foundation import main as registered_main

    registered_main()
