"""DAG construction for a 1,000-sample cohort (target: under 30 s).

Writes ``results/bench/dag.json`` with ``n_samples``, ``n_jobs``, ``dag_s``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

N_SAMPLES = 1000
TECHNOLOGIES = ["xenium", "visium", "visium_hd", "he_only"]


def write_cohort(repo: Path, workdir: Path) -> None:
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    (workdir / "config").mkdir(parents=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    sim = "results/simulated"
    lines = ["sample\tpatient\ttechnology\tdata\timage\talignment\tsplit"]
    for i in range(N_SAMPLES):
        s, tech = f"s{i:04d}", TECHNOLOGIES[i % len(TECHNOLOGIES)]
        paths = {
            "xenium": (f"{sim}/{s}/xenium", f"{sim}/{s}/xenium/he.ome.tif",
                       f"{sim}/{s}/xenium/he_imagealignment.csv"),
            "visium": (f"{sim}/{s}/outs", f"{sim}/{s}/he.tif", ""),
            "visium_hd": (f"{sim}/{s}/outs", f"{sim}/{s}/he.tif", ""),
            "he_only": ("", f"{sim}/{s}/he.tif", ""),
        }[tech]
        split = "test" if i % 5 == 0 else "train"
        lines.append("\t".join([s, f"P{i // 2:04d}", tech, *paths, split]))
    (workdir / "config" / "samples.tsv").write_text("\n".join(lines) + "\n")


def test_dag_of_1000_samples(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    write_cohort(repo, tmp_path)
    snakemake = Path(sys.executable).parent / "snakemake"
    cmd = [str(snakemake), "--snakefile", str(repo / "workflow" / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config" / "config.yaml"),
           "--dry-run", "--quiet", "rules", "--cores", "1"]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    dag_s = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-3000:]
    total = re.search(r"^total\s+(\d+)", run.stdout + run.stderr, re.MULTILINE)
    assert total, (run.stdout + run.stderr)[-3000:]
    n_jobs = int(total.group(1))
    assert n_jobs > 3 * N_SAMPLES  # simulate, ingest, patches (+ qc, model stages) per sample
    result = {"n_samples": N_SAMPLES, "n_jobs": n_jobs, "dag_s": round(dag_s, 2),
              "target_s": 30, "note": "wall time of `snakemake --dry-run` (parse + DAG + job list)"}
    out = repo / "results" / "bench" / "dag.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nDAG of {N_SAMPLES} samples: {n_jobs} jobs in {dag_s:.1f} s (target < 30 s) -> {out}")
