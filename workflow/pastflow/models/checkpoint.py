"""Checkpoints: a directory of safetensors + JSON, never a pickle.

Layout of a checkpoint directory (written atomically: it appears whole or not at all)::

    model.safetensors           every tensor of PastModel.state_dict()
    config.json                 {"format", "format_version", "pastflow_version", "step",
                                 "config": the resolved run config (with model.genes,
                                 model.pathways, model.image_px), "training": {...} or null}
    training_state.safetensors  optimizer moments, RNG states, the loss history (only in
                                training checkpoints, with "training" in config.json: epoch,
                                batches done in it, scheduler, optimizer groups, RNG metadata)

:func:`load_checkpoint` rebuilds ``PastModel(config["model"])`` and checks every tensor of
the file against it; a checkpoint from elsewhere cannot run code (see
:mod:`pastflow.models.weights` for ``.pt`` files).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pastflow import __version__
from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.models.model import PastModel
from pastflow.models.weights import read_state_dict

log = logging.getLogger(__name__)

FORMAT = "pastflow-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.safetensors"
STEP_DIR = re.compile(r"^step_(\d+)$")

# Keys that may change between a run and its resumption without changing the result.
OPERATIONAL_KEYS = ("train.checkpoint_every", "train.keep_checkpoints", "train.num_workers",
                    "train.log_every", "train.device", "train.channels_last", "train.compile")
# Filled in from the data at run time; compared separately (the data must yield the same).
DERIVED_KEYS = ("model.genes", "model.pathways", "model.image_px", "model.mpp", "model.patch_um")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its config, step, and the training state
    (``training`` JSON and ``tensors``; empty for a model-only checkpoint)."""

    model: PastModel
    config: dict
    step: int
    path: Path
    training: dict | None = None
    tensors: dict = field(default_factory=dict)
    # Per training sample: id and fingerprints of its store and table (models.provenance);
    # None for checkpoints written before pastflow recorded them.
    training_data: list | None = None
    # The validation samples (``data``, as training_data) and, in a final model, the step and
    # loss it was chosen at (models.validation); None when the run had no val samples.
    validation: dict | None = None


def save_checkpoint(path: str | Path, model: PastModel, config: dict, *, step: int,
                    training: dict | None = None, tensors: dict | None = None,
                    training_data: list | None = None,
                    validation: dict | None = None) -> Path:
    """Write checkpoint directory ``path`` atomically and return it.

    Args:
        model: the bare model (not the DDP wrapper).
        config: the resolved run config; ``config["model"]`` must be the one ``model`` was
            built from.
        step: optimizer steps done.
        training: JSON-serialisable training state (see :mod:`pastflow.models.train`).
        tensors: its tensors (optimizer moments, RNG states...), saved beside the model.
        training_data: what the model was trained on (:func:`pastflow.models.provenance.
            training_data`).
        validation: ``{"data": ...}`` of the val samples (same form), plus, in a final
            model, ``best_step``, ``best_loss``, ``steps_trained``, ``stopped_early``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "pastflow_version": __version__, "step": int(step), "config": config,
                "training": training, "training_data": training_data,
                "validation": validation}
    text = json.dumps(document, indent=1)  # before writing: a non-JSON value fails here
    # safetensors refuses tensors sharing memory; a state dict may hold such views.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        if training is not None:
            save_file({k: v.contiguous() for k, v in (tensors or {}).items()},
                      str(tmp / STATE_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(text)
    log.info("checkpoint step %d -> %s", step, path)
    return path


def read_checkpoint_config(path: str | Path) -> dict:
    """The parsed ``config.json`` of checkpoint directory ``path`` (checked format)."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise InputError(file, "checkpoint config not found")
    try:
        document = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(file, f"not valid JSON ({err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(file, f"not a pastflow checkpoint (format {document.get('format')!r})"
                         if isinstance(document, dict) else "not a pastflow checkpoint")
    if document.get("format_version") != FORMAT_VERSION:
        raise InputError(file, f"checkpoint format version {document.get('format_version')}; "
                               f"this pastflow reads {FORMAT_VERSION}")
    return document


