"""pastflow.job_cpus: loader workers sized from the CPUs the job was given, not the machine's."""

from __future__ import annotations

import os

from pastflow.job_cpus import job_cpus, loader_workers


def test_slurm_cpus_bound_the_workers_and_the_affinity_bounds_slurm(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert job_cpus() == 8
    assert (loader_workers(1), loader_workers(2), loader_workers(8)) == (7, 3, 0)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")
    assert job_cpus() == 16  # never more than this process may run on
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert job_cpus() == 16 and loader_workers(1) == 8  # at most 8 per device
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert job_cpus() == 1 and loader_workers() == 0  # one CPU: read in the main process


def test_default_workers_feed_gpus_and_leave_the_cpu_to_the_model(monkeypatch):
    from pastflow.job_cpus import default_loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "9")
    assert default_loader_workers("cuda", 1) == 8 and default_loader_workers("cuda", 4) == 2
    assert default_loader_workers("cpu", 1) == 0


def test_pretraining_takes_the_workers_of_its_processes_on_this_node(monkeypatch):
    """Each of torchrun's processes on a node gets its share of the node's CPUs."""
    from pastflow.models.distributed import local_processes

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_processes() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert local_processes() == 4
