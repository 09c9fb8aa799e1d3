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


def rng_to_state() -> tuple[dict, TensorDict]:
    """The python, numpy, torch (and CUDA) generator states -> ``(json, tensors)``."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, int(position), int(has_gauss), float(cached)]}
    tensors = {"rng.torch": torch.get_rng_state(),
               "rng.numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return meta, tensors


def rng_from_state(meta: dict, tensors: TensorDict) -> None:
    """Inverse of :func:`rng_to_state`: restore every generator."""
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, position, has_gauss, cached = meta["numpy"]
    keys = tensors["rng.numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, position, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