def first_difference(a, b, prefix: str = "") -> tuple[str, object, object] | None:
    """The first key (dotted path) at which nested dicts ``a`` and ``b`` differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                return where, a.get(key, "<absent>"), b.get(key, "<absent>")
            found = first_difference(a[key], b[key], where)
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return None if a == b else (prefix, a, b)


def _without(config: dict, keys) -> dict:
    config = json.loads(json.dumps(config))
    for key in keys:
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    return config


def _with_later_defaults(checkpoint_config: dict) -> dict:
    """A checkpoint's config with the settings added since it was written at their defaults:
    it ran without them, that is with the behaviour their defaults keep. A config that no
    longer resolves (a setting since removed) is compared as it is, and differs."""
    from pastflow.pretrain.settings import resolve_pretrain_config

    try:
        return resolve_pretrain_config(checkpoint_config)
    except InputError:
        return checkpoint_config


def check_resumable(checkpoint_config: dict, run_config: dict, source: str | Path) -> None:
    """Raise :class:`InputError` (naming ``source`` and the first differing key) when the run's
    config would not continue the checkpoint's run."""
    ignored = OPERATIONAL_KEYS + DERIVED_KEYS
    found = first_difference(_without(_with_later_defaults(checkpoint_config), ignored),
                             _without(run_config, ignored))
    if found:
        key, theirs, ours = found
        raise InputError(source, f"the checkpoint differs from this run's config at {key!r}: "
                                 f"checkpoint {theirs!r}, config {ours!r}; use another output "
                                 "directory or the checkpoint's config")


def load_checkpoint(path: str | Path, *, config: dict | None = None,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory, or a bare weights file with the run ``config``.

    Args:
        path: a checkpoint directory; or a ``.safetensors`` / weights-only ``.pt`` file, in
            which case ``config`` (a resolved config with ``model.genes`` etc.) is required.
        config: when given with a directory, the run's config must match the checkpoint's
            (:func:`check_resumable`).

    Raises:
        InputError: missing or malformed files; a config that differs from the checkpoint's;
            a tensor missing, unexpected, or of another shape than the model the config builds
            (naming the file and the key); a pickled file ("holds pickled code").
    """
    path = Path(path)
    training, tensors, step, training_data, validation = None, {}, 0, None, None
    if path.is_dir():
        document = read_checkpoint_config(path)
        stored = document["config"]
        if config is not None:
            check_resumable(stored, config, path / CONFIG_FILE)
        config, step, training = stored, int(document["step"]), document.get("training")
        training_data = document.get("training_data")
        validation = document.get("validation")
        weights_file = path / MODEL_FILE
        if training is not None:
            tensors = read_state_dict(path / STATE_FILE) if (path / STATE_FILE).is_file() else {}
            if not tensors:
                raise InputError(path / STATE_FILE, "training state missing or empty")
    else:
        if config is None:
            raise InputError(path, "a bare weights file needs the run's config to build the model")
        weights_file = path
    model = PastModel(config["model"], load_pretrained=False)
    state = read_state_dict(weights_file)
    check_state_dict(model, state, weights_file)
    model.load_state_dict(state)
    model.to(device).eval()
    return Checkpoint(model, config, step, path, training, tensors, training_data, validation)


def check_state_dict(model: torch.nn.Module, state: dict, source: str | Path) -> None:
    """InputError naming ``source`` and the first tensor that is missing, unexpected, or of
    another shape than ``model`` expects."""
    own = model.state_dict()
    for key in own:
        if key not in state:
            raise InputError(source, f"tensor {key!r} of the model the config builds is missing "
                                     f"({len(set(own) - set(state))} missing in all)")
    for key, value in state.items():
        if key not in own:
            raise InputError(source, f"tensor {key!r} is not in the model the config builds "
                                     f"({len(set(state) - set(own))} unexpected in all)")
        if tuple(value.shape) != tuple(own[key].shape):
            raise InputError(source, f"tensor {key!r} has shape {tuple(value.shape)}; the model "
                                     f"the config builds expects {tuple(own[key].shape)}")


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)
             and (p / CONFIG_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: str | Path, keep: int, protect: int | None = None) -> None:
    """Remove all but the ``keep`` most recent checkpoints under ``root``, and the one of step
    ``protect`` (the lowest validation loss so far: the model a run ends with)."""
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        if protect is None or int(STEP_DIR.match(old.name).group(1)) != protect:
            shutil.rmtree(old, ignore_errors=True)
