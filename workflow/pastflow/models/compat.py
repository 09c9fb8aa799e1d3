"""Import timm and peft on machines where torchvision's compiled ops cannot load.

timm imports torchvision (and peft imports transformers, which imports it too), and torchvision's ``__init__`` registers "fake" (meta) kernels for
its C++ ops ``torchvision::nms`` and ``torchvision::qnms``. Those registrations need the op
schemas, which normally come from torchvision's ``_C`` extension. PyPI's torchvision 0.28 is
built against CUDA; beside the CPU build of torch 2.13 its ``_C`` does not load, the schemas
are missing and ``import torchvision`` fails with "operator torchvision::nms does not exist".

:func:`import_timm` declares the two schemas itself, only when ``_C`` cannot load, and then
imports timm (or peft). Nothing in pastflow calls ``nms``: the declared ops have no kernel, so a call
would raise, which is the honest outcome. On a CUDA machine ``_C`` loads and nothing is
declared. Every pastflow module that uses timm or peft gets them from :func:`import_timm` and
:func:`import_peft`.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys
from types import ModuleType

log = logging.getLogger(__name__)

# The ops torchvision/_meta_registrations.py registers fakes for at import time, with the
# schemas its _C extension declares (torchvision/csrc/ops/nms.cpp, quantized/cpu/qnms_kernel.cpp).
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared_library = None  # keeps the torch.library.Library alive: dropping it undeclares the ops


def _torchvision_ops_loadable() -> bool:
    """True when torchvision's ``_C`` extension loads (or torchvision is absent or imported)."""
    import torch

    if "torchvision" in sys.modules or hasattr(torch.ops.torchvision, "nms"):
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: timm's own import error will say so
    package_dir = spec.submodule_search_locations[0]
    libraries = glob.glob(os.path.join(package_dir, "_C.*")) + glob.glob(
        os.path.join(package_dir, "_C*.so"))
    for library in libraries:
        try:
            torch.ops.load_library(library)
            return True
        except (OSError, ImportError, RuntimeError):
            continue
    return False


def declare_torchvision_ops() -> bool:
    """Declare ``torchvision::nms``/``qnms`` when the real ops are missing; True if declared."""
    global _declared_library
    if _declared_library is not None or _torchvision_ops_loadable():
        return False
    import torch

    library = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_SCHEMAS:
        library.define(schema)
    _declared_library = library
    log.debug("torchvision's C++ ops did not load (CUDA build beside CPU torch); declared "
              "their schemas so that timm can import torchvision")
    return True


def import_timm() -> ModuleType:
    """``import timm``, after :func:`declare_torchvision_ops` when needed."""
    declare_torchvision_ops()
    import timm

    return timm


def import_peft() -> ModuleType:
    """``import peft``, after :func:`declare_torchvision_ops` when needed."""
    declare_torchvision_ops()
    import peft

    return peft
