"""``make bench``: peak memory of ``pastflow ingest`` and ``pastflow patches`` on a slide larger
than memory should need: the 40,000 x 40,000 px benchmark slide (4.8 GB of RGB at level 0).

The slide is the cached one of ``test_bench_patches.py`` (``results/bench/cache/``, written by
``pastflow.simulate.cohort.write_benchmark_slide`` on first use). Steps, each a fresh interpreter:

1. ``pastflow ingest --technology he_only``: nucleus detection over the whole slide (tile by
   tile at 0.5 um/px) and the SpatialData zarr with the H&E element (a pyramid level of at most
   8192 px a side) -> ``results/bench/memory/bench.zarr``;
2. ``pastflow patches`` on that sample (32 um patches at 0.5 um/px) ->
   ``results/bench/memory/bench.h5``.

Peak memory is the child's ``VmHWM`` (peak resident set of its own address space), read by the
child when the stage returns. ``ru_maxrss`` from ``wait4`` is recorded beside it: Linux carries
``ru_maxrss`` over from the forking parent across ``exec``, so it can only over-state the stage.
Writes ``results/bench/memory.json`` (``slide_px``, ``n_cells``, ``ingest_peak_rss_mb``,
``patches_peak_rss_mb``, ``ingest_s``, ``patches_s``, ...) and prints it. The issue's bound
(under 2 GB for both stages) is asserted; times are reported, not asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_bench_patches import BENCH, REPO, SIZE_PX, benchmark_slide

OUT = BENCH / "memory"
LIMIT_MB = 2048

# Runs one `pastflow` command in this interpreter and reports the peak resident set of this
# process (VmHWM is reset by exec, unlike ru_maxrss).
STAGE_SCRIPT = """
import sys
from pastflow.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(f"PEAK_KB {peak_kb}", flush=True)
sys.exit(code)
"""


def run_stage(argv: list[str], log: Path) -> dict:
    """Run ``pastflow ARGV`` in a fresh interpreter, output to ``log``.

    Returns ``{seconds, peak_rss_mb (VmHWM), ru_maxrss_mb (wait4), cpu_s (its user + system
    seconds, all threads, from wait4)}``.
    """
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", STAGE_SCRIPT, *argv], cwd=REPO,
                                   stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    text = log.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"pastflow {argv[0]} failed ({process.returncode}):\n{text[-4000:]}")
    peak_kb = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("PEAK_KB"))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "log": text}


@pytest.mark.slow
def test_bench_memory():
    import anndata as ad

    slide, _, writer = benchmark_slide()
    OUT.mkdir(parents=True, exist_ok=True)
    sample, store = OUT / "bench.zarr", OUT / "bench.h5"
    shutil.rmtree(sample, ignore_errors=True)  # start clean (the stages replace them anyway)
    store.unlink(missing_ok=True)

    print(f"\ningest {slide.name} (nucleus detection over {SIZE_PX} x {SIZE_PX} px) ...", flush=True)
    ingest = run_stage(["ingest", "--sample", "bench", "--patient", "bench", "--technology",
                        "he_only", "--image", str(slide), "--no-progress", "--out", str(sample)],
                       OUT / "ingest.log")
    n_cells = ad.read_zarr(sample / "tables" / "table").n_obs
    print(f"patches for {n_cells} cells ...", flush=True)
    patches = run_stage(["patches", "--ingested", str(sample), "--out", str(store), "--no-progress"],
                        OUT / "patches.log")

    result = {
        "slide_px": SIZE_PX,
        "slide": str(slide.relative_to(REPO)),
        "slide_writer": writer,
        "n_cells": int(n_cells),
        "ingest_peak_rss_mb": ingest["peak_rss_mb"],
        "patches_peak_rss_mb": patches["peak_rss_mb"],
        "ingest_s": ingest["seconds"],
        "patches_s": patches["seconds"],
        "ingest_ru_maxrss_mb": ingest["ru_maxrss_mb"],
        "patches_ru_maxrss_mb": patches["ru_maxrss_mb"],
        "limit_mb": LIMIT_MB,
        "zarr_bytes": sum(p.stat().st_size for p in sample.rglob("*") if p.is_file()),
        "store_bytes": store.stat().st_size,
        "cpu_count": os.cpu_count(),
        "peak_measure": "VmHWM of the stage's own process, read as the stage returns",
    }
    (BENCH / "memory.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    assert result["ingest_peak_rss_mb"] < LIMIT_MB, ingest["log"][-2000:]
    assert result["patches_peak_rss_mb"] < LIMIT_MB, patches["log"][-2000:]
