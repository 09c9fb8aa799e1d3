"""``make bench``: pastflow's training and embedding throughput against the bare encoder.

Measured in one run, on the device torch sees (the GPU when there is one, else the CPU):

- ``pastflow_train_per_s``: cells per second of full pastflow training steps: :func:`pretrain`
  streaming a real patch store and QC table through the dataset, loader, augmentation,
  every encoder, head and loss, optimiser step and scheduler. Measured as the difference of
  two runs (``STEPS_SHORT`` and ``STEPS_LONG`` steps), so start-up, data set-up and the final
  checkpoint cancel out;
- ``bare_train_per_s``: the same timm encoder (architecture, options, input size, batch) as a
  bare ``forward -> mean square -> backward -> AdamW`` on random tensors already on the
  device (bf16 autocast on CUDA, as pastflow);
- ``pastflow_embed_per_s``: cells per second of :func:`pastflow.embed.encode.embed_images` over
  every cell of the store (patch reads, normalisation, encoder, projection);
- ``bare_infer_per_s``: the bare encoder's inference on random tensors of the same batch;
- ``mfu``: model FLOPs per training step (counted by ``torch.utils.flop_counter`` on one full
  pastflow forward + backward) x steps per second / the device's peak FLOP/s. On CPU the peak is
  *assumed*: cores x clock x 32 fp32 FLOP per cycle (two 256-bit FMA pipes, AVX2 / Zen 4);
  the JSON says so.

The model configuration is the ``pretrain:`` section of ``config/config.yaml`` (environment
``PASTFLOW_BENCH_BATCH`` overrides the batch size). The patch store is one simulated Xenium
sample taken through the real stages (simulate, ingest, qc, patches), cached under
``results/bench/cache/train/``. Every throughput is the best of ``REPEATS`` measurements, the
four interleaved, so that a burst of load from another process on a shared machine hits
one repeat rather than one side of a ratio. Writes ``results/bench/train.json`` and prints the
ratios (target on an H100: both at least 0.9). Timings are reported, not asserted.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "results" / "bench"
CACHE = BENCH / "cache" / "train"
N_CELLS = int(os.environ.get("PASTFLOW_BENCH_TRAIN_CELLS", 2500))
ON_GPU = torch.cuda.is_available()
STEPS_SHORT, STEPS_LONG = (20, 220) if ON_GPU else (5, 35)
BARE_STEPS = 200 if ON_GPU else 30
REPEATS = int(os.environ.get("PASTFLOW_BENCH_REPEATS", 2))
# bf16 dense tensor-core peaks (NVIDIA datasheets, without sparsity).
GPU_PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362.05e12}
CPU_FLOP_PER_CYCLE = 32  # fp32, two 256-bit FMA pipes per core


def bench_config() -> dict:
    """The demo's pretrain section, resolved over the defaults."""
    from pastflow.pretrain.settings import resolve_pretrain_config

    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = resolve_pretrain_config(demo.get("pretrain"))
    train = config["train"]
    if "PASTFLOW_BENCH_BATCH" in os.environ:
        train["batch_size"] = int(os.environ["PASTFLOW_BENCH_BATCH"])
    train.update(checkpoint_every=10_000, keep_checkpoints=1, log_every=10_000, warmup_steps=1)
    return config


def real_sample() -> tuple[Path, Path]:
    """``(patch store, QC table)`` of one simulated Xenium sample, built once through the
    pastflow commands and cached."""
    from pastflow.cli import main

    store, table = CACHE / f"xenium_{N_CELLS}.h5", CACHE / f"xenium_{N_CELLS}.h5ad"
    if store.is_file() and table.is_file():
        return store, table
    sim, zarr = CACHE / "simulated", CACHE / f"xenium_{N_CELLS}.zarr"
    bundle = sim / "bench" / "xenium"
    CACHE.mkdir(parents=True, exist_ok=True)
    settings = CACHE / "simulate.yaml"
    settings.write_text(f"simulate: {{n_cells: {N_CELLS}}}\n")
    steps = [
        ["simulate", "sample", "--out", str(sim), "--sample", "bench", "--patient", "B",
         "--technology", "xenium", "--settings", str(settings), "--no-progress"],
        ["ingest", "--sample", "bench", "--patient", "B", "--technology", "xenium",
         "--data", str(bundle), "--image", str(bundle / "he.ome.tif"),
         "--alignment", str(bundle / "he_imagealignment.csv"), "--out", str(zarr),
         "--no-progress"],
        ["qc", "--ingested", str(zarr), "--out", str(table), "--fig-distributions",
         str(CACHE / "qc_distributions.png"), "--fig-spatial", str(CACHE / "qc_spatial.png")],
        ["patches", "--ingested", str(zarr), "--out", str(store), "--no-progress"],  # 32 um at 0.5
    ]
    for argv in steps:
        if not (argv[0] == "simulate" and bundle.is_dir()):
            assert main(argv) == 0, argv
    return store, table


