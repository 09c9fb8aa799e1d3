"""Read model weights from local files without ever running code from them.

A ``.safetensors`` file holds tensors only. A ``.pt``/``.pth``/``.bin``/``.ckpt`` file is a
pickle, which can hold code that runs on load; it is read with
``torch.load(weights_only=True)``, which unpickles only tensors and plain containers, and a
file that needs more is refused with :class:`pastflow.errors.InputError` ("holds pickled code").
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

from pastflow.errors import InputError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Training frameworks nest the weights under one of these keys (timm/DINO/Lightning exports).
_NESTING_KEYS = ("state_dict", "model", "teacher", "student", "module", "model_state_dict")


def read_state_dict(path: str | Path) -> dict:
    """The ``{name: tensor}`` state dict in ``path`` (on CPU).

    Unwraps one level of nesting under a key such as ``"state_dict"`` or ``"model"`` and the
    ``"module."`` prefix that DistributedDataParallel adds to every name.

    Raises:
        InputError: missing file, unknown suffix, unreadable file, a pickle that holds more
            than tensors ("holds pickled code"), or contents that are not a state dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path, device="cpu")
        except (SafetensorError, OSError) as err:
            raise InputError(path, f"not a readable safetensors file ({err})") from None
    elif suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # weights_only refused a global: the file would run code (a pickled module,
            # optimizer object, custom class...). Never fall back to a full unpickle.
            raise InputError(path, "holds pickled code (objects other than tensors), refused; "
                                   "save a plain state dict or safetensors instead "
                                   f"[{_refused_global(err)}]") from None
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise InputError(path, f"not a readable torch weights file ({err})") from None
        state = _unnest(state)
    else:
        raise InputError(path, f"unknown weights format {suffix!r}; expected .safetensors or one "
                               f"of {', '.join(PICKLE_SUFFIXES)}")
    if not isinstance(state, dict) or not state:
        raise InputError(path, "holds no state dict (expected a mapping of names to tensors)")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise InputError(path, f"is not a plain state dict: {len(not_tensors)} entries are not "
                               f"tensors (first: {not_tensors[0]!r})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    log.info("%s: %d tensors", path, len(state))
    return state


def _refused_global(err: Exception) -> str:
    """What torch's weights-only unpickler refused, in a few words (its message is a page)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it needs {found.group(1)}"
    first_line = re.sub(r"\x1b\[[0-9;]*m", "", text.strip().splitlines()[0]) if text.strip() else ""
    return first_line[:200]


def _unnest(state):
    import torch

    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in _NESTING_KEYS:
            if isinstance(state.get(key), dict):
                return state[key]
    return state
