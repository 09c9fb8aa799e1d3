"""torch.distributed set-up for runs launched by torchrun (``WORLD_SIZE > 1``), and the
single-process fallback: the same calls work in both.

:class:`RowGather` puts the ranks' batches of one step back together for the contrastive
losses (:mod:`pastflow.models.losses`), with gradient: with ``W`` ranks each cell is
contrasted with the whole global batch, as on one process, not with its rank's share only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pastflow.models.device import resolve_device

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


def init_distributed(device: str = "auto", setting: str = "device") -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``):
    NCCL on GPUs, gloo on CPUs. Without torchrun: rank 0 of 1.

    ``device``: ``auto``, ``cuda`` or ``cpu``, resolved per rank by
    :func:`pastflow.models.device.resolve_device` (a job given GPUs that finds no CUDA
    raises :class:`~pastflow.errors.InputError` naming ``setting``), before any group is
    joined."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world_size > 1 else 0
    chosen = resolve_device(device, local_rank=local_rank, setting=setting)
    cuda = chosen.type == "cuda"
    if cuda:
        torch.cuda.set_device(chosen)
    if world_size <= 1:
        if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun with one process (one GPU)
            log.info("launched by torchrun: 1 process, no process group needed")
        return DistContext(device=chosen)
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("rank %d of %d on %s (%s)", rank, world_size, chosen, dist.get_backend())
    return DistContext(rank, world_size, local_rank, chosen)


def local_processes() -> int:
    """Processes of this job on this node (torchrun's ``LOCAL_WORLD_SIZE``; 1 without it):
    they share the node's CPUs."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def shutdown_distributed(context: DistContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


# -- the global batch of the contrastive losses --------------------------------------------

class RowGather:
    """How one optimiser step's global batch is split over the ranks: ``sizes[r]`` rows on
    rank ``r``, this process being ``rank``. Calling it gathers every rank's rows in rank order,
    with gradient, so a contrastive loss can compare this rank's cells with the whole batch.

    A one-rank ``RowGather`` (no process group, or a process group of one) is the identity.
    """

    def __init__(self, sizes, rank: int = 0):
        self.sizes, self.rank = tuple(int(s) for s in sizes), int(rank)

    @property
    def world_size(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        """Rows of the global batch, ``N``."""
        return sum(self.sizes)

    @property
    def offset(self) -> int:
        """Index in the global batch of this rank's first row."""
        return sum(self.sizes[:self.rank])

    @property
    def share(self) -> float:
        """``n_r W / N``: a mean over this rank's rows times this, averaged over the ``W``
        ranks (as DistributedDataParallel averages gradients), is the mean over the global
        batch; 1 when the ranks hold equal batches."""
        return self.sizes[self.rank] * self.world_size / self.total

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """``(N, ...)``: every rank's ``rows`` (``(sizes[r], ...)``) concatenated in rank order.
        Backward: this rank's rows receive the sum of every rank's gradient for them."""
        if self.world_size == 1:
            return rows
        if len(rows) != self.sizes[self.rank]:
            raise ValueError(f"rank {self.rank} holds {len(rows)} rows, expected "
                             f"{self.sizes[self.rank]}")
        return _GatherRows.apply(rows, self.sizes, self.rank)


class _GatherRows(torch.autograd.Function):
    """All-gather of rows of unequal counts (padded to the largest), differentiable.

    The backward all-reduces (sums) the whole gradient and keeps this rank's slice: the
    gradient of the sum of every rank's loss for this rank's rows. Embeddings are small, so
    an all-reduce costs little more than a reduce-scatter, and every backend (gloo too) has it.
    """

    @staticmethod
    def forward(ctx, rows, sizes, rank):
        ctx.sizes, ctx.rank = sizes, rank
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[:len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def row_gather(n_rows: int, device: torch.device | str = "cpu") -> RowGather:
    """The :class:`RowGather` of a step whose batch holds ``n_rows`` rows on this rank: the
    ranks' row counts come from one small all-gather (every rank must call it in the same
    step). Without a process group of several ranks: ``RowGather([n_rows])``, the identity."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return RowGather([n_rows])
    local = torch.tensor([n_rows], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return RowGather(torch.cat(sizes).tolist(), dist.get_rank())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the ranks (every rank must call it together); ``values``
    themselves without a process group of several ranks. For the recorded losses: the mean of
    the ranks' terms is the loss of the global batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()
