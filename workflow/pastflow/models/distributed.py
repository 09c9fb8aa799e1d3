"""torch.distributed set-up for runs launched by torchrun (``WORLD_SIZE > 1``), and the
single-process fallback: the same calls work in both."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any (all ranks must call it together)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def init_distributed() -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``):
    NCCL on GPUs, gloo on CPUs. Without torchrun: rank 0 of 1, on the GPU if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size <= 1:
        if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun with one process (one GPU)
            log.info("launched by torchrun: 1 process, no process group needed")
        return DistContext(device=torch.device("cuda" if cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("rank %d of %d on %s (%s)", rank, world_size, device, dist.get_backend())
    return DistContext(rank, world_size, local_rank, device)


def shutdown_distributed(context: DistContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
