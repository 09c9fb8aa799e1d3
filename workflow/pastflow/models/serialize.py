"""Training state as ``(json, tensors)`` pairs: JSON for the structure, tensors for safetensors.

Optimizer, learning-rate scheduler and random-number generator states are usually pickled
(``torch.save``); pastflow never writes or reads pickles, so each state is split into a
JSON-serialisable dict and a flat ``{name: tensor}`` dict, and rebuilt from the two exactly.
"""

from __future__ import annotations

import random

import numpy as np
import torch

TensorDict = dict[str, torch.Tensor]
CUDA_RNG = "rng.cuda"  # the state of the GPU of the process that saved it


def optimizer_to_state(optimizer: torch.optim.Optimizer, prefix: str = "optimizer."
                       ) -> tuple[dict, TensorDict]:
    """``optimizer.state_dict()`` -> ``(json, tensors)``; tensors named ``{prefix}{param}.{key}``."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                # A copy: the optimizer updates its moments in place.
                tensors[f"{prefix}{param}.{key}"] = value.detach().cpu().clone()
            else:
                scalars.setdefault(str(param), {})[key] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def optimizer_from_state(optimizer: torch.optim.Optimizer, meta: dict, tensors: TensorDict,
                         prefix: str = "optimizer.") -> None:
    """Inverse of :func:`optimizer_to_state`: load the state into ``optimizer``."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            param, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(param), {})[key] = value
    for param, values in meta["scalars"].items():
        state.setdefault(int(param), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def scheduler_to_state(scheduler) -> dict:
    """A LambdaLR-style scheduler's state (its lambdas are code: rebuilt, not stored)."""
    state = scheduler.state_dict()
    state.pop("lr_lambdas", None)
    return state


def scheduler_from_state(scheduler, state: dict) -> None:
    current = scheduler.state_dict()
    current.update(state)
    scheduler.load_state_dict(current)


def rng_to_state(device: torch.device | None = None) -> tuple[dict, TensorDict]:
    """The python, numpy, torch (and ``device``'s CUDA) generator states -> ``(json, tensors)``.

    Only ``device``'s own CUDA generator, never every visible GPU's: reading another GPU's
    state opens a CUDA context on it (memory on a GPU another rank trains on), and a state
    per visible GPU would not fit a node with another GPU count."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, int(position), int(has_gauss), float(cached)]}
    tensors = {"rng.torch": torch.get_rng_state(),
               "rng.numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if device is not None and torch.device(device).type == "cuda":
        tensors[CUDA_RNG] = torch.cuda.get_rng_state(device)
    return meta, tensors


def rng_from_state(meta: dict, tensors: TensorDict, device: torch.device | None = None) -> None:
    """Inverse of :func:`rng_to_state`: restore every generator, the CUDA one onto
    ``device`` (when both it and the saved state are CUDA's; a CPU run's state resumed on a
    GPU leaves the GPU's generator as seeded)."""
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, position, has_gauss, cached = meta["numpy"]
    keys = tensors["rng.numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, position, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    if CUDA_RNG in tensors and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(tensors[CUDA_RNG], device)
