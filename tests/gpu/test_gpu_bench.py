"""``make gpu-check``: pastflow's training step and embedding against the bare timm encoder,
for ViT-B/16 and ViT-L/16 at 224 px (random weights: ``pretrained=False``, nothing is
downloaded), on one GPU. Writes ``results/bench/gpu.json``, one record per encoder:

- ``train_img_per_s``: images/s of pastflow's own training step
  (:func:`pastflow.models.train._train_step`: the full :class:`PastModel` with the ViT as its
  image encoder, every head and loss of the default settings, gradient clipping, AdamW,
  scheduler, bf16 autocast), on a batch already on the GPU, the loss read back every step as
  the training loop does; ``train_step_ratio``: that over the bare ``timm.create_model(arch)``
  forward + backward + AdamW step at the same batch and autocast;
- ``embed_img_per_s``: images/s of :func:`pastflow.embed.encode.embed_images` over a 224 px
  patch store (reads by loader workers, pinned copies, normalisation, encoder, projection),
  once running (:func:`pastflow_embed_per_s`);
  ``embed_ratio``: that over the bare encoder's forward pass on a batch already on the GPU;
- ``peak_mem_gb``: peak GPU memory of pastflow's training steps (``max_memory_allocated``).

Every throughput is the best of ``REPEATS``, pastflow and bare interleaved. The targets
(both ratios >= 0.9) are asserted on an H100 or H200 and recorded elsewhere.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from gpu_helpers import BENCH, GPU_ONLY, gpu_name, n_gpus

pytestmark = GPU_ONLY

# timm name -> (training batch, cells embedded): ViT-L's batch halved to fit the activations
# of both models, its cells cut to keep the check short.
ENCODERS = {
    "vit_base_patch16_224": (128, 65_536),
    "vit_large_patch16_224": (64, 20_480),
}
IMAGE_PX = 224
EMBED_BATCH = 512
TRAIN_STEPS, WARM_STEPS, REPEATS = 20, 5, 2
TARGET = 0.9
TARGET_GPUS = ("H100", "H200")
N_GENES, N_PATHWAYS = 2000, 13  # data.n_genes' default and the default GMT's 13 gene sets
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def store_224(tmp_path_factory):
    """A patch store of 65,536 cells (overlapping 224 px patches, 12 px apart) of a noise
    slide at 0.5 um/px, through :func:`pastflow.patches.store.build_patch_store`."""
    import tifffile

    from pastflow.patches.store import build_patch_store

    work = tmp_path_factory.mktemp("store_224")
    side, spacing, border = 256, 12, 128
    size = border * 2 + side * spacing
    rng = np.random.default_rng(0)
    slide = work / "slide.tif"
    tifffile.imwrite(slide, rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                     photometric="rgb", tile=(256, 256), resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)
    xy = border + grid * spacing + spacing / 2
    store = work / "cells.h5"
    build_patch_store(slide, [f"c{i}" for i in range(len(xy))], xy.astype(float), store,
                      target_mpp=0.5, patch_px=IMAGE_PX, slide_mpp=0.5, progress=False)
    return store


def model_config(arch: str) -> dict:
    """The default ``pretrain`` settings with ``arch`` as the image encoder (how a config
    names any timm ViT), its genes and pathways filled in as pretraining does."""
    from pastflow.pretrain.settings import resolve_pretrain_config

    config = resolve_pretrain_config({"model": {"image": {"name": "timm",
                                                          "kwargs": {"arch": arch}}}})
    config["model"].update(genes=[f"G{i}" for i in range(N_GENES)],
                           pathways=[f"P{i}" for i in range(N_PATHWAYS)], image_px=IMAGE_PX)
    return config


def training_batch(batch: int, device: torch.device) -> dict:
    """Every tensor a training batch holds, on ``device`` (the dataset's keys and dtypes)."""
    generator = torch.Generator(device).manual_seed(0)
    counts = torch.poisson(torch.full((batch, N_GENES), 2.0, device=device),
                           generator=generator)
    from pastflow.models.augment import Augmentation, draw_parameters

    draws = np.stack([draw_parameters(Augmentation(), np.random.default_rng(i))
                      for i in range(batch)])
    return {"patch": torch.randint(0, 256, (batch, 3, IMAGE_PX, IMAGE_PX), device=device,
                                   dtype=torch.uint8, generator=generator),
            "augment": torch.from_numpy(draws).to(device),
            "expression": torch.log1p(counts), "counts": counts,
            "gene_mask": torch.ones(batch, N_GENES, dtype=torch.bool, device=device),
            "library_size": counts.sum(1),
            "pathways": torch.randn(batch, N_PATHWAYS, device=device, generator=generator),
            "pathway_mask": torch.ones(batch, N_PATHWAYS, dtype=torch.bool, device=device)}


def timed(step, steps: int) -> float:
    """Seconds per call of ``step`` over ``steps`` calls, after ``WARM_STEPS`` untimed."""
    for _ in range(WARM_STEPS):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def pastflow_train_step(config: dict, batch: int, device: torch.device):
    """A closure running one :func:`_train_step` of the full model, as the loop calls it."""
    from pastflow.models.augment import Augmentation, prepare_images
    from pastflow.models.model import PastModel
    from pastflow.models.train import _train_step, cosine_schedule, parameter_groups

    torch.manual_seed(0)
    model = PastModel(config["model"], load_pretrained=False).to(device)
    train = config["train"]
    optimizer = torch.optim.AdamW(parameter_groups(model, float(train["weight_decay"])),
                                  lr=float(train["lr"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(
        int(train["warmup_steps"]), 10_000, float(train["min_lr_ratio"])))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    data = training_batch(batch, device)

    augmentation = Augmentation(**config["data"]["augment"])
    mean, std = config["data"]["mean"], config["data"]["std"]  # resolved: the encoder's

    def step():
        # As the loop: the batch's stain jitter, flips and normalisation on the GPU, then
        # the step.
        images = prepare_images(data, augmentation, mean, std)
        total, _, _ = _train_step(model, model, images, optimizer, scheduler, autocast,
                                  trainable, float(train["grad_clip"]))
        total.item()  # the loop records the loss every step

    return step, model


def bare_train_step(arch: str, batch: int, device: torch.device):
    from pastflow.models.compat import import_timm

    torch.manual_seed(0)
    backbone = import_timm().create_model(arch, pretrained=False, num_classes=0).to(device)
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, IMAGE_PX, IMAGE_PX, device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = backbone(x).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, backbone


def pastflow_embed_per_s(model, config: dict, store, n_cells: int, device) -> float:
    """Images/s of :func:`embed_images` once running: the difference of two passes (``n_cells``
    and a fifth of them), so that starting the loader's workers cancels out, as on a whole
    slide of 10^5 to 10^6 cells."""
    from pastflow.embed.encode import embed_images
    from pastflow.patches.reader import PatchStore

    patches = PatchStore(store)
    rows = np.flatnonzero(np.asarray(patches.in_slide))[:n_cells]
    kwargs = dict(mean=config["data"]["mean"], std=config["data"]["std"],
                  batch_size=EMBED_BATCH, device=device, progress=False)
    embed_images(model, patches, rows[:2 * EMBED_BATCH], **kwargs)  # warm-up
    seconds = {}
    for n in (len(rows) // 5, len(rows)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        embed_images(model, patches, rows[:n], **kwargs)
        torch.cuda.synchronize()
        seconds[n] = time.perf_counter() - start
    (short, short_s), (long, long_s) = seconds.items()
    return (long - short) / (long_s - short_s)


def bare_embed_per_s(arch: str, n_cells: int, device: torch.device) -> float:
    from pastflow.models.compat import import_timm

    backbone = import_timm().create_model(arch, pretrained=False, num_classes=0)
    backbone = backbone.to(device).eval()
    x = torch.randn(EMBED_BATCH, 3, IMAGE_PX, IMAGE_PX, device=device)
    batches = max(1, n_cells // EMBED_BATCH)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        seconds = timed(lambda: backbone(x), batches)
    return EMBED_BATCH / seconds


@pytest.mark.parametrize("arch", list(ENCODERS))
def test_pastflow_keeps_pace_with_the_bare_encoder(arch, store_224):
    from pastflow.embed.encode import random_model
    from pastflow.patches.reader import PatchStore

    device = torch.device("cuda", 0)
    batch, n_cells = ENCODERS[arch]
    config = model_config(arch)
    n_cells = min(n_cells, int(np.asarray(PatchStore(store_224).in_slide).sum()))
    runs = {"train": [], "bare_train": [], "embed": [], "bare_embed": []}
    pastflow_step, model = pastflow_train_step(config, batch, device)
    torch.cuda.reset_peak_memory_stats(device)
    runs["train"].append(batch / timed(pastflow_step, TRAIN_STEPS))
    peak = torch.cuda.max_memory_allocated(device) / 1e9  # alone on the GPU so far
    bare_step, backbone = bare_train_step(arch, batch, device)
    runs["bare_train"].append(batch / timed(bare_step, TRAIN_STEPS))
    for _ in range(REPEATS - 1):
        runs["train"].append(batch / timed(pastflow_step, TRAIN_STEPS))
        runs["bare_train"].append(batch / timed(bare_step, TRAIN_STEPS))
    del pastflow_step, model, bare_step, backbone
    torch.cuda.empty_cache()
    model = random_model(config, seed=0)
    for _ in range(REPEATS):
        runs["embed"].append(pastflow_embed_per_s(model, config, store_224, n_cells, device))
        runs["bare_embed"].append(bare_embed_per_s(arch, n_cells, device))
    train, bare_train, embed, bare_embed = (max(runs[k]) for k in runs)
    record = {
        "gpu_name": gpu_name(), "n_gpus": 1, "gpus_visible": n_gpus(),
        "train_img_per_s": round(train, 1), "train_step_ratio": round(train / bare_train, 3),
        "embed_img_per_s": round(embed, 1), "embed_ratio": round(embed / bare_embed, 3),
        "peak_mem_gb": round(peak, 2),
        "bare_train_img_per_s": round(bare_train, 1), "bare_embed_img_per_s": round(bare_embed, 1),
        "train_batch": batch, "embed_batch": EMBED_BATCH, "image_px": IMAGE_PX,
        "embed_cells": n_cells, "precision": "bf16 autocast",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "repeats": {k: [round(v, 1) for v in values] for k, values in runs.items()},
    }
    if n_gpus() > 1:  # embed also splits the cells over every GPU
        devices = [torch.device("cuda", i) for i in range(n_gpus())]
        record["embed_img_per_s_all_gpus"] = round(
            pastflow_embed_per_s(model, config, store_224, n_cells, devices), 1)
    RESULTS[arch] = record
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "gpu.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    print(f"\n{arch} on {record['gpu_name']}: train {train:.0f} img/s (bare {bare_train:.0f}, "
          f"ratio {record['train_step_ratio']:.2f}), embed {embed:.0f} img/s (bare "
          f"{bare_embed:.0f}, ratio {record['embed_ratio']:.2f}), peak {peak:.1f} GB")
    if any(name in record["gpu_name"] for name in TARGET_GPUS):
        assert record["train_step_ratio"] >= TARGET, record
        assert record["embed_ratio"] >= TARGET, record
