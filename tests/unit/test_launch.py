"""pastflow.launch (torchrun that keeps the resumable exit status 75), the stop signals of
the trainer, and the Slurm profile's warning before the time limit.

The real torchrun run, signalled and resumed, is
``test_models_train.py::test_a_signal_to_a_torchrun_run_exits_75_and_resumes_on_one_process``.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import yaml

from pastflow import launch
from pastflow.models.train import EXIT_PREEMPTED, STOP_SIGNALS, StopRequest
from pastflow.rule_commands import pastflow_launcher


def stand_in(monkeypatch, code: str) -> None:
    """torchrun replaced by ``python -c code`` (what matters here is what the launcher does
    with its exit status and signals; the real torchrun is tested in test_models_train)."""
    monkeypatch.setattr(launch, "torchrun_command", lambda nproc, args: [sys.executable, "-c",
                                                                          code])


def test_the_launcher_keeps_a_resumable_exit_and_passes_the_others_on(monkeypatch):
    # A worker stopped by a signal touched the marker; torchrun then says 1.
    stand_in(monkeypatch, "import os, sys; open(os.environ['PASTFLOW_PREEMPTED_FILE'], 'w'); "
                          "sys.exit(1)")
    assert launch.main(["--nproc-per-node=2", "pretrain"]) == EXIT_PREEMPTED
    stand_in(monkeypatch, "import sys; sys.exit(1)")  # a crash stays a crash
    assert launch.main(["--nproc-per-node=2", "pretrain"]) == 1
    stand_in(monkeypatch, "pass")
    assert launch.main(["--nproc-per-node=2", "pretrain"]) == 0
    stand_in(monkeypatch, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert launch.main(["--nproc-per-node=2", "pretrain"]) == 128 + signal.SIGKILL
    # torchrun starts with SIGUSR1 ignored (it has no handler and would die of it); the
    # launcher's own handlers are back afterwards.
    stand_in(monkeypatch, "import signal, sys; "
                          "sys.exit(signal.getsignal(signal.SIGUSR1) != signal.SIG_IGN)")
    assert launch.main(["--nproc-per-node=1", "pretrain"]) == 0
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    with pytest.raises(SystemExit):
        launch.main(["--nproc-per-node=0", "pretrain"])


def test_the_launcher_finds_torchruns_workers_to_forward_signals_to():
    """torchrun starts each worker in a session of its own: a signal to the launcher's process
    group misses them, so the launcher finds them as torchrun's children and signals them."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                              start_new_session=True)
    try:
        assert worker.pid in launch.children(os.getpid())
        launch.signal_session(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=30) == -signal.SIGTERM
    finally:
        worker.kill()
    launch.signal_session(worker.pid, signal.SIGTERM)  # gone: nothing to do


def test_the_pretrain_rule_on_gpus_runs_the_launcher_and_says_it_has_gpus():
    command = pastflow_launcher("/x/workflow", "/venv/bin/python", gpus=4)
    assert command.endswith("PASTFLOW_GPUS=4 /venv/bin/python -m pastflow.launch "
                            "--nproc-per-node=4")
    assert launch.torchrun_command(4, ["pretrain", "--out", "o"])[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "pastflow",
        "pretrain", "--out", "o"]


def test_the_trainer_stops_on_each_stop_signal():
    for stop_signal in STOP_SIGNALS:
        with StopRequest() as stop:
            os.kill(os.getpid(), stop_signal)
            deadline = time.monotonic() + 5
            while not stop.requested and time.monotonic() < deadline:
                time.sleep(0.01)
        assert stop.requested, stop_signal.name


def survives(command: list[str], stop_signal: signal.Signals) -> bool:
    process = subprocess.Popen(command)
    time.sleep(0.2)
    process.send_signal(stop_signal)
    return process.wait(timeout=30) == 0


def test_the_slurm_profile_warns_the_trainer_with_a_signal_the_rest_of_the_job_ignores(
        repo_root):
    """The profile asks Slurm for a signal minutes before the time limit. Slurm sends it to
    every process of the job step: Snakemake's job process and its shell must live through
    it (as they do through SIGURG, and not through SIGUSR1), the trainer checkpoints on it."""
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    profile = yaml.safe_load((repo_root / "config/profiles/slurm/config.yaml").read_text())
    # Snakemake reads a profile's resource values as Python expressions: a quoted string.
    extra = ast.literal_eval(profile["set-resources"]["pretrain"]["slurm_extra"])
    found = re.fullmatch(r"--signal=(R:)?([A-Z0-9]+)@(\d+)", extra)  # no B: (batch shell only)
    assert found, extra
    warning = signal.Signals[f"SIG{found[2]}"]
    assert warning in STOP_SIGNALS and int(found[3]) >= 300
    validate_slurm_extra(SimpleNamespace(resources=SimpleNamespace(slurm_extra=extra)))
    python = [sys.executable, "-c", "import time; time.sleep(0.6)"]  # Snakemake, torchrun
    shell = ["bash", "-c", "sleep 0.6; true"]
    assert survives(python, warning) and survives(shell, warning)
    assert not survives(python, signal.SIGUSR1)
