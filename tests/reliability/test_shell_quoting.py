"""No user-supplied value reaches a shell as code, and rules run Snakemake's own interpreter.

A small real-format cohort (simulated once, then read back with ``simulate.enabled: false``)
goes through the whole workflow, every rule, with the checkout, the working directory, the
data folder, the sample folders, the file names and the config paths (``samples``,
``data_root``, ``stain.panel``, ``survival.clinical``) full of shell metacharacters: quotes,
``$(...)``, backticks, ``;``, spaces and, in the data folder, a newline. Nothing may run (no
``PWNED`` file appears anywhere). A plain-named run of the same cohort, up to pretraining
(to stay within the time of a test), must give the same tables, patch stores and training
curve. Both runs use a plain ``PATH`` without the venv (the README's commands as written,
venv not activated).

Unit level: every placeholder of every rule's shell line is quoted (``:q``), except the
fragments built, quoted, by ``pastflow.rule_commands``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pastflow.rule_commands import (list_option, option, options, pastflow_command,
                                    pastflow_launcher)

BIN = Path(sys.executable).parent
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"
# Every way a shell could be made to run `touch PWNED`, in one name. (No braces: Snakemake
# reads `{x}` in a path as a wildcard.)
HOSTILE = "O'Brien \"lab\" $(touch PWNED) `touch PWNED`; touch PWNED; $HOME *"
# Params that are shell fragments, built and quoted by pastflow.rule_commands.
FRAGMENTS = {"params.pastflow", "params.launch", "params.table", "params.optional",
             "params.truth", "params.validation", "params.cores"}

SAMPLES = [  # sample, patient, technology, split: path columns filled and empty
    ("xa", "P1", "xenium", "train"),
    ("xb", "P2", "xenium", "train"),
    ("xc", "P3", "xenium", "test"),
    ("he", "P4", "he_only", "test"),
]

SIMULATE = """
import json, sys
from pathlib import Path
from pastflow.simulate.clinical import simulate_clinical
from pastflow.simulate.cohort import simulate_sample

out = Path(sys.argv[1])
for seed, spec in enumerate(sys.argv[2:]):
    sample, patient, technology = spec.split(":")
    folder = simulate_sample(out, sample, patient, technology, n_cells=80, seed=seed,
                             progress=False)
    sheet = json.loads((folder / "truth" / "sample.json").read_text())["sheet"]
    (folder / "sheet.json").write_text(json.dumps(sheet))
