"""``pastflow <stage>``: every stage maps to the module that defines it, and a job imports
only its own stage."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

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


# --- a full, read-only or forbidden disk: one line naming the path, never a traceback ------


def _writable_by_us(folder) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("")
    except OSError:
        return False
    probe.unlink()
    return True


def test_a_read_only_output_folder_is_one_line_naming_the_path(tmp_path, capsys):
    from pastflow.cli import main

    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if _writable_by_us(folder):  # root ignores the mode: /sys refuses it too
            folder = Path("/sys")
        out = folder / "cohort"
        assert main(["simulate", "clinical", "--out", str(out), "--patients", "P1", "P2"]) == 1
    finally:
        (tmp_path / "readonly").chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"pastflow simulate: error: {out}: ")
    assert any(f"({code})" in err for code in ("EACCES", "EROFS", "EPERM"))
    assert not out.exists()


def test_a_full_disk_is_one_line_naming_the_output(tmp_path, capsys, monkeypatch):
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    import pastflow.simulate.clinical
    from pastflow.cli import main

    def write_to_a_full_disk(out, patients, cohort_seed=0):
        with open("/dev/full", "w") as f:
            f.write("patient\tos_time\tos_event\n")
            f.flush()

    monkeypatch.setattr(pastflow.simulate.clinical, "simulate_clinical", write_to_a_full_disk)
    out = tmp_path / "cohort"
    assert main(["simulate", "clinical", "--out", str(out), "--patients", "P1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"pastflow simulate: error: {out}: No space left on device (ENOSPC); free "
                   "space on that disk, or write the results elsewhere (snakemake --directory)")


def test_an_hdf5_write_to_a_full_disk_names_the_file_hdf5_names():
    """h5py puts errno and file in its message only; the line still names them."""
    import h5py
    import numpy as np

    from pastflow.cli import disk_error_message

    with pytest.raises(OSError) as err:
        with h5py.File("/dev/full", "w") as f:
            f.create_dataset("x", data=np.zeros(1000))
    assert disk_error_message(err.value) == (
        "/dev/full: No space left on device (ENOSPC); free space on that disk, or write the "
        "results elsewhere (snakemake --directory)")
    assert disk_error_message(ValueError("not a disk problem")) is None
    assert disk_error_message(FileNotFoundError(2, "No such file", "x")) is None


def test_an_interrupted_stage_is_one_line(capsys, monkeypatch):
    import pastflow.simulate.clinical
    from pastflow.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pastflow.simulate.clinical, "simulate_clinical", interrupted)
    assert main(["simulate", "clinical", "--out", "x", "--patients", "P1"]) == 130
    assert capsys.readouterr().err == "pastflow simulate: interrupted; no output written\n"
