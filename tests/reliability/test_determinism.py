"""Determinism: the same config and seed give the same outputs on CPU.

The data half (simulate -> ingest -> qc -> patches, for a Xenium, a Visium and an H&E-only
sample) runs twice, each time in a fresh interpreter with a different ``PYTHONHASHSEED`` (so
that nothing may depend on the iteration order of sets or dicts of strings), in the same
folder (so that the absolute paths the outputs record are the same), moved aside after each
run. Then every file of the two trees is compared byte for byte.

Files that legitimately differ, and what is compared instead (see :func:`compare_trees`):

- OME-TIFFs written by tifffile (the simulated post-Xenium H&E and DAPI image): the OME-XML
  carries a random ``UUID`` per file. Compared: every page's pixels and tags, the XML with
  the UUID masked.
- Zip archives (the simulated Xenium ``cells.zarr.zip``): each member records the time it was
  written. Compared: member names and bytes.

Everything else (the SpatialData zarrs with their chunks and metadata, the QC AnnData and its
PNG figures, the patch stores, the vendor files) is byte-identical. (Patch galleries are left
out here to save time; ``test_interruptions`` compares them between two workflow runs.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

RUN_SCRIPT = """
import json, sys
from pathlib import Path
from pastflow.cli import main
from pastflow.ingest.sample import ingest_sample
from pastflow.simulate.cohort import simulate_sample

root = Path(sys.argv[1])
settings = root.parent / f"{root.name}-settings.yaml"  # beside the outputs compared
settings.write_text("qc: {min_cells: 1}")
for seed, technology in enumerate(["xenium", "visium", "he_only"]):
    sample = f"s_{technology}"
    folder = simulate_sample(root / "simulated", sample, "P1", technology, n_cells=60, seed=seed,
                             progress=False)
    sheet = json.loads((folder / "truth" / "sample.json").read_text())["sheet"]
    paths = {k: str(folder / v) if v else "" for k, v in sheet.items()}
    table = root / "ingest" / f"{sample}.zarr"
    ingest_sample(sample, "P1", technology, table, progress=False, **paths)
    if technology != "he_only":
        assert main(["qc", "--ingested", str(table), "--out", str(root / "qc" / f"{sample}.h5ad"),
                     "--fig-distributions", str(root / "qc" / f"{sample}_distributions.png"),
                     "--fig-spatial", str(root / "qc" / f"{sample}_spatial.png"),
                     "--settings", str(settings)]) == 0
    assert main(["patches", "--ingested", str(table), "--out", str(root / "patches" / f"{sample}.h5"),
                 "--no-progress"]) == 0
"""

_OME_UUID = re.compile(rb'UUID="urn:uuid:[0-9a-fA-F-]+"')


def run_pipeline(root: Path, hash_seed: int) -> None:
    """The data half into ``root``, in a fresh interpreter with ``PYTHONHASHSEED=hash_seed``."""
    run = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(root)], capture_output=True,
                         text=True, timeout=600,
                         env=dict(os.environ, PYTHONHASHSEED=str(hash_seed)))
    assert run.returncode == 0, run.stderr[-4000:]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def same_ome_tiff(a: Path, b: Path) -> bool:
    """Pixels and tags of every page equal; the OME-XML equal once its UUIDs are masked."""
    with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
        if len(ta.pages) != len(tb.pages):
            return False
        for pa, pb in zip(ta.pages, tb.pages):
            tags_a = {t.code: t.value for t in pa.tags.values() if t.code not in (270, 273, 324)}
            tags_b = {t.code: t.value for t in pb.tags.values() if t.code not in (270, 273, 324)}
            description_a = _OME_UUID.sub(b"UUID", pa.description.encode())
            description_b = _OME_UUID.sub(b"UUID", pb.description.encode())
            if (str(tags_a) != str(tags_b) or description_a != description_b
                    or not np.array_equal(pa.asarray(), pb.asarray())):
                return False
        return True


def same_zip_members(a: Path, b: Path) -> bool:
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        return za.namelist() == zb.namelist() and all(za.read(n) == zb.read(n) for n in za.namelist())


def compare_trees(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """``(files compared, files that differ beyond the documented exceptions)``."""
    names = files_under(a)
    assert names == files_under(b), "the two runs wrote different files"
    differ = []
    for name in names:
        fa, fb = a / name, b / name
        if fa.read_bytes() == fb.read_bytes():
            continue
        if name.endswith((".ome.tif", ".ome.tiff")) and same_ome_tiff(fa, fb):
            continue  # random OME UUIDs
        if name.endswith(".zip") and same_zip_members(fa, fb):
            continue  # member timestamps
        differ.append(name)
    return names, differ


@pytest.mark.slow  # the data half, twice (~30 s)
def test_same_config_and_seed_give_the_same_outputs(tmp_path):
    work, first, second = tmp_path / "run", tmp_path / "first", tmp_path / "second"
    run_pipeline(work, hash_seed=1)
    shutil.move(work, first)
    run_pipeline(work, hash_seed=2)
    shutil.move(work, second)
    names, differ = compare_trees(first, second)
    assert differ == []
    # The comparison covered every stage's outputs.
    assert {n.split("/")[0] for n in names} == {"simulated", "ingest", "qc", "patches"}
    assert sum(n.startswith("patches/") and n.endswith(".h5") for n in names) == 3
    assert sum(n.startswith("qc/") and n.endswith(".h5ad") for n in names) == 2
    assert sum(n.startswith("ingest/") and "/images/he/" in n for n in names) > 3  # H&E chunks
    assert any(n.endswith(".ome.tif") for n in names) and any(n.endswith(".zip") for n in names)


def test_the_comparison_catches_a_changed_pixel_but_not_a_new_uuid(tmp_path):
    """The exceptions are narrow: OME-TIFFs differing only in their UUIDs pass, one changed
    pixel of an OME-TIFF or of a patch store's image does not."""
    import h5py

    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tifffile.imwrite(tmp_path / name / "he.ome.tif", image, photometric="rgb", ome=True)
        with h5py.File(tmp_path / name / "s.h5", "w") as f:
            f.create_dataset("image", data=np.zeros((3, 8, 8), np.uint8))
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "he.ome.tif").read_bytes() != (b / "he.ome.tif").read_bytes()  # the UUIDs
    assert compare_trees(a, b)[1] == []
    with h5py.File(b / "s.h5", "r+") as f:
        f["image"][0, 4, 4] = 1
    changed = image.copy()
    changed[5, 5, 0] ^= 1
    tifffile.imwrite(b / "he.ome.tif", changed, photometric="rgb", ome=True)
    assert compare_trees(a, b)[1] == ["he.ome.tif", "s.h5"]