def synchronize() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def pastflow_train_per_s(config: dict, store: Path, table: Path, out: Path) -> tuple[float, dict]:
    """Cells/s of full pretraining steps, from two runs of different lengths."""
    from pastflow.models.train import pretrain

    seconds = {}
    # Untimed first: one-off costs (lazy imports, first reads of the store) must not fall in
    # the short run only, or the difference would under-count them.
    warm = copy.deepcopy(config)
    warm["train"]["steps"] = 2
    pretrain(warm, [(str(store), str(table))], out / "warm_up", progress=False)
    for steps in (STEPS_SHORT, STEPS_LONG):
        run = copy.deepcopy(config)
        run["train"]["steps"] = steps
        synchronize()
        start = time.perf_counter()
        result = pretrain(run, [(str(store), str(table))], out / f"steps_{steps}", progress=False)
        synchronize()
        seconds[steps] = time.perf_counter() - start
    batch = int(config["train"]["batch_size"])
    per_s = (STEPS_LONG - STEPS_SHORT) * batch / (seconds[STEPS_LONG] - seconds[STEPS_SHORT])
    return per_s, {"resolved": result.config, "seconds": seconds}


def bare_backbone(model_config: dict):
    """The pastflow image encoder's timm backbone, rebuilt bare from its registry entry."""
    from pastflow.models.registry import build_image_encoder

    encoder = build_image_encoder(model_config["image"]["name"],
                                  image_px=int(model_config["image_px"]),
                                  **model_config["image"]["kwargs"])
    return encoder.backbone


