"""``make gpu-check``: pretraining, pre-emption, resume and embedding on every visible GPU.

One demo-sized simulated Xenium sample (:func:`gpu_helpers.demo_sample`) is pretrained with
the demo's ``pretrain`` settings through the command the ``pretrain`` rule runs on a GPU
node (:func:`pastflow.rule_commands.pastflow_launcher`: torchrun of this interpreter, one
process per GPU, NCCL between them, bf16 autocast); SIGTERM reaches every process of the run
mid-way, as when Slurm ends a job; the same command run again resumes from the checkpoint to
the last step. The model is then embedded by ``pastflow embed`` on every GPU (bf16), and its
embeddings are checked against the CPU's fp32 ones for the same cells.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from gpu_helpers import GPU_ONLY, REPO, demo_sample, n_gpus

pytestmark = GPU_ONLY

STEPS = 300
SIGNAL_AFTER = 20  # steps logged before the SIGTERM
STEP_LINE = re.compile(rf"step (\d+)/{STEPS} ")


def pretrain_settings(path: Path) -> Path:
    """The demo's ``pretrain`` section, shortened: checkpoints only on the signal and at the
    end, a log line every 10 steps (the test watches them)."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    section = demo["pretrain"]
    section["train"].update(steps=STEPS, warmup_steps=10, checkpoint_every=10_000,
                            log_every=10, num_workers=4)
    path.write_text(yaml.safe_dump({"pretrain": section}))
    return path


def start(command: str, log: Path) -> subprocess.Popen:
    """``command`` in a session of its own, so that one signal reaches all its processes.
    bash runs a one-command line by exec'ing it, so no shell sits between the signal and the
    launcher's exit status."""
    with log.open("w") as out:
        return subprocess.Popen(["bash", "-c", command], cwd=log.parent, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_for_step(process: subprocess.Popen, log: Path, step: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        steps = [int(s) for s in STEP_LINE.findall(log.read_text(errors="replace"))]
        if steps and max(steps) >= step:
            return
        if process.poll() is not None:
            pytest.fail(f"pretraining ended (exit {process.returncode}) before step {step}:\n"
                        f"{tail(log)}")
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"no step {step} within {timeout_s:.0f} s:\n{tail(log)}")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """``(store, output folder, step stopped at)``: the interrupted and resumed pretraining,
    checked."""
    from pastflow.models import checkpoint as ckpt
    from pastflow.models.train import EXIT_PREEMPTED
    from pastflow.rule_commands import pastflow_launcher

    store, table = demo_sample()
    work = tmp_path_factory.mktemp("gpu_pretrain")
    out = work / "pretrain"
    command = (pastflow_launcher(REPO / "workflow", sys.executable, n_gpus())
               + " pretrain " + shlex.join([
                   "--settings", str(pretrain_settings(work / "settings.yaml")),
                   "--stores", str(store), "--tables", str(table), "--out", str(out),
                   "--no-progress"]))

    first = start(command, work / "first.log")
    wait_for_step(first, work / "first.log", SIGNAL_AFTER, timeout_s=300)
    os.killpg(first.pid, signal.SIGTERM)  # every process, as Slurm signals a job
    assert first.wait(timeout=300) == EXIT_PREEMPTED, tail(work / "first.log")
    if n_gpus() > 1:
        assert f"of {n_gpus()} on cuda:0 (nccl)" in (work / "first.log").read_text()
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    assert latest is not None, tail(work / "first.log")
    stopped_at = int(ckpt.read_checkpoint_config(latest)["step"])
    assert SIGNAL_AFTER <= stopped_at < STEPS
    assert not (out / "model" / "model.safetensors").exists()

    second = start(command, work / "second.log")
    assert second.wait(timeout=600) == 0, tail(work / "second.log")
    resumed = re.search(rf"resumed from .+: step {stopped_at},",
                        (work / "second.log").read_text())
    assert resumed, f"did not resume from step {stopped_at}:\n{tail(work / 'second.log')}"
    return store, out, stopped_at


def test_pretraining_on_every_gpu_resumes_after_sigterm_and_learns(pretrained):
    _, out, stopped_at = pretrained
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    # One row per step, each once: the resumed run continued, it did not start over.
    assert metrics["step"].tolist() == list(range(1, STEPS + 1))
    assert np.isfinite(metrics["loss"]).all()
    first, last = metrics["loss"].iloc[:20].mean(), metrics["loss"].iloc[-20:].mean()
    assert last < first, f"loss {first:.3f} -> {last:.3f} (stopped at step {stopped_at})"
    assert (out / "model" / "model.safetensors").is_file()


def test_embedding_on_every_gpu_matches_the_cpu(pretrained, tmp_path):
    """bf16 on the GPUs, fp32 on the CPU: the same cells' embeddings point the same way."""
    import torch

    from pastflow.embed.encode import embed_images
    from pastflow.models.checkpoint import load_checkpoint
    from pastflow.patches.reader import PatchStore
    from pastflow.rule_commands import pastflow_command

    store, out, _ = pretrained
    table_path = tmp_path / "embedded.h5ad"
    command = (pastflow_command(REPO / "workflow", sys.executable) + " embed " + shlex.join(
        ["--model", str(out / "model"), "--store", str(store), "--out", str(table_path),
         "--no-progress"]))
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    table = ad.read_h5ad(table_path)
    meta = table.uns["pastflow_embed"]
    assert list(meta["devices"]) == [f"cuda:{i}" for i in range(n_gpus())]
    gpu = table.obsm["X_image"]
    assert np.isfinite(gpu).all()

    checkpoint = load_checkpoint(out / "model")
    config = checkpoint.config
    patches = PatchStore(store)
    rows = np.flatnonzero(np.asarray(patches.in_slide))[:512]
    cpu = embed_images(checkpoint.model, patches, rows, mean=config["data"]["mean"],
                       std=config["data"]["std"], batch_size=256, device="cpu",
                       progress=False)
    cosine = (gpu[:512] * cpu).sum(1) / (np.linalg.norm(gpu[:512], axis=1)
                                         * np.linalg.norm(cpu, axis=1))
    assert cosine.mean() > 0.995 and cosine.min() > 0.97, (cosine.mean(), cosine.min())
    if n_gpus() > 1:  # one shard per GPU, joined in order: the same as one GPU's pass
        one = embed_images(checkpoint.model, patches, np.flatnonzero(np.asarray(
            patches.in_slide)), mean=config["data"]["mean"], std=config["data"]["std"],
            batch_size=256, device="cuda:0", progress=False)
        assert np.allclose(one, gpu, atol=2e-2), np.abs(one - gpu).max()
    torch.cuda.empty_cache()
