"""``pastflow <stage>``: every stage maps to the module that defines it, and a job imports
only its own stage."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from pastflow.cli import STAGE_MODULES, build_parser


def test_each_stage_is_defined_by_its_module():
    for stage, module in STAGE_MODULES.items():
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_parser(subparsers)
        assert stage in subparsers.choices, f"{module} does not define `pastflow {stage}`"


def test_help_lists_every_stage():
    parser = build_parser(["--help"])
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(STAGE_MODULES) <= set(choices)


# Imported by no `pastflow <stage>` parser: each stage imports these inside its run function.
HEAVY = ("numpy", "pandas", "scipy", "anndata", "scanpy", "spatialdata", "dask", "zarr", "h5py",
         "torch", "timm", "sklearn", "skimage", "lifelines", "sksurv", "matplotlib", "tifffile",
         "openslide", "PIL")


def _package(module: str) -> str:
    return module.rsplit(".", 1)[0]


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_a_stage_imports_only_itself(stage):
    """``pastflow <stage>`` loads its own stage package, the shared top-level modules and no
    other stage's package nor any heavy library (a fresh interpreter, as a job starts)."""
    code = ("import sys; from pastflow.cli import build_parser; "
            f"build_parser([{stage!r}]); print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    own = _package(STAGE_MODULES[stage])
    assert STAGE_MODULES[stage] in loaded
    others = {_package(m) for m in STAGE_MODULES.values()} - {own}
    foreign = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in others)]
    assert not foreign, f"pastflow {stage} imports other stages: {foreign}"
    heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY))
    assert not heavy, f"pastflow {stage} imports {heavy} before its run function"
