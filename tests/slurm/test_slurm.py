"""The small workflow through Snakemake's Slurm executor against a real one-node Slurm.

Runs when root (it installs Debian's slurm-wlm + munge if needed and starts them with
``start_slurm.sh``); skips elsewhere. Checks that every job went through sbatch and that
the GPU rules ran in the ``gpu`` partition with a GPU GRES allocated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
GPU_RULES = {"pretrain", "embed"}


def start_slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("the Slurm test installs and starts slurmctld/slurmd: needs root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no Slurm and no apt-get to install it")
    run = subprocess.run(["bash", str(HERE / "start_slurm.sh")], capture_output=True, text=True,
                         timeout=600)
    if run.returncode != 0:
        pytest.skip(f"could not start a one-node Slurm here: {run.stderr[-2000:]}")


def small_config(repo: Path, workdir: Path) -> None:
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    config["simulate"]["n_cells"] = 400
    if "pretrain" in config:  # keep the GPU-partition stage tiny on the CPU
        config["pretrain"].setdefault("train", {}).update(steps=4, batch_size=16, num_workers=0,
                                                          checkpoint_every=2)
    # The node's GPU is a GRES without a device: the GPU rules run on the CPU, by request
    # (with `auto`, a job given a GPU that finds no CUDA fails: pastflow.models.device).
    config.setdefault("pretrain", {}).setdefault("train", {})["device"] = "cpu"
    config.setdefault("embed", {})["device"] = "cpu"
    (workdir / "config").mkdir()
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    sim = "results/simulated"
    rows = [
        ["xa", "P1", "xenium", f"{sim}/xa/xenium", f"{sim}/xa/xenium/he.ome.tif",
         f"{sim}/xa/xenium/he_imagealignment.csv", "train"],
        ["xb", "P2", "xenium", f"{sim}/xb/xenium", f"{sim}/xb/xenium/he.ome.tif",
         f"{sim}/xb/xenium/he_imagealignment.csv", "test"],
    ]
    header = "sample\tpatient\ttechnology\tdata\timage\talignment\tsplit\n"
    (workdir / "config" / "samples.tsv").write_text(
        header + "".join("\t".join(r) + "\n" for r in rows))


def finished_jobs() -> list[tuple[str, str, str]]:
    """(rule, partition, allocated TRES) of every job Slurm still remembers (MinJobAge)."""
    out = subprocess.run(["squeue", "-h", "-t", "all",
                          "-O", "comment:400,partition:40,tres-per-job:200"],
                         capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        comment, partition, tres = line.split()
        # The executor comments each job with "rule_<name>_wildcards_<...>".
        rule = comment.removeprefix("rule_").split("_wildcards")[0]
        jobs.append((rule, partition, tres))
    return jobs


def shrunk_profile(repo: Path, workdir: Path) -> Path:
    """The project's Slurm profile, partitions and GPU requests untouched, with memory and
    CPUs shrunk to fit this one small node (a command-line --set-resources would replace the
    profile's whole set-resources, partitions included)."""
    profile = yaml.safe_load((repo / "config" / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"].update(mem_mb=2000, runtime=30, cpus_per_task=1)
    for rule in GPU_RULES:
        profile["set-resources"][rule].update(mem_mb=3000, cpus_per_gpu=1)
    profile["jobs"] = 2
    folder = workdir / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def test_workflow_runs_through_slurm(tmp_path, repo_root):
    start_slurm()
    subprocess.run(["scancel", "--user", "root"], check=False)
    small_config(repo_root, tmp_path)
    profile = shrunk_profile(repo_root, tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(Path(sys.executable).parent / "snakemake"),
           "--snakefile", str(repo_root / "workflow" / "Snakefile"),
           "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config" / "config.yaml"),
           "--profile", str(profile),
           "--slurm-no-account", "--slurm-status-command", "squeue",
           "--slurm-init-seconds-before-status-checks", "5"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2400)
    log = run.stdout + run.stderr
    print(log[-4000:])
    assert run.returncode == 0, log[-6000:]

    dry = subprocess.run(cmd[:7] + ["-n"], env=env, capture_output=True, text=True)
    n_submitted = log.count("has been submitted with SLURM jobid")
    jobs = [j for j in finished_jobs() if j[0] != "all"]
    rules = {rule for rule, _, _ in jobs}
    print("jobs seen by squeue:", *sorted(jobs), sep="\n  ")
    # every job of the run went through sbatch (rule `all` is local)
    assert n_submitted == len(jobs) > 0
    assert "Nothing to be done" in dry.stdout + dry.stderr
    assert {"simulate_sample", "ingest", "qc", "patches"} <= rules
    for rule, partition, tres in jobs:
        if rule in GPU_RULES:
            assert partition == "gpu", (rule, partition)
            assert "gpu" in tres, (rule, tres)  # the plugin turned gpu=1 into --gpus=1
        else:
            assert partition == "cpu", (rule, partition)
    assert GPU_RULES <= rules, "a GPU-partition rule did not run"
    # the profile's gpu: 1 made the pretrain rule start torchrun
    pretrain_log = (tmp_path / "results" / "logs" / "pretrain" / "pretrain.log").read_text()
    assert "launched by torchrun" in pretrain_log
