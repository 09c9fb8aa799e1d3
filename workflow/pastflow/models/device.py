"""The torch device of a job: ``auto``, ``cuda`` or ``cpu``, and a loud failure when a job
that was given GPUs cannot use them.

A CPU-only torch (``torch.version.cuda is None``) imports and trains fine on a GPU node, only
on the CPU, many times slower; nothing would say so. So a job that was given GPUs (the
rule's ``gpu`` resource, which the launcher passes as ``PASTFLOW_GPUS``; a Slurm GPU
allocation; ``CUDA_VISIBLE_DEVICES``) or asked for ``cuda`` stops at once when it finds no
CUDA device, with one line that says why and how to install a CUDA build of torch.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping

import torch

from pastflow.errors import InputError
from pastflow.launch import GPUS_ENV

DEVICES = ("auto", "cuda", "cpu")
# Slurm's variables of a job or step with GPUs (--gpus, --gres=gpu:N): GPU counts, and the
# lists of allocated GPU indices ("0" is GPU 0, not none).
SLURM_GPU_COUNTS = ("SLURM_GPUS", "SLURM_GPUS_ON_NODE")
SLURM_GPU_LISTS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
INSTALL_HINT = ("install a CUDA build of torch (e.g. `pip install torch==2.13.0 --index-url "
                "https://download.pytorch.org/whl/cu128`) or load the cluster's PyTorch "
                "module; or set the device to cpu (README: A CUDA build of torch)")


def gpus_given(environ: Mapping[str, str] | None = None) -> str | None:
    """Why this process counts as given GPUs (``"PASTFLOW_GPUS=2"``...), or None."""
    environ = os.environ if environ is None else environ
    gpus = environ.get(GPUS_ENV, "").strip()
    if gpus and gpus != "0":
        return f"{GPUS_ENV}={gpus}"
    for name in SLURM_GPU_COUNTS + SLURM_GPU_LISTS:
        value = environ.get(name, "").strip()
        if value and (name in SLURM_GPU_LISTS or value != "0"):
            return f"{name}={value}"
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    # "" and "-1" are the usual ways to hide every GPU.
    if visible is not None and visible.strip() not in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible.strip()}"
    return None


def resolve_device(requested: str | None = "auto", *, local_rank: int = 0,
                   setting: str = "device",
                   environ: Mapping[str, str] | None = None) -> torch.device:
    """The device of process ``local_rank``: ``cpu``; ``cuda`` (GPU ``local_rank``; a
    ``cuda:N`` string is taken as it is); ``auto`` (None too): CUDA when torch sees a GPU,
    else the CPU unless the job was given GPUs (:func:`gpus_given`).

    Raises:
        InputError: naming ``setting``: CUDA asked for or GPUs given, and torch is a CPU
            build or sees no GPU; ``local_rank`` beyond the visible GPUs; an unknown value.
    """
    requested = "auto" if requested is None else str(requested)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", requested):
        raise InputError(setting, f"unknown device {requested!r}; use one of "
                                  f"{', '.join(DEVICES)}")
    kind = requested.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        index = torch.device(requested).index if ":" in requested else local_rank
        count = torch.cuda.device_count()
        if index >= count:
            raise InputError(setting, f"no GPU {index}: {count} visible (one process per "
                                      "GPU, GPUs numbered from 0)")
        return torch.device("cuda", index)
    given = gpus_given(environ)
    if kind == "auto" and given is None:
        return torch.device("cpu")
    why = f"the job was given GPUs ({given})" if kind == "auto" else f"device {requested!r}"
    raise InputError(setting, f"{why} but {no_cuda_reason()}: {INSTALL_HINT}")


def no_cuda_reason() -> str:
    """Why torch sees no GPU: a CPU build, or no device visible to a CUDA build."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (driver "
            "missing or too old, or no device visible)")


def on_device(batches: Iterable[dict], device: torch.device,
              ahead: int = 2) -> Iterator[dict[str, torch.Tensor]]:
    """``batches`` (dicts of tensors) moved to ``device``, in order.

    On CUDA each batch is copied on a side stream while the GPU still computes the ones
    before it (a copy on the compute stream would wait for them: for 224 px uint8 patches,
    about a tenth of a ViT-B/16 forward pass), and the caller runs at most ``ahead`` batches
    ahead of the GPU, so that queued batches cannot pile up in its memory."""
    if device.type != "cuda":
        for batch in batches:
            yield {key: value.to(device) for key, value in batch.items()}
        return
    compute, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    in_flight: deque[torch.cuda.Event] = deque()
    for batch in batches:
        with torch.cuda.stream(side):
            moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        compute.wait_stream(side)
        for tensor in moved.values():
            tensor.record_stream(compute)  # not reused before the compute stream is done
        yield moved
        in_flight.append(compute.record_event())
        if len(in_flight) > ahead:
            in_flight.popleft().synchronize()
