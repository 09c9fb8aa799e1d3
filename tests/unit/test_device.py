"""pastflow.models.device: ``auto | cuda | cpu``; a job that was given GPUs and finds no CUDA
fails at once, in one line that says how to install a CUDA build of torch."""

from __future__ import annotations

import pytest
import torch

from pastflow.cli import main as cli_main
from pastflow.embed.sample import embed_device
from pastflow.errors import InputError
from pastflow.models.device import (GPUS_ENV, SLURM_GPU_COUNTS, SLURM_GPU_LISTS, gpus_given,
                                    resolve_device)

CPU = torch.device("cpu")
# The failures below are what a machine without CUDA does; with a GPU they cannot happen.
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure without CUDA")
# This machine's torch is a CPU build; a CUDA build without a GPU says so instead.
WHY = ("is a CPU-only build (torch.version.cuda is None)" if torch.version.cuda is None
       else "sees no GPU")


@pytest.fixture
def no_gpu_env(monkeypatch):
    """None of the variables that say a job was given GPUs, whatever the test machine sets."""
    for name in (GPUS_ENV, "CUDA_VISIBLE_DEVICES", *SLURM_GPU_COUNTS, *SLURM_GPU_LISTS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_what_counts_as_a_job_given_gpus():
    assert gpus_given({}) is None
    assert gpus_given({GPUS_ENV: "0", "SLURM_GPUS_ON_NODE": "0",
                       "CUDA_VISIBLE_DEVICES": ""}) is None
    assert gpus_given({"CUDA_VISIBLE_DEVICES": "-1"}) is None  # every GPU hidden
    assert gpus_given({GPUS_ENV: "2"}) == "PASTFLOW_GPUS=2"  # the rule's `gpu` resource
    assert gpus_given({"SLURM_JOB_GPUS": "0"}) == "SLURM_JOB_GPUS=0"  # GPU 0, not none
    assert gpus_given({"SLURM_GPUS_ON_NODE": "4"}) == "SLURM_GPUS_ON_NODE=4"
    assert gpus_given({"CUDA_VISIBLE_DEVICES": "0,1"}) == "CUDA_VISIBLE_DEVICES=0,1"


@NO_CUDA
def test_without_cuda_auto_is_the_cpu_unless_the_job_was_given_gpus():
    assert resolve_device("auto", environ={}) == CPU
    assert resolve_device(None, environ={}) == CPU
    assert resolve_device("cpu", environ={GPUS_ENV: "1"}) == CPU  # the CPU, by request
    with pytest.raises(InputError) as raised:
        resolve_device("auto", setting="pretrain.train.device",
                       environ={"SLURM_JOB_GPUS": "0"})
    message = str(raised.value)
    assert message.startswith("pretrain.train.device: the job was given GPUs (SLURM_JOB_GPUS=0) "
                              f"but torch {torch.__version__} {WHY}: install a CUDA build")
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in message
    assert "\n" not in message
    with pytest.raises(InputError, match=rf"^device: device 'cuda' but torch .*{WHY[:12]}"):
        resolve_device("cuda", environ={})
    with pytest.raises(InputError, match=r"unknown device 'gpu'; use one of auto, cuda, cpu"):
        resolve_device("gpu", environ={})


@NO_CUDA
def test_a_pretrain_job_given_gpus_without_cuda_stops_before_reading_its_data(
        tmp_path, no_gpu_env, capsys):
    no_gpu_env.setenv(GPUS_ENV, "1")  # as the pretrain rule's launcher sets it on GPUs
    settings = tmp_path / "settings.yaml"
    settings.write_text("pretrain: {}\n")
    out = tmp_path / "out"
    argv = ["pretrain", "--settings", str(settings), "--stores", str(tmp_path / "absent.h5"),
            "--tables", str(tmp_path / "absent.h5ad"), "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(
        "pastflow pretrain: error: pretrain.train.device: the job was given GPUs "
        "(PASTFLOW_GPUS=1) but torch"), error
    assert not out.exists()
    # device: cpu passes the check (and then fails on the absent data, as it should).
    settings.write_text("pretrain: {train: {device: cpu}}\n")
    assert cli_main(argv) == 2
    assert "absent.h5" in capsys.readouterr().err


@NO_CUDA
def test_embed_device_is_checked_the_same_way(no_gpu_env):
    assert embed_device(None) == CPU and embed_device("auto") == CPU
    assert embed_device("meta") == torch.device("meta")  # any other torch device, as given
    no_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(InputError, match=r"^embed\.device: the job was given GPUs "
                                         r"\(CUDA_VISIBLE_DEVICES=0\)"):
        embed_device(None)
    with pytest.raises(InputError, match=r"^embed\.device: device 'cuda:1' but torch"):
        embed_device("cuda:1")
    assert embed_device("cpu") == CPU
