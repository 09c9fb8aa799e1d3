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