def bare_train_per_s(model_config: dict, batch: int, device: torch.device) -> float:
    torch.manual_seed(0)
    backbone = bare_backbone(model_config).to(device).train()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-3)
    px = int(model_config["image_px"])
    x = torch.randn(batch, 3, px, px, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = backbone(x).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(BARE_STEPS):
        step()
    synchronize()
    return BARE_STEPS * batch / (time.perf_counter() - start)


@torch.inference_mode()
def bare_infer_per_s(model_config: dict, batch: int, n_cells: int, device: torch.device) -> float:
    backbone = bare_backbone(model_config).to(device).eval()
    px = int(model_config["image_px"])
    x = torch.randn(batch, 3, px, px, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        backbone(x)
        synchronize()
        start = time.perf_counter()
        for _ in range(max(1, n_cells // batch)):
            backbone(x)
        synchronize()
    return max(1, n_cells // batch) * batch / (time.perf_counter() - start)


def pastflow_embed_per_s(config: dict, store: Path, batch: int, device: torch.device) -> float:
    from pastflow.embed.encode import embed_images, random_model
    from pastflow.patches.reader import PatchStore

    model = random_model(config, seed=0).to(device)
    patches = PatchStore(store)
    rows = np.flatnonzero(np.asarray(patches.in_slide))
    kwargs = dict(mean=config["data"]["mean"], std=config["data"]["std"], batch_size=batch,
                  device=device, progress=False)
    embed_images(model, patches, rows[:batch], **kwargs)  # warm-up
    synchronize()
    start = time.perf_counter()
    embed_images(model, patches, rows, **kwargs)
    synchronize()
    return len(rows) / (time.perf_counter() - start)


def flops_per_step(config: dict, store: Path, table: Path, device: torch.device) -> float:
    """FLOPs of one full pastflow training step's forward + backward (one batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pastflow.models.augment import prepare_images
    from pastflow.models.data import dataset_from_config
    from pastflow.models.model import PastModel

    dataset = dataset_from_config(config, [str(store)], [str(table)])
    batch_size = int(config["train"]["batch_size"])
    batch = {k: v.to(device) for k, v in dataset.batch(range(batch_size)).items()}
    batch = prepare_images(batch, dataset.augmentation, dataset.mean, dataset.std)
    model = PastModel(config["model"]).to(device).train()
    with FlopCounterMode(display=False) as counter:
        total, _ = model.loss(batch)
        total.backward()
    return float(counter.get_total_flops())


def device_peak(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak, f"{name}: bf16 dense peak {peak / 1e12:.1f} TFLOP/s (datasheet)"
        return float("nan"), f"{name}: peak unknown"
    mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("cpu MHz"))
    cores = torch.get_num_threads()
    peak = cores * mhz * 1e6 * CPU_FLOP_PER_CYCLE
    return peak, (f"ASSUMED CPU peak: {cores} threads x {mhz:.0f} MHz x {CPU_FLOP_PER_CYCLE} "
                  f"fp32 FLOP/cycle = {peak / 1e9:.0f} GFLOP/s")


@pytest.mark.slow
def test_training_and_embedding_throughput(tmp_path):
    from pastflow.patches.reader import PatchStore

    device = torch.device("cuda" if ON_GPU else "cpu")
    store, table = real_sample()
    config = bench_config()
    batch = int(config["train"]["batch_size"])

    embed_batch = 1024 if ON_GPU else 256
    runs = {"pastflow_train": [], "bare_train": [], "pastflow_embed": [], "bare_infer": []}
    for repeat in range(REPEATS):
        train_per_s, run = pastflow_train_per_s(config, store, table, tmp_path / str(repeat))
        resolved = run["resolved"]
        model_config = resolved["model"]
        runs["pastflow_train"].append(train_per_s)
        runs["bare_train"].append(bare_train_per_s(model_config, batch, device))
        runs["pastflow_embed"].append(pastflow_embed_per_s(resolved, store, embed_batch, device))
        runs["bare_infer"].append(bare_infer_per_s(
            model_config, embed_batch, (40 if ON_GPU else 4) * embed_batch, device))
    train_per_s, bare_train, embed, bare_infer = (max(runs[k]) for k in runs)
    flops = flops_per_step(resolved, store, table, device)
    peak, peak_source = device_peak(device)
    mfu = flops * (train_per_s / batch) / peak
    image = model_config["image"]
    result = {
        "device": torch.cuda.get_device_name(device) if ON_GPU else
        f"cpu ({torch.get_num_threads()} threads)",
        "encoder": f"{image['name']} {json.dumps(image['kwargs'], sort_keys=True)}",
        "batch_size": batch,
        "image_px": int(model_config["image_px"]),
        "pastflow_train_per_s": round(train_per_s, 1),
        "bare_train_per_s": round(bare_train, 1),
        "train_ratio": round(train_per_s / bare_train, 3),
        "pastflow_embed_per_s": round(embed, 1),
        "bare_infer_per_s": round(bare_infer, 1),
        "embed_ratio": round(embed / bare_infer, 3),
        "embed_batch_size": embed_batch,
        "flops_per_train_step": flops,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu": round(mfu, 4),
        "train_steps_timed": STEPS_LONG - STEPS_SHORT,
        "repeats": {k: [round(v, 1) for v in values] for k, values in runs.items()},
        "last_pretrain_run_seconds": {str(k): round(v, 2) for k, v in run["seconds"].items()},
        "store_cells": int(np.asarray(PatchStore(store).in_slide).sum()),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "note": "pastflow train = full steps from the patch store (dataset, augmentation, all "
                "encoders, heads, losses); bare = the timm backbone alone on random tensors",
    }
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['device']}, {result['encoder']} at {result['image_px']} px, batch {batch}:"
          f"\n  train: pastflow {train_per_s:.0f} cells/s vs bare {bare_train:.0f} -> ratio "
          f"{result['train_ratio']:.2f} (target on an H100 >= 0.9)"
          f"\n  embed: pastflow {embed:.0f} cells/s vs bare {bare_infer:.0f} -> ratio "
          f"{result['embed_ratio']:.2f} (target on an H100 >= 0.9)"
          f"\n  MFU {mfu:.2%} ({flops / 1e9:.2f} GFLOP per step; {peak_source})"
          f"\n  -> {BENCH / 'train.json'}")
