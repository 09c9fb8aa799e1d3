"""Image encoders: timm backbones trained from scratch, or a local foundation model + LoRA.

Every encoder maps normalised patches ``float (n, 3, image_px, image_px)`` to features
``float (n, out_dim)`` (timm's pooled features, ``num_classes=0``). Nothing is downloaded:
``pretrained=False`` always; pretrained weights come only from a local file.

Registered names (see :mod:`pastflow.models.registry`):

- ``timm``: any timm architecture ``arch``, from scratch or from local ``weights``;
- ``vit_cell``: a ViT-Tiny sized for cell patches (8 px tokens, 6 blocks, width 192);
- ``resnet18_cell``: timm's ResNet-18;
- ``timm_lora``: a local pathology foundation model checkpoint, frozen, adapted with LoRA;
- ``uni``, ``uni2_h``, ``virchow2``, ...: named foundation models, their architecture and
  file layout from the model cards (:mod:`pastflow.models.foundation`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from pastflow.errors import InputError
from pastflow.models.compat import import_timm
from pastflow.models.lora import VIT_ATTENTION_MODULES, add_lora, count_parameters, load_local_weights
from pastflow.models.registry import register_image_encoder

log = logging.getLogger(__name__)


class ImageEncoder(nn.Module):
    """A timm backbone: ``float (n, 3, s, s)`` -> pooled features ``float (n, out_dim)``."""

    def __init__(self, backbone: nn.Module, arch: str):
        super().__init__()
        self.backbone = backbone
        self.arch = arch
        # With num_classes=0, forward returns the head's hidden features where the model has
        # a pre-logits layer (MobileNetV3: 1024), else num_features (ResNet-18: 512).
        self.out_dim = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)

    def forward(self, patches):
        return self.backbone(patches)


def create_timm_backbone(arch: str, image_px: int, **timm_kwargs) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=0, in_chans=3, img_size=image_px)``.

    ``img_size`` is passed only to architectures that take it (ViTs, Swin, ...); convolutional
    networks pool globally and accept any size. ViTs are also built to take any input size
    (``dynamic_img_size``, padded to whole tokens): a spot's crop is larger than a cell's
    (:func:`pastflow.resolution.crop_px`). Neither changes the weights.
    """
    if timm_kwargs.pop("pretrained", False):
        raise InputError(None, f"image encoder {arch!r}: pretrained=true would download weights; "
                               "give a local checkpoint path as `weights` instead")
    timm = import_timm()
    if not timm.is_model(arch):
        raise InputError(None, f"unknown timm architecture {arch!r}")
    kwargs = dict(pretrained=False, num_classes=0, in_chans=3, **timm_kwargs)
    any_size = {"dynamic_img_size": True, "dynamic_img_pad": True}
    for extra in ({"img_size": image_px, **any_size}, {"img_size": image_px}):
        try:
            return timm.create_model(arch, **{**extra, **kwargs})  # the config's own kwargs win
        except TypeError as err:
            if not any(key in str(err) for key in extra):
                raise InputError(None, f"timm architecture {arch!r}: {err}") from None
    try:
        return timm.create_model(arch, **kwargs)
    except TypeError as err:
        raise InputError(None, f"timm architecture {arch!r}: {err}") from None


@register_image_encoder("timm")
def timm_encoder(arch: str, image_px: int, weights: str | Path | None = None,
                 strict: bool = True, load_weights: bool = True, **timm_kwargs) -> ImageEncoder:
    """Any timm architecture; from scratch, or fully fine-tuned from local ``weights``.

    ``load_weights=False`` skips reading ``weights`` (a pastflow checkpoint supplies them).
    """
    backbone = create_timm_backbone(arch, image_px, **timm_kwargs)
    if weights is not None and load_weights:
        load_local_weights(backbone, weights, strict=strict)
    return ImageEncoder(backbone, arch)


@register_image_encoder("vit_cell")
def vit_cell(image_px: int = 64, patch_size: int = 8, depth: int = 6, embed_dim: int = 192,
             num_heads: int = 3, **timm_kwargs) -> ImageEncoder:
    """ViT-Tiny width (192, 3 heads) with 8 px tokens and 6 blocks: 64 tokens for a 64 px patch.

    The stock 16 px tokens would leave a 64 px cell patch only 16 tokens, a 32 px one 4.
    """
    if image_px % patch_size:
        raise InputError(None, f"vit_cell: image_px {image_px} is not a multiple of the "
                               f"token size {patch_size}")
    return timm_encoder("vit_tiny_patch16_224", image_px, patch_size=patch_size, depth=depth,
                        embed_dim=embed_dim, num_heads=num_heads, **timm_kwargs)


@register_image_encoder("resnet18_cell")
def resnet18_cell(image_px: int = 64, **timm_kwargs) -> ImageEncoder:
    """timm's ResNet-18 (512 features, 11.2 M parameters), global average pooled."""
    return timm_encoder("resnet18", image_px, **timm_kwargs)


@register_image_encoder("timm_lora")
def timm_lora(arch: str, weights: str | Path, image_px: int, r: int = 8, alpha: float = 8,
              dropout: float = 0.15, target_modules: str | list[str] = VIT_ATTENTION_MODULES,
              strict: bool = True, load_weights: bool = True, **timm_kwargs) -> ImageEncoder:
    """A local pathology foundation model (timm ``arch`` + ``weights``), frozen, with LoRA.

    ``timm_kwargs`` must rebuild the checkpoint's architecture (e.g. UNI: ``arch:
    vit_large_patch16_224, init_values: 1e-5, dynamic_img_size: true``). ``load_weights=False``
    skips reading ``weights`` (used when a pastflow checkpoint supplies every tensor).
    """
    backbone = create_timm_backbone(arch, image_px, **timm_kwargs)
    if load_weights:
        load_local_weights(backbone, weights, strict=strict)
    backbone = add_lora(backbone, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)
    trainable, total = count_parameters(backbone)
    log.info("timm_lora %s from %s: %d of %d parameters trainable", arch, weights, trainable, total)
    return ImageEncoder(backbone, arch)


# Imported last: foundation.py builds on ImageEncoder above and registers the named
# pathology foundation models (uni, virchow2, ...) beside these encoders.
from pastflow.models import foundation  # noqa: E402,F401
