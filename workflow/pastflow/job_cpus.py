"""The CPUs this job may use, and the data-loader workers that fit in them.

Sized from what the scheduler gave the job, not from ``os.cpu_count()``: on a shared GPU node
that counts every core of the machine, and a job given 8 CPUs would start 100 workers.
"""

from __future__ import annotations

import os


def job_cpus() -> int:
    """CPUs of this job: ``SLURM_CPUS_PER_TASK`` when Slurm set it, never more than the CPUs
    this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where the platform
    has no affinity)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        available = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return min(int(slurm), available)
    return max(1, available)


def loader_workers(devices: int = 1, most: int = 8) -> int:
    """DataLoader worker processes per device: the job's CPUs but one (the main process, which
    drives the devices), shared by ``devices``, at most ``most`` each (reading patches from a
    memory-mapped store is cheap: a few workers feed one GPU)."""
    return max(0, min(most, (job_cpus() - 1) // max(1, devices)))


def default_loader_workers(device_type: str, devices: int = 1) -> int:
    """Workers per device when a config leaves them to pastflow (``num_workers: null``): on
    GPUs, :func:`loader_workers` (the GPU waits for data otherwise); on the CPU none, since
    the model needs every core there and reading patches is a small part of the time."""
    return loader_workers(devices) if device_type == "cuda" else 0
