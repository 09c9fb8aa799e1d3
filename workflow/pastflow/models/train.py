"""``pretrain``: the PAST/STAMP pretraining loop, resumable exactly, on one or many processes.

- AdamW (no weight decay on biases, norms, temperatures, dispersions), linear warm-up then
  cosine decay, gradient clipping; bf16 autocast on CUDA, fp32 on CPU.
- DistributedDataParallel when launched by torchrun (``WORLD_SIZE > 1``): NCCL on GPUs,
  gloo on CPUs; a :class:`~pastflow.models.data.ResumableBatchSampler` per rank (a batch
  holds one crop size: cells, or spots of one diameter).
- The learning-rate rule: ``train.batch_size`` is the global batch (cells per optimiser step,
  all processes together; each of ``W`` processes takes its ``1/W`` slice of the batch one
  process would take), and ``train.lr`` is the peak learning rate of that batch, used
  unchanged whatever ``W``. The contrastive losses gather the ranks' embeddings (each cell
  meets the whole batch's negatives), BatchNorm is synchronised on GPUs, and DDP averages the
  ranks' gradients of their shares of the loss: a config trains the same model on any number
  of GPUs, and resumes on another number. To train with a bigger batch on more GPUs, raise
  ``train.batch_size`` and choose ``train.lr`` for it (for AdamW, about sqrt of the batch
  ratio is the usual starting point).
- A checkpoint every ``train.checkpoint_every`` steps, at the end, and on SIGTERM, SIGUSR1
  or SIGURG (:data:`STOP_SIGNALS`: Slurm's pre-emption and time-limit signals, and the
  early warning the Slurm profile asks for): the handler only sets a flag; the loop
  finishes the current step, saves, and :func:`pretrain` returns with ``preempted=True``
  (the CLI then exits with :data:`EXIT_PREEMPTED`; under torchrun,
  :mod:`pastflow.launch` keeps that status, which torchrun would turn into 1).
- The device: ``train.device`` (:mod:`pastflow.models.device`); each rank saves and
  restores the RNG state of its own GPU only.
- Run again with the same output directory, it resumes from the newest checkpoint exactly:
  model, optimizer, scheduler, step, every rank's RNG states, the sampler's position in the
  epoch. Augmentations are seeded by (seed, epoch, cell), so the resumed run's final weights
  equal an uninterrupted run's.
- A frozen image encoder (no trainable parameter) runs once per cell, not per step: its
  features are cached under ``out_dir/feature_cache`` and the batches carry them instead of
  patches, without augmentation (:mod:`pastflow.models.feature_cache`;
  ``train.cache_frozen_features: false`` turns it off).

- With validation samples (the sheet's ``val`` split, never trained on): the validation loss
  at every regular checkpoint (:mod:`pastflow.models.validation`); the model written is the
  checkpoint of the lowest one, and training stops after ``train.early_stopping_patience``
  checkpoints without a lower one. Without them: the training loss only, the last checkpoint.

Outputs under ``out_dir``: ``checkpoints/step_*/`` (the newest ``train.keep_checkpoints``, and
the one of the lowest validation loss), ``model/`` (the final model: ``model.safetensors`` +
``config.json``), ``metrics.tsv`` (one row per step: total loss, each part, learning rate,
temperature; ``val_loss`` and ``val_<part>`` at the validated steps, empty at the others),
``training_curves.png`` and ``pathway_coverage.tsv`` (per sample and gene set: member genes
measured, kept or not); with a frozen image encoder, ``feature_cache/``.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.foundation_inputs import foundation_input
# EXIT_PREEMPTED (75): stopped by a signal, the checkpoint to resume from saved; defined
# beside the torchrun wrapper that keeps it.
from pastflow.launch import EXIT_PREEMPTED  # noqa: F401 (re-exported)
from pastflow.job_cpus import default_loader_workers
from pastflow.models import checkpoint as ckpt
from pastflow.models.augment import prepare_images
from pastflow.models.curves import plot_training_curves
from pastflow.models.data import ResumableBatchSampler, dataset_from_config, make_loader
from pastflow.models.device import on_device
from pastflow.models.feature_cache import cache_frozen_features, encoder_is_frozen
from pastflow.models.distributed import (DistContext, init_distributed, local_processes,
                                         mean_over_ranks, shutdown_distributed)
from pastflow.models.model import PastModel
from pastflow.models.provenance import describe_change, training_data
from pastflow.models.validation import (VAL_PREFIX, stale_checkpoints, validation_loss,
                                        validation_set)
from pastflow.models.serialize import (optimizer_from_state, optimizer_to_state, rng_from_state,
                                       rng_to_state, scheduler_from_state, scheduler_to_state)
from pastflow.models.weights import read_state_dict
from pastflow.pretrain.settings import resolve_pretrain_config
from pastflow.resolution import check_resolution, same_resolution, training_resolution

log = logging.getLogger(__name__)

# SIGURG: the Slurm profile's warning before the time limit (`--signal=URG@...`). Slurm sends
# it to every process of the job step; only this handler acts on it, as every other process
# (Snakemake, its shell, torchrun, loader workers) ignores SIGURG by default, while SIGUSR1
# would kill Snakemake's job process first.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)


@dataclass
class TrainResult:
    """What :func:`pretrain` did: the bare model (this rank's), the steps done, whether it
    stopped on a signal, the per-step ``history`` and the resolved ``config``."""

    model: PastModel
    step: int
    preempted: bool
    history: pd.DataFrame
    config: dict
    out_dir: Path
    best_step: int | None = None  # the step of the model written, with validation samples


class StopRequest:
    """Context manager: while active, :data:`STOP_SIGNALS` set ``requested`` instead of
    killing."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals, self.requested, self._previous = signals, False, {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        log.warning("received %s: stopping after this step", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_schedule(warmup_steps: int, total_steps: int, min_ratio: float):
    """``lr(step) / lr``: linear warm-up over ``warmup_steps``, then cosine to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: matrices decay; vectors and scalars
    (biases, norms, log-temperatures, log-dispersions) do not."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class _Run:
    """The state a checkpoint holds, and how to save and restore it. The validation history
    is part of it: the best checkpoint and early stopping follow from it on resume."""

    def __init__(self, config: dict, model: PastModel, optimizer, scheduler, context: DistContext,
                 data: list[dict], validation_data: list[dict] | None = None):
        self.config, self.model, self.optimizer, self.scheduler = config, model, optimizer, scheduler
        self.context, self.data, self.validation_data = context, data, validation_data
        self.step = self.epoch = self.batches_done = 0
        self.history: list[list[float]] = []
        self.columns: list[str] = []
        self.validation: list[list[float]] = []  # one row per validated step
        self.val_columns: list[str] = []

    def save(self, root: Path) -> None:
        # Every rank's RNG state (its own GPU's only) travels to rank 0, so that each rank
        # resumes its own stream.
        rng = self.context.gather(rng_to_state(self.context.device))
        if not self.context.is_main:
            return
        optimizer_meta, tensors = optimizer_to_state(self.optimizer)
        rng_meta = []
        for rank, (meta, rng_tensors) in enumerate(rng):
            rng_meta.append(meta)
            tensors.update({f"rank{rank}.{k}": v for k, v in rng_tensors.items()})
        tensors["history"] = torch.tensor(self.history, dtype=torch.float64).reshape(
            len(self.history), len(self.columns))
        if self.validation:
            tensors["validation"] = torch.tensor(self.validation, dtype=torch.float64)
        training = {"epoch": self.epoch, "batches_done": self.batches_done,
                    "world_size": self.context.world_size, "scheduler": scheduler_to_state(self.scheduler),
                    "optimizer": optimizer_meta, "rng": rng_meta, "history_columns": self.columns,
                    "validation_columns": self.val_columns}
        validation = None if self.validation_data is None else {"data": self.validation_data}
        ckpt.save_checkpoint(ckpt.checkpoint_dir(root, self.step), self.model, self.config,
                             step=self.step, training=training, tensors=tensors,
                             training_data=self.data, validation=validation)
        ckpt.prune_checkpoints(root, int(self.config["train"]["keep_checkpoints"]),
                               protect=self.best_step())

    def restore(self, path: Path) -> None:
        document = ckpt.read_checkpoint_config(path)
        training = document["training"]
        if training is None:
            raise InputError(path / ckpt.CONFIG_FILE, "a model-only checkpoint cannot be resumed")
        state = read_state_dict(path / ckpt.MODEL_FILE)
        ckpt.check_state_dict(self.model, state, path / ckpt.MODEL_FILE)
        self.model.load_state_dict(state)
        tensors = read_state_dict(path / ckpt.STATE_FILE)
        optimizer_from_state(self.optimizer, training["optimizer"], tensors)
        scheduler_from_state(self.scheduler, training["scheduler"])
        rank = self.context.rank
        if training["world_size"] == self.context.world_size:
            prefix = f"rank{rank}."
            rng_from_state(training["rng"][rank], {k[len(prefix):]: v for k, v in tensors.items()
                                                   if k.startswith(prefix)},
                           self.context.device)
        else:
            log.warning("checkpoint of %d processes resumed on %d: random streams restart from "
                        "the seed (the run continues, not bit-for-bit)", training["world_size"],
                        self.context.world_size)
            seed_everything(int(self.config["seed"]) + 1000 * document["step"] + rank)
        self.step, self.epoch = int(document["step"]), int(training["epoch"])
        self.batches_done = int(training["batches_done"])
        self.columns = list(training["history_columns"])
        self.history = tensors["history"].tolist()
        self.val_columns = list(training.get("validation_columns") or [])
        self.validation = tensors["validation"].tolist() if "validation" in tensors else []
        log.info("resumed from %s: step %d, epoch %d, batch %d", path, self.step, self.epoch,
                 self.batches_done)

    def record(self, total: torch.Tensor, parts: dict, temperature: float | None) -> None:
        row = {"step": self.step, "epoch": self.epoch, "loss": total.item(),
               **{k: v.item() for k, v in parts.items()}, "lr": self.scheduler.get_last_lr()[0]}
        if temperature is not None:
            row["temperature"] = temperature
        if not self.columns:
            self.columns = list(row)
        self.history.append([row.get(c, float("nan")) for c in self.columns])

    def record_validation(self, losses: dict[str, float]) -> None:
        row = {"step": self.step, **{f"{VAL_PREFIX}{k}": v for k, v in losses.items()}}
        if not self.val_columns:
            self.val_columns = list(row)
        self.validation.append([row.get(c, float("nan")) for c in self.val_columns])

    def val_losses(self) -> list[float]:
        if not self.validation:
            return []
        column = self.val_columns.index(f"{VAL_PREFIX}loss")
        return [row[column] for row in self.validation]

    def best_step(self) -> int | None:
        """The validated step of the lowest validation loss (None before any)."""
        best, _ = stale_checkpoints(self.val_losses())
        return None if best is None else int(self.validation[best][0])

    def best_loss(self) -> float | None:
        best, _ = stale_checkpoints(self.val_losses())
        return None if best is None else self.val_losses()[best]

    def stop_early(self, patience: int) -> bool:
        """``patience`` (> 0) validations in a row without a lower validation loss."""
        return patience > 0 and stale_checkpoints(self.val_losses())[1] >= patience

    def history_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.history, columns=self.columns)
        for column in ("step", "epoch"):
            if column in frame:
                frame[column] = frame[column].astype(int)
        if self.val_columns and "step" in frame:
            validation = pd.DataFrame(self.validation, columns=self.val_columns)
            validation["step"] = validation["step"].astype(int)
            frame = frame.merge(validation, on="step", how="left")
        return frame


def _prepare_config(config: dict, root: Path, data: list[dict], validation_data: list | None,
                    context: DistContext) -> tuple[dict, Path | None]:
    """The run's config, or the newest checkpoint's when resuming (after checking they agree).

    A checkpoint of other training data (``data``: :func:`~pastflow.models.provenance.
    training_data`) is never resumed: the folder is moved aside and the run starts fresh, so a
    sample moved from train to test, or a rebuilt store, cannot leak into the new model.
    Likewise other validation data: the validation history would not be this run's.
    """
    config = resolve_pretrain_config(config)
    latest = ckpt.latest_checkpoint(root)
    if latest is None:
        return config, None
    document = ckpt.read_checkpoint_config(latest)
    validated_on = (document.get("validation") or {}).get("data")
    if document.get("training_data") != data or validated_on != validation_data:
        change = (describe_change(document.get("training_data"), data)
                  if document.get("training_data") != data else
                  "validation samples " + describe_change(validated_on or [],
                                                          validation_data or []))
        aside = _aside(root)
        if context.is_main:
            root.rename(aside)
            log.warning("the checkpoints in %s were trained on other data (%s): moved to %s; "
                        "training starts fresh", root, change, aside)
        context.barrier()
        return config, None
    ckpt.check_resumable(document["config"], config, latest / ckpt.CONFIG_FILE)
    resumed = document["config"]
    # Operational settings (checkpoint frequency, workers, logging) are this run's.
    for key in ckpt.OPERATIONAL_KEYS:
        section, name = key.split(".")
        resumed[section][name] = config[section][name]
    return resumed, latest


def _aside(root: Path) -> Path:
    """A free name beside ``root`` for a run moved aside (``checkpoints.old-1``, ...)."""
    n = 1
    while root.with_name(f"{root.name}.old-{n}").exists():
        n += 1
    return root.with_name(f"{root.name}.old-{n}")


def pretrain(config: dict, samples: Sequence[tuple[str | Path, str | Path]],
             out_dir: str | Path, *,
             validation: Sequence[tuple[str | Path, str | Path]] = (),
             progress: bool = True) -> TrainResult:
    """Pretrain a :class:`PastModel` on ``samples`` (``(patch store, QC table)`` pairs).

    ``validation``: pairs of the held-out samples the validation loss is computed on (never
    trained on); the model written is then the checkpoint of the lowest validation loss.

    ``config`` is a ``pretrain`` section (merged over the defaults of
    :class:`pastflow.pretrain.settings.PretrainSettings`). Resumes
    from ``out_dir/checkpoints`` when it holds a checkpoint of the same config.

    Raises:
        InputError: bad config or data; a checkpoint in ``out_dir`` from another config.
    """
    out_dir = Path(out_dir)
    root = out_dir / "checkpoints"
    # The device before anything else: a GPU job without CUDA fails in seconds.
    device = resolve_pretrain_config(config)["train"]["device"]
    context = init_distributed(device, setting="pretrain.train.device")
    try:
        return _pretrain(config, samples, validation, out_dir, root, context, progress)
    finally:
        shutdown_distributed(context)


def warn_off_card(encoder: str, mpp: float, image_px: int, store) -> None:
    """Warn when a named foundation model is given crops at another resolution or size than
    its model card's (the workflow cuts its stores at the card's unless the config says
    otherwise, :func:`pastflow.config.patches_for_encoder`): it runs, on pixels it never saw."""
    card = foundation_input(encoder)
    if card is None:
        return
    card_px, card_mpp = card
    if not same_resolution(mpp, card_mpp) or image_px != card_px:
        log.warning("%s was trained on %d px crops at %g um/px; %s gives %d px at %.3g um/px "
                    "(set patches.mpp and patches.patch_um to the card's, or leave them unset)",
                    encoder, card_px, card_mpp, store, image_px, mpp)


def _pretrain(config, samples, validation, out_dir: Path, root: Path, context: DistContext,
              progress: bool) -> TrainResult:
    stores, tables = [s for s, _ in samples], [t for _, t in samples]
    data = training_data(stores, tables)
    val_stores, val_tables = [s for s, _ in validation], [t for _, t in validation]
    validation_data = training_data(val_stores, val_tables) if validation else None
    both = sorted({r["sample"] for r in data} & {r["sample"] for r in validation_data or []})
    if both:
        raise InputError(val_stores[0], f"sample {both[0]!r} is both a training and a "
                                        "validation sample; a val sample is never trained on")
    config, latest = _prepare_config(config, root, data, validation_data, context)
    train = config["train"]
    seed_everything(int(config["seed"]) + context.rank)
    dataset = dataset_from_config(config, stores, tables)
    model_config = config["model"]
    # The resolution contract: the stores must agree, and the model records their mpp.
    mpp, patch_um = training_resolution(stores, dataset.patch_px)
    warn_off_card(model_config["image"]["name"], mpp, dataset.patch_px, stores[0])
    if latest is None:
        model_config.update(genes=dataset.genes, pathways=dataset.pathways,
                            image_px=dataset.patch_px, mpp=mpp, patch_um=patch_um)
    elif dataset.patch_px != model_config["image_px"]:
        raise InputError(stores[0], f"patches of {dataset.patch_px} px; the checkpoint was "
                                    f"trained on {model_config['image_px']} px")
    else:
        check_resolution(model_config, mpp, source=stores[0], model_source=latest)
    holdout = validation_set(config, val_stores, val_tables, dataset) if validation else None
    if context.is_main:
        if holdout is None:
            log.info("no validation samples: training loss only; the model is the last "
                     "checkpoint")
        else:
            log.info("validation: %d cells of %d samples, at every checkpoint; early stopping "
                     "patience %s", holdout.n_cells, len(val_stores),
                     train.get("early_stopping_patience") or "off")
    # Same initial weights on every rank (DDP also broadcasts rank 0's); then per-rank streams.
    torch.manual_seed(int(config["seed"]))
    # When resuming, the checkpoint holds every tensor: no need to read local foundation weights.
    model = PastModel(model_config, load_pretrained=latest is None).to(context.device)
    if context.distributed and context.device.type == "cuda":
        # Batch statistics of the global batch, as on one GPU. (SyncBatchNorm is CUDA-only:
        # CPU ranks keep their own, so a BatchNorm encoder differs slightly there.)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    seed_everything(int(config["seed"]) + context.rank)
    optimizer = torch.optim.AdamW(parameter_groups(model, float(train["weight_decay"])),
                                  lr=float(train["lr"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(
        int(train["warmup_steps"]), int(train["steps"]), float(train["min_lr_ratio"])))
    run = _Run(config, model, optimizer, scheduler, context, data, validation_data)
    if latest is not None:
        run.restore(latest)
    network = (DistributedDataParallel(model, device_ids=[context.device.index]
                                       if context.device.type == "cuda" else None)
               if context.distributed else model)
    if bool(train.get("channels_last")) and context.device.type == "cuda":
        # Weights and inputs alike (the encoder's first layer converts the batch): tensor
        # cores read convolutions in this layout without transposing.
        model.image_encoder.to(memory_format=torch.channels_last)
    if train.get("compile"):
        # The wrapper, not the model: checkpoints keep the model's own parameter names.
        network = torch.compile(network)

    batch_size, steps = int(train["batch_size"]), int(train["steps"])
    sampler = ResumableBatchSampler(dataset.groups(), batch_size, context.world_size,
                                    context.rank, int(config["seed"]))
    if batch_size < context.world_size:
        raise InputError(None, f"config key 'pretrain.train.batch_size': {batch_size} cells "
                               f"per step cannot be split over {context.world_size} processes "
                               "(it is the global batch: at least one cell each)")
    if sampler.batches_per_epoch == 0:
        raise InputError(tables[0], f"{len(dataset)} cells over {context.world_size} processes "
                                    f"make no full batch of {batch_size}")
    if context.is_main:
        log.info("global batch %d cells per step (%s); peak lr %g for it (train.lr, the same "
                 "on any number of processes)", batch_size,
                 f"{context.world_size} processes of ~{batch_size // context.world_size}"
                 if context.distributed else "1 process", float(train["lr"]))
    autocast = torch.autocast(context.device.type, dtype=torch.bfloat16,
                              enabled=context.device.type == "cuda")
    trainable = [p for p in model.parameters() if p.requires_grad]
    preempted, start = False, time.perf_counter()
    # .get: a checkpoint written before validation existed resumes without validation.
    patience = int(train.get("early_stopping_patience") or 0)
    from pastflow.progress import progress_bar

    workers = train.get("num_workers")
    if workers is None:
        workers = default_loader_workers(context.device.type, local_processes())
    if (run.step < steps and train.get("cache_frozen_features", True)
            and encoder_is_frozen(model.image_encoder)):
        # Before the loader forks its workers: they serve the cached features from then on.
        cache_frozen_features(model, dataset, holdout, config, out_dir, context,
                              epoch=run.epoch, batches_done=run.batches_done,
                              steps=steps - run.step, workers=int(workers), progress=progress)
    # One loader for the whole run: its workers persist across epochs (each epoch's
    # augmentation travels with its batches).
    loader = make_loader(dataset, sampler, int(workers), int(config["seed"]),
                         pin_memory=context.device.type == "cuda")
    if context.is_main:
        log.info("%d patch-reading worker processes per process", workers)

    def prepare(batch: dict) -> dict:
        images = prepare_images(batch, dataset.augmentation, dataset.mean, dataset.std)
        if (bool(train.get("channels_last")) and context.device.type == "cuda"
                and "patch" in images):  # not a batch of cached features
            images["patch"] = images["patch"].contiguous(memory_format=torch.channels_last)
        return images

    with StopRequest() as stop, progress_bar(total=steps, initial=run.step, unit="step",
                                             desc="pretrain",
                                             enabled=progress and context.is_main) as bar:
        while run.step < steps and not preempted and not run.stop_early(patience):
            sampler.set_position(run.epoch, run.batches_done)
            dataset.set_epoch(run.epoch)
            for batch in on_device(loader, context.device):
                total, parts, outputs = _train_step(network, model, prepare(batch), optimizer,
                                                    scheduler, autocast, trainable,
                                                    float(train["grad_clip"]))
                run.step += 1
                run.batches_done += 1
                scale = outputs.get("logit_scale")
                run.record(total, parts, None if scale is None else 1.0 / scale.item())
                bar.update(1)
                bar.set_postfix(loss=f"{total.item():.4f}")
                if run.step % int(train["log_every"]) == 0 and context.is_main:
                    log.info("step %d/%d loss %.4f (%s)", run.step, steps, total.item(),
                             ", ".join(f"{k} {v.item():.4f}" for k, v in parts.items()))
                preempted = context.any(stop.requested)
                # Validated at the regular checkpoints only, not at a signal's: a resumed run
                # validates at the steps an uninterrupted one does.
                regular = run.step % int(train["checkpoint_every"]) == 0 or run.step == steps
                if regular and holdout is not None:
                    run.record_validation(validation_loss(model, holdout, context, autocast))
                    if context.is_main:
                        log.info("step %d validation loss %.4f (lowest at step %d)", run.step,
                                 run.val_losses()[-1], run.best_step())
                if preempted or regular:
                    run.save(root)
                    context.barrier()
                if preempted or run.step >= steps or run.stop_early(patience):
                    break
            else:
                run.epoch, run.batches_done = run.epoch + 1, 0

    history = run.history_frame()
    best = run.best_step()
    summary = None
    if holdout is not None and not preempted:
        stopped = run.step < steps
        if context.is_main:
            log.info("%s at step %d; the model is the checkpoint of step %d (validation loss "
                     "%.4f)", "early stopping" if stopped else "trained", run.step, best,
                     run.best_loss())
        if best != run.step:
            model.load_state_dict(read_state_dict(ckpt.checkpoint_dir(root, best) / ckpt.MODEL_FILE))
        summary = {"data": validation_data, "best_step": best,
                   "best_loss": run.best_loss(), "steps_trained": run.step,
                   "stopped_early": stopped}
    if preempted:
        log.warning("stopped by a signal at step %d of %d; checkpoint saved, run again to resume",
                    run.step, steps)
    elif context.is_main:
        _write_outputs(out_dir, model, config, best or run.step, history, dataset.coverage, data,
                       summary)
        log.info("pretrained %d steps in %.1f s -> %s", run.step, time.perf_counter() - start,
                 out_dir)
    context.barrier()
    return TrainResult(model, run.step, preempted, history, config, out_dir, best)


def _train_step(network, model: PastModel, batch: dict, optimizer, scheduler, autocast,
                trainable: list, grad_clip: float):
    """One optimizer step on ``batch`` (on the device, images prepared); returns
    ``(total, parts, outputs)``."""
    model.train()
    with autocast:
        outputs = network(batch)  # through the DDP wrapper, which syncs the gradients
    # fp32: outputs are cast in forward. Across ranks: each cell meets the global batch.
    total, parts = model.compute_loss(outputs, batch, across_ranks=True)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    optimizer.step()
    scheduler.step()
    # Recorded: the global batch's loss (each rank computed its term of it).
    values = mean_over_ranks(torch.stack([total.detach(), *(v.detach() for v in parts.values())]))
    return values[0], dict(zip(parts, values[1:])), outputs


def _write_outputs(out_dir: Path, model: PastModel, config: dict, step: int,
                   history: pd.DataFrame, coverage: pd.DataFrame, data: list[dict],
                   validation: dict | None = None) -> None:
    import matplotlib.pyplot as plt

    ckpt.save_checkpoint(out_dir / "model", model, config, step=step, training_data=data,
                         validation=validation)
    with atomic_path(out_dir / "metrics.tsv") as tmp:
        history.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_dir / "pathway_coverage.tsv") as tmp:
        coverage.to_csv(tmp, sep="\t", index=False)
    figure = plot_training_curves(history, out_dir / "training_curves.png",
                                  best_step=None if validation is None else step,
                                  title=f"pretraining: {config['model']['image']['name']} + "
                                        f"{config['model']['expression']['name']}")
    plt.close(figure)

