"""Parameter-efficient adaptation of a frozen image backbone with LoRA (through peft).

STAMP adapts a pathology foundation model to spatial transcriptomics with low-rank adapters
rather than full fine-tuning; SEAL's defaults (rank 8, alpha 8, dropout 0.15 on the attention
projections) are ours. Only the adapters train; the backbone is frozen.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from pastflow.errors import InputError
from pastflow.models.compat import import_peft
from pastflow.models.weights import read_state_dict

log = logging.getLogger(__name__)

# The attention input (qkv) and output (proj) projections of every timm ViT block. A regex,
# not ["qkv", "proj"]: peft matches list entries as name suffixes, and "proj" would also
# catch the patch embedding's convolution (patch_embed.proj).
VIT_ATTENTION_MODULES = r".*attn\.(qkv|proj)"


def load_local_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load a local checkpoint (safetensors, or a weights-only torch file) into ``model``.

    Classifier-head entries the backbone lacks (``head.*``, ``fc.*``; the model is built with
    ``num_classes=0``) are ignored. With ``strict``, any other missing or unexpected name, or
    any shape mismatch, raises :class:`InputError` naming the file and the first such name.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    state = {k: v for k, v in state.items()
             if k in own or not k.startswith(("head.", "fc.", "classifier."))}
    wrong_shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong_shape:
        k = wrong_shape[0]
        raise InputError(path, f"{len(wrong_shape)} tensors do not fit the architecture, first "
                               f"{k!r}: {tuple(state[k].shape)} in the file, "
                               f"{tuple(own[k].shape)} in the model")
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        missing, unexpected = result.missing_keys, result.unexpected_keys
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise InputError(path, f"does not match the architecture: {len(missing)} missing and "
                               f"{len(unexpected)} unexpected tensors ({first}); check the "
                               f"encoder's arch and options, or set strict: false")
    log.info("%s: loaded %d tensors (%d missing, %d unexpected)", path, len(state),
             len(result.missing_keys), len(result.unexpected_keys))
    return model


def add_lora(model: nn.Module, *, r: int = 8, alpha: float = 8, dropout: float = 0.15,
             target_modules: str | list[str] = VIT_ATTENTION_MODULES) -> nn.Module:
    """Freeze ``model`` and inject LoRA adapters into ``target_modules`` (in place).

    The adapters' ``B`` matrices start at zero, so the adapted model computes exactly what the
    frozen one did until training moves them.

    Raises:
        InputError: ``target_modules`` matches no layer of the model.
    """
    peft = import_peft()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules=target_modules, bias="none")
    try:
        model = peft.inject_adapter_in_model(config, model)
    except ValueError as err:
        raise InputError(None, f"LoRA target_modules {target_modules!r}: {err}") from None
    trainable, total = count_parameters(model)
    log.info("LoRA r=%d alpha=%g on %s: %d of %d parameters trainable (%.2f%%)", r, alpha,
             target_modules, trainable, total, 100 * trainable / max(total, 1))
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())

