"""The contrastive losses over several ranks (pastflow.models.distributed.RowGather): two gloo
CPU processes, each with its half of a batch and DistributedDataParallel, give the loss (mean
over the ranks) and the gradients of one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pastflow.models import losses as L
from pastflow.models.distributed import RowGather, mean_over_ranks, row_gather
from pastflow.models.model import PastModel
from pastflow.pretrain.settings import resolve_pretrain_config

# Two spawned processes import torch and timm (~30 s on 2 cores): left out of make test-fast.
pytestmark = pytest.mark.slow

IN, DIM = 6, 8
SIZES = (5, 3)  # unequal rank batches (a small spot group): each rank's share is weighed
GENES, PATHWAYS, PX, CELLS = 10, 3, 16, 8
LOSSES = {"clip": lambda a, b, s, g=None: L.clip_loss(a, b, s, g),
          "soft_clip": lambda a, b, s, g=None: L.soft_clip_loss(a, b, s, 0.5, g)}


class PairNet(nn.Module):
    """Two linear encoders and a learnable temperature: embeddings with parameters behind."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(IN, DIM), nn.Linear(IN, DIM)
        self.temperature = L.LearnableTemperature(0.1)

    def forward(self, x, y):
        return F.normalize(self.a(x), dim=-1), F.normalize(self.b(y), dim=-1), self.temperature()


def pair_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(sum(SIZES), IN, generator=g)
    return x, x @ torch.randn(IN, IN, generator=g) + 0.5 * torch.randn(sum(SIZES), IN, generator=g)


def model_config() -> dict:
    """A tiny PastModel with every loss on."""
    config = resolve_pretrain_config({"model": {
        "embed_dim": 16,
        "image": {"name": "timm", "kwargs": {"arch": "vit_tiny_patch16_224", "patch_size": 8,
                                              "depth": 1, "embed_dim": 32, "num_heads": 2}},
        "expression": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "pathway": {"kwargs": {"hidden": [8]}}, "reconstruction": {"hidden": 16},
        "pathway_head": {"hidden": 8},
        "losses": {"clip": 1.0, "soft_clip": 1.0, "reconstruction": 1.0,
                   "pathway_regression": 1.0, "pathway_clip": 0.5}}})["model"]
    config.update(genes=[f"G{i}" for i in range(GENES)],
                  pathways=[f"P{i}" for i in range(PATHWAYS)], image_px=PX)
    return config


def model_batch() -> dict:
    g = torch.Generator().manual_seed(3)
    counts = torch.poisson(torch.linspace(0.5, 6.0, GENES).expand(CELLS, GENES), generator=g)
    return {"patch": torch.randn(CELLS, 3, PX, PX, generator=g),
            "expression": torch.log1p(counts), "counts": counts,
            "gene_mask": torch.ones(CELLS, GENES, dtype=torch.bool),
            "library_size": counts.sum(1), "pathways": torch.randn(CELLS, PATHWAYS, generator=g),
            "pathway_mask": torch.ones(CELLS, PATHWAYS, dtype=torch.bool)}


def fresh_model() -> PastModel:
    torch.manual_seed(0)
    return PastModel(model_config()).eval()  # eval: no dropout, the same function everywhere


def grads(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": p.grad.clone() for k, p in module.named_parameters()
            if p.grad is not None}


def _rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        out: dict[str, torch.Tensor] = {}
        x, y = pair_inputs()
        rows = slice(sum(SIZES[:rank]), sum(SIZES[:rank + 1]))
        for name, loss in LOSSES.items():
            torch.manual_seed(0)
            net = DistributedDataParallel(PairNet())
            a, b, scale = net(x[rows], y[rows])
            value = loss(a, b, scale, row_gather(len(a)))
            value.backward()  # DDP averages the ranks' gradients
            out[f"{name}.loss"] = value.detach()
            out.update(grads(net.module, name))
        # The training step's path: PastModel.compute_loss across ranks, equal halves.
        model = fresh_model()
        net = DistributedDataParallel(model)
        half = CELLS // world
        batch = {k: v[rank * half:(rank + 1) * half] for k, v in model_batch().items()}
        total, parts = model.compute_loss(net(batch), batch, across_ranks=True)
        total.backward()
        out["model.loss"] = total.detach()
        out["model.recorded"] = mean_over_ranks(total)  # what metrics.tsv records
        out.update({f"model.part.{k}": v.detach() for k, v in parts.items()})
        out.update(grads(model, "model"))
        save_file(out, str(Path(out_dir) / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    """What each of two gloo CPU ranks computed (both halves' losses and DDP gradients)."""
    tmp = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, str(tmp / "init"), str(tmp)), nprocs=2, join=True)
    return [load_file(tmp / f"rank{r}.safetensors") for r in range(2)]


def assert_grads_equal(rank: dict, reference: dict, prefix: str) -> None:
    names = {k for k in reference if k.startswith(prefix + ".")}
    assert names and names <= set(rank)
    for k in names:
        torch.testing.assert_close(rank[k], reference[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(two_ranks,
                                                                                 name):
    loss = LOSSES[name]
    x, y = pair_inputs()
    torch.manual_seed(0)
    net = PairNet()
    a, b, scale = net(x, y)
    reference = loss(a, b, scale)
    reference.backward()
    mean = (two_ranks[0][f"{name}.loss"] + two_ranks[1][f"{name}.loss"]) / 2
    assert mean.item() == pytest.approx(reference.item(), abs=1e-6)
    for rank in two_ranks:  # DDP's average over the ranks = the one-process gradient
        assert_grads_equal(rank, grads(net, name), name)
    # Without the gather (each rank contrasting its own cells only) the loss is another one.
    with torch.no_grad():
        local = [loss(a[:SIZES[0]], b[:SIZES[0]], scale), loss(a[SIZES[0]:], b[SIZES[0]:], scale)]
    assert abs((local[0] * SIZES[0] + local[1] * SIZES[1]).item() / sum(SIZES)
               - reference.item()) > 0.05


def test_compute_loss_across_two_ranks_matches_one_process(two_ranks):
    model = fresh_model()
    batch = model_batch()
    total, parts = model.compute_loss(model(batch), batch)
    total.backward()
    mean = (two_ranks[0]["model.loss"] + two_ranks[1]["model.loss"]) / 2
    assert mean.item() == pytest.approx(total.item(), abs=1e-6)
    assert two_ranks[0]["model.recorded"].item() == pytest.approx(total.item(), abs=1e-6)
    for name, value in parts.items():  # each part, contrastive or per cell
        pair = two_ranks[0][f"model.part.{name}"] + two_ranks[1][f"model.part.{name}"]
        assert (pair / 2).item() == pytest.approx(value.item(), abs=1e-6), name
    for rank in two_ranks:
        assert_grads_equal(rank, grads(model, "model"), "model")


def test_one_process_gather_is_the_identity():
    rows = torch.randn(4, DIM, requires_grad=True)
    gather = row_gather(len(rows))  # no process group here
    assert gather.sizes == (4,) and gather.offset == 0 and gather.share == 1.0
    assert gather(rows) is rows
    a, b = F.normalize(torch.randn(6, DIM), dim=-1), F.normalize(torch.randn(6, DIM), dim=-1)
    for loss in LOSSES.values():
        assert loss(a, b, 10.0, RowGather([6])).item() == loss(a, b, 10.0).item()
    uneven = RowGather((5, 3), rank=1)
    assert (uneven.total, uneven.offset, uneven.share) == (8, 5, 0.75)
