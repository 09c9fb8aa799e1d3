"""What the ``make gpu-check`` tests share: the skip without CUDA, the visible GPUs, and the
demo-like sample they train and embed.

Imported by name (pytest puts ``tests/gpu`` on ``sys.path``); not a test module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "results" / "bench"

CUDA = torch.cuda.is_available()
NO_CUDA = (f"no CUDA device: torch {torch.__version__} "
           f"({'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'}) "
           "sees none; make gpu-check needs an NVIDIA GPU and a CUDA build of torch "
           "(README: 'Checking a GPU machine')")
# Every test of tests/gpu: `pytestmark = GPU_ONLY`.
GPU_ONLY = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason=NO_CUDA)]


def n_gpus() -> int:
    return torch.cuda.device_count() if CUDA else 0


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if CUDA else "none"


def demo_sample() -> tuple[Path, Path]:
    """``(patch store, QC table)`` of one simulated Xenium sample of the demo's size, made by
    the pastflow commands (simulate, ingest, qc, patches) and cached with ``make bench``'s
    (``results/bench/cache/train/``): the builder lives in the training benchmark."""
    sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
    try:
        from test_bench_train import real_sample
    finally:
        sys.path.remove(str(REPO / "tests" / "benchmarks"))
    return real_sample()