simulate_clinical(out, sorted({s.split(":")[1] for s in sys.argv[2:]}))
"""


def shell_lines(repo: Path) -> dict[str, str]:
    """Each rule's shell string, from the rule files (adjacent literals joined)."""
    found = {}
    for path in sorted((repo / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        for match in re.finditer(r"rule (\w+):(.*?)(?=\n\s*rule \w+:|\Z)", text, re.DOTALL):
            shell = re.search(r"\n\s*shell:\n((?:\s+\".*\"\n?)+)", match.group(2))
            if shell:
                found[match.group(1)] = "".join(re.findall(r"\"(.*)\"", shell.group(1)))
    return found


def test_every_shell_placeholder_is_quoted(repo_root):
    lines = shell_lines(repo_root)
    assert {"ingest", "pretrain", "evaluate", "summary", "survival_features"} <= set(lines)
    unquoted = {
        rule: fields for rule, line in lines.items()
        if (fields := [f for f in re.findall(r"(?<!\{)\{([^{}]+)\}", line)
                       if not f.endswith(":q") and f not in FRAGMENTS])}
    assert unquoted == {}
    # No rule pastes a config value into its line: settings travel in the settings files.
    assert not any("config[" in line or "SETTINGS" in line for line in lines.values())


def test_command_fragments_quote_what_they_carry(tmp_path):
    # A stand-in interpreter in a hostile folder, printing what it was given.
    folder = tmp_path / HOSTILE
    folder.mkdir()
    python = folder / "python"
    python.write_text('#!/bin/sh\nprintf "%s\\n" "$PYTHONPATH" "$@"\n')
    python.chmod(0o755)
    checkout = f"/x/{HOSTILE}/workflow"
    for command, args in (
            (pastflow_command(checkout, str(python)), ["-m", "pastflow"]),
            (pastflow_launcher(checkout, str(python), gpus=2),
             ["-m", "pastflow.launch", "--nproc-per-node=2"])):
        run = subprocess.run(["bash", "-c", f"{command} {option('--x', HOSTILE)}"],
                             cwd=tmp_path, env={"PATH": PLAIN_PATH, "PYTHONPATH": "/old"},
                             capture_output=True, text=True, check=True)
        assert run.stdout.splitlines() == [f"{checkout}:/old", *args, "--x", HOSTILE]
    assert list(tmp_path.rglob("PWNED")) == []
    assert pastflow_launcher(checkout, "p", gpus=0) == pastflow_command(checkout, "p")
    assert option("--table", "") == "" and option("--table", None) == ""
    assert options([("--a", "x y"), ("--b", []), ("--c", "$(z)")]) == "--a 'x y' --c '$(z)'"
    assert list_option("--v", ["a b", "c"]) == "--v 'a b' c" and list_option("--v", []) == ""


def copy_checkout(repo: Path, to: Path) -> Path:
    for part in ("workflow", "config", "resources", "envs"):
        shutil.copytree(repo / part, to / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return to


def write_run(workdir: Path, data: Path, clinical: Path, panel: Path, sheet_name: str,
              names: dict[str, dict[str, str]]) -> Path:
    """A working directory with a config (simulate off) and a sheet of paths under ``data``."""
    (workdir / "config").mkdir(parents=True)
    config = {
        "samples": f"config/{sheet_name}",
        "data_root": str(data),
        "simulate": {"enabled": False},
        "qc": {"min_cells": 1},
        "pretrain": {"train": {"steps": 4, "batch_size": 16, "warmup_steps": 1,
                               "checkpoint_every": 2}},
        "stain": {"panel": str(panel)},
        "survival": {"clinical": str(clinical), "min_patients": 4, "folds": 2, "repeats": 1,
                     "inner_folds": 2, "bootstrap": 100, "mil_epochs": 0},
    }
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    rows = ["sample\tpatient\ttechnology\tdata\timage\talignment\tsplit"]
    for sample, patient, technology, split in SAMPLES:
        paths = names[sample]
        rows.append("\t".join([sample, patient, technology, paths["data"], paths["image"],
                               paths["alignment"], split]))
    (workdir / "config" / sheet_name).write_text("\n".join(rows) + "\n")
    return workdir


def lay_out_data(simulated: Path, data: Path, folder: str, rename: str) -> dict:
    """The simulated samples copied under ``data/<folder>-<sample>``, the H&E and alignment
    files renamed to ``<rename>`` + their name; the sheet's relative paths."""
    import json

    names = {}
    for sample, *_ in SAMPLES:
        source, target = simulated / sample, data / f"{folder}-{sample}"
        shutil.copytree(source, target)
        sheet = json.loads((source / "sheet.json").read_text())
        paths = {}
        for column in ("data", "image", "alignment"):
            value = sheet[column]
            if value and column != "data":
                renamed = Path(value).with_name(rename + Path(value).name)
                (target / value).rename(target / renamed)
                value = str(renamed)
            paths[column] = f"{target.name}/{value}".rstrip("/.") if value else ""
        names[sample] = paths
    return names


def snakemake(checkout: Path, workdir: Path, *targets: str) -> subprocess.CompletedProcess:
    # A plain shell: the venv is not on PATH, Snakemake is started by its full path.
    env = {"PATH": PLAIN_PATH, "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    cmd = [str(BIN / "snakemake"), *targets, "--snakefile",
           str(checkout / "workflow" / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(workdir / "config" / "config.yaml")]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=900)


def same_patch_store(a: Path, b: Path) -> bool:
    """Every dataset and attribute equal, but the slide path the store records."""
    import h5py

    with h5py.File(a) as fa, h5py.File(b) as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        attrs_a = {k: str(v) for k, v in fa.attrs.items() if k != "source_slide"}
        attrs_b = {k: str(v) for k, v in fb.attrs.items() if k != "source_slide"}
        return names_a == names_b and attrs_a == attrs_b and all(
            np.array_equal(fa[n][()], fb[n][()]) for n in names_a
            if isinstance(fa[n], h5py.Dataset))


def same_table(a: Path, b: Path) -> bool:
    import anndata as ad

    ta, tb = ad.read_h5ad(a), ad.read_h5ad(b)
    xa, xb = (t.X.toarray() if hasattr(t.X, "toarray") else t.X for t in (ta, tb))
    return (list(ta.obs_names) == list(tb.obs_names) and list(ta.var_names) == list(tb.var_names)
            and np.array_equal(xa, xb))


# The plain run's targets: the data half and pretraining.
PLAIN_TARGETS = ["results/pretrain/metrics.tsv",
                 *[f"results/patches/{s}.h5" for s, *_ in SAMPLES],
                 *[f"results/qc/{s}.h5ad" for s, _, t, _ in SAMPLES if t != "he_only"]]


@pytest.mark.slow
def test_hostile_names_run_nothing_and_give_the_plain_results(tmp_path, repo_root):
    simulated = tmp_path / "simulated"
    run = subprocess.run([sys.executable, "-c", SIMULATE, str(simulated),
                          *[f"{s}:{p}:{t}" for s, p, t, _ in SAMPLES]],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    runs = {}
    for kind, name in (("hostile", HOSTILE), ("plain", "plain")):
        base = tmp_path / kind / name
        # The data folder may hold a newline too (a sheet row cannot, data_root can).
        data = base / ("data\nroot" if kind == "hostile" else "data")
        names = lay_out_data(simulated, data, name if kind == "hostile" else "s",
                             rename=f"{name} " if kind == "hostile" else "")
        clinical = base / f"{name} clinical.tsv"
        shutil.copy(simulated / "clinical.tsv", clinical)
        panel = base / f"{name} panel.yaml"
        shutil.copy(repo_root / "resources" / "ihc_panel.yaml", panel)
        checkout = copy_checkout(repo_root, base / f"checkout {name}")
        workdir = write_run(base / f"work {name}", data, clinical, panel,
                            f"{name} samples.tsv", names)
        result = snakemake(checkout, workdir, *(PLAIN_TARGETS if kind == "plain" else []))
        assert result.returncode == 0, result.stderr[-6000:]
        runs[kind] = workdir / "results"

    planted = [p for root in (tmp_path, repo_root, Path.cwd(), Path.home())
               for p in root.glob("**/PWNED" if root == tmp_path else "PWNED")]
    assert planted == []
    plain, hostile = runs["plain"], runs["hostile"]
    # The hostile run went through every stage.
    for output in ("predict/metrics.tsv", "predict/lopo.tsv", "stain/hscore_agreement.tsv",
                   "survival/cindex.tsv", "survival/km.png", "summary.json",
                   "stain/he/thumbnails.jpg"):
        assert (hostile / output).is_file(), output
    for target in PLAIN_TARGETS:
        a, b = plain / target.removeprefix("results/"), hostile / target.removeprefix("results/")
        if target.endswith(".tsv"):
            pd.testing.assert_frame_equal(pd.read_csv(a, sep="\t"), pd.read_csv(b, sep="\t"),
                                          obj=target)
        else:
            assert (same_patch_store if target.endswith(".h5") else same_table)(a, b), target


@pytest.mark.slow
def test_a_failing_job_shows_the_end_of_its_log(tmp_path, repo_root):
    """A slide that is not an image fails inside its ingest job: the console, not only the
    job's log, says why (Snakemake itself reports only a non-zero exit)."""
    workdir = tmp_path / "work"
    (workdir / "config").mkdir(parents=True)
    (workdir / "slide.tif").write_bytes(b"not a TIFF at all\n" * 100)
    (workdir / "config" / "samples.tsv").write_text(
        "sample\tpatient\ttechnology\tdata\timage\talignment\tsplit\n"
        "bad\tP1\the_only\t\tslide.tif\t\ttest\n")
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(
        {"samples": "config/samples.tsv", "data_root": str(workdir),
         "simulate": {"enabled": False}}))
    result = snakemake(repo_root, workdir)
    assert result.returncode != 0
    log = (workdir / "results" / "logs" / "ingest" / "bad.log").read_text().splitlines()
    console = result.stdout + result.stderr
    # The job ran the venv's interpreter though PATH has no venv: it got as far as reading.
    assert "No module named" not in "\n".join(log) and "slide.tif" in "\n".join(log)
    assert "last 20 lines of the failed job's log results/logs/ingest/bad.log" in console
    assert all(f"    {line}" in console for line in log[-20:] if line.strip())
