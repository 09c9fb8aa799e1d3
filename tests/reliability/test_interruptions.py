"""Interruptions: a SIGKILL never leaves an output that looks complete, and a killed workflow
resumes to the same results.

- ``pastflow ingest`` and ``pastflow patches`` are SIGKILLed while they write (the moment their
  temporary output appears): the output does not exist afterwards, only hidden debris
  (``.NAME.tmp-*``) that neither Snakemake nor a user takes for it.
- The workflow (two tiny simulated samples, Xenium and H&E-only, data half only) is SIGKILLed
  with its running jobs part-way (as a node failure would: while qc writes, patches beside it),
  resumed with ``snakemake --unlock`` then ``--rerun-incomplete``, and its results compared
  with those of an uninterrupted run: every file but the logs and benchmark files, so the
  same counts tables, cell ids and patch store bytes (the comparison of ``test_determinism``).

Pretraining's own resume (SIGTERM, checkpoint, identical weights) is tested in
``tests/unit/test_models_train.py::test_sigterm_saves_and_the_resumed_run_ends_with_identical_weights``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from test_bad_inputs import he_like
from test_determinism import compare_trees

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
POLL_S = 0.005


def write_large_slide(path: Path, side: int = 4096, tile: int = 256, mpp: float = 0.25) -> Path:
    """A single-level tiled JPEG TIFF (``side`` px at 0.25 um/px, 48 MB of RGB): glass with a
    2 x 2-tile block of nuclei in the middle, so that detection is quick and writing is not."""
    rng = np.random.default_rng(0)
    tissue = [he_like(tile, tile, rng.uniform(0, tile, (60, 2)), 14) for _ in range(4)]
    glass = np.full((tile, tile, 3), 245, np.uint8)
    n, mid = side // tile, side // tile // 2

    def tiles():
        for ty in range(n):
            for tx in range(n):
                inside = mid - 1 <= tx <= mid and mid - 1 <= ty <= mid
                yield tissue[2 * (ty % 2) + tx % 2] if inside else glass

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="jpeg", resolution=(1e4 / mpp, 1e4 / mpp),
                     resolutionunit="CENTIMETER")
    return path


def kill_when_writing(argv: list[str], folder: Path, stem: str, timeout: float = 300) -> int:
    """Start ``argv``; SIGKILL its process group the moment ``folder/.STEM.tmp-*`` appears.

    Returns the exit status (negative: the signal). Fails if the command ends on its own.
    """
    process = subprocess.Popen(argv, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not list(folder.glob(f".{stem}.tmp-*")):
            assert process.poll() is None, f"{argv[:4]} ended before it was killed"
            assert time.monotonic() < deadline, "no temporary output appeared"
            time.sleep(POLL_S)
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def assert_only_debris(folder: Path, output: Path) -> None:
    """``output`` is absent; whatever the killed writer left is hidden, named ``.STEM.*``."""
    assert not output.exists()
    left = [p.name for p in folder.iterdir()]
    assert left, "the kill did not land while writing"
    stem = output.name.split(".")[0]
    assert all(name.startswith(f".{stem}.") for name in left), left


@pytest.fixture(scope="module")
def large_slide(tmp_path_factory) -> Path:
    return write_large_slide(tmp_path_factory.mktemp("large") / "he.tif")


def test_sigkill_during_ingest_leaves_no_output(large_slide, tmp_path):
    out = tmp_path / "ingest" / "s.zarr"
    out.parent.mkdir()
    status = kill_when_writing(
        [sys.executable, "-m", "pastflow", "ingest", "--sample", "s", "--patient", "p",
         "--technology", "he_only", "--image", str(large_slide), "--no-progress", "--out", str(out)],
        out.parent, "s")
    assert status == -signal.SIGKILL
    assert_only_debris(out.parent, out)


def test_sigkill_during_patches_leaves_no_output(large_slide, tmp_path):
    from pastflow.ingest.sample import ingest_sample

    sample = ingest_sample("s", "p", "he_only", tmp_path / "s.zarr", image=large_slide,
                           progress=False)
    out = tmp_path / "patches" / "s.h5"
    out.parent.mkdir()
    settings = tmp_path / "settings.yaml"
    settings.write_text("patches: {workers: 1}\n")
    status = kill_when_writing(
        [sys.executable, "-m", "pastflow", "patches", "--ingested", str(sample), "--out", str(out),
         "--gallery", str(out.parent / "s_gallery.png"), "--settings", str(settings),
         "--no-progress"],
        out.parent, "s")
    assert status == -signal.SIGKILL
    assert_only_debris(out.parent, out)


# --------------------------------------------------------------------------- the workflow

SAMPLES = [("xa", "P1", "xenium"), ("he", "P2", "he_only")]
TARGETS = ["results/patches/xa.h5", "results/patches/he.h5", "results/qc/xa.h5ad"]


def make_workdir(workdir: Path) -> None:
    from pastflow.simulate.settings import SimulateSettings

    """The default config with a tiny simulated cohort of ``SAMPLES``."""
    (workdir / "config").mkdir(parents=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["simulate"]["n_cells"] = 150
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    sim = SimulateSettings().out
    paths = {"xenium": ("{sim}/{s}/xenium", "{sim}/{s}/xenium/he.ome.tif",
                        "{sim}/{s}/xenium/he_imagealignment.csv"),
             "he_only": ("", "{sim}/{s}/he.tif", "")}
    rows = ["\t".join([s, p, t, *(x.format(sim=sim, s=s) for x in paths[t]), "train"])
            for s, p, t in SAMPLES]
    (workdir / "config" / "samples.tsv").write_text(
        "sample\tpatient\ttechnology\tdata\timage\talignment\tsplit\n" + "\n".join(rows) + "\n")


def snakemake_argv(workdir: Path, *args: str, cores: int = 2) -> list[str]:
    return [str(BIN / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(workdir / "config" / "config.yaml"),
            "--cores", str(cores), *args]


def snakemake(workdir: Path, *args: str, cores: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_argv(workdir, *args, cores=cores), env=ENV,
                          capture_output=True, text=True, timeout=900)


def kill_workflow_mid_qc(workdir: Path, timeout: float = 600) -> None:
    """Run the workflow; SIGKILL it and every job it runs once the qc job is writing
    (ingest is done by then; the patches jobs run beside qc on the second core)."""
    process = subprocess.Popen(snakemake_argv(workdir, *TARGETS), env=ENV,
                               start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    qc = workdir / "results" / "qc"
    deadline = time.monotonic() + timeout
    try:
        while not (qc.is_dir() and any(".tmp-" in p.name for p in qc.iterdir())):
            assert process.poll() is None, "the workflow ended before it was killed"
            assert time.monotonic() < deadline, "the qc job did not start"
            time.sleep(POLL_S)
        os.killpg(process.pid, signal.SIGKILL)  # Snakemake and its running jobs: a node failure
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def outputs(workdir: Path) -> Path:
    """A copy of ``workdir/results`` without logs, benchmark files (timings: measurements,
    not outputs) and killed-job debris, for comparison."""
    kept = workdir.parent / f"{workdir.name}-results"
    shutil.copytree(workdir / "results", kept,
                    ignore=lambda folder, names: [n for n in names if ".tmp-" in n
                                                  or n in ("logs", "benchmarks")])
    return kept


@pytest.mark.slow
def test_killed_workflow_resumes_to_the_same_results(tmp_path):
    # Both runs in the same folder (moved aside in between): outputs record absolute paths.
    work, reference = tmp_path / "work", tmp_path / "reference"
    make_workdir(work)
    full = snakemake(work, *TARGETS)
    assert full.returncode == 0, full.stderr[-4000:]
    shutil.move(work, reference)

    make_workdir(work)
    kill_workflow_mid_qc(work)
    qc = work / "results" / "qc"
    assert any(".tmp-" in p.name for p in qc.iterdir()) and not (qc / "xa.h5ad").exists()
    # The killed run's lock stays behind; Snakemake sees the killed qc job's output as missing
    # (and the outputs of a job killed after writing some of them, e.g. a patch store whose
    # gallery was being drawn, as incomplete): they are scheduled again.
    assert snakemake(work, "--unlock").returncode == 0
    dry = snakemake(work, "-n", "--rerun-incomplete", *TARGETS)
    assert dry.returncode == 0 and "results/qc/xa.h5ad" in dry.stdout + dry.stderr

    resumed = snakemake(work, "--rerun-incomplete", *TARGETS)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    names, differ = compare_trees(outputs(reference), outputs(work))
    assert differ == []
    assert {"qc/xa.h5ad", "patches/xa.h5", "patches/he.h5"} <= set(names)
    assert any(n.startswith("ingest/he.zarr/") for n in names)
