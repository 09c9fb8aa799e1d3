"""pastflow.models checkpoints: safetensors + JSON round trips, validation, refusals, and the
serialisation of optimizer, scheduler and RNG states without pickles."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pastflow.errors import InputError
from pastflow.models import checkpoint as ckpt
from pastflow.pretrain.settings import resolve_pretrain_config
from pastflow.models.model import PastModel
from pastflow.models.serialize import (optimizer_from_state, optimizer_to_state, rng_from_state,
                                       rng_to_state, scheduler_from_state, scheduler_to_state)

PX = 16


def tiny_run_config() -> dict:
    config = resolve_pretrain_config({"model": {
        "embed_dim": 16,
        # A small CNN with batch norm: its running statistics are state too.
        "image": {"name": "timm", "kwargs": {"arch": "mobilenetv3_small_050"}},
        "expression": {"name": "rank_transformer", "kwargs": {"context": 4, "dim": 16, "depth": 1,
                                                              "heads": 2}},
        "pathway": {"kwargs": {"hidden": [8]}}, "reconstruction": {"hidden": 8},
        "pathway_head": {"hidden": 8}, "spatial": {"k": 2, "heads": 2}}})
    config["model"].update(genes=["CD3D", "MKI67", "ERBB2", "KRT5", "PTPRC"],
                           pathways=["T_CELL_RECEPTOR", "PROLIFERATION_G2M"], image_px=PX)
    return config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_run_config()
    model = PastModel(config["model"]).eval()
    path = ckpt.save_checkpoint(tmp_path_factory.mktemp("ck") / "step_00000007", model, config,
                                step=7)
    return model, config, path


def _batch():
    g = torch.Generator().manual_seed(1)
    return {"patch": torch.randn(3, 3, PX, PX, generator=g),
            "neighbor_patches": torch.randn(3, 2, 3, PX, PX, generator=g),
            "neighbor_mask": torch.tensor([[True, True], [True, False], [False, False]]),
            "expression": torch.rand(3, 5, generator=g),
            "pathways": torch.randn(3, 2, generator=g)}


def test_checkpoint_round_trip_reproduces_the_model(saved):
    model, config, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    document = json.loads((path / "config.json").read_text())
    assert document["step"] == 7 and document["format"] == "pastflow-checkpoint"
    assert document["config"]["model"]["genes"] == ["CD3D", "MKI67", "ERBB2", "KRT5", "PTPRC"]
    assert document["config"]["model"]["pathways"] == ["T_CELL_RECEPTOR", "PROLIFERATION_G2M"]
    loaded = ckpt.load_checkpoint(path)
    assert loaded.step == 7 and loaded.training is None and not loaded.model.training
    with torch.no_grad():
        expected, got = model(_batch()), loaded.model(_batch())
    for key in ("image", "expression", "pathway", "expression_out", "pathway_pred"):
        assert torch.equal(expected[key], got[key]), key


def test_load_refuses_a_run_config_that_differs(saved):
    _, config, path = saved
    other = json.loads(json.dumps(config))
    other["model"]["embed_dim"] = 32
    with pytest.raises(InputError, match=r"step_00000007/config\.json: .*'model\.embed_dim': "
                                         r"checkpoint 16, config 32"):
        ckpt.load_checkpoint(path, config=other)
    other = json.loads(json.dumps(config))
    other["train"]["num_workers"] = 7  # operational: does not change the result
    assert ckpt.load_checkpoint(path, config=other).step == 7


def test_load_validates_every_tensor_against_the_model_the_config_builds(saved, tmp_path):
    _, config, path = saved
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    state = load_file(path / "model.safetensors")
    document = json.loads((path / "config.json").read_text())
    document["config"]["model"]["genes"] = document["config"]["model"]["genes"][:4]
    (tampered / "config.json").write_text(json.dumps(document))
    save_file(state, str(tampered / "model.safetensors"))
    with pytest.raises(InputError, match=r"tampered/model\.safetensors: tensor "
                                         r"'expression_encoder\.gene_embedding\.weight' has shape "
                                         r"\(5, 16\); the model the config builds expects \(4, 16\)"):
        ckpt.load_checkpoint(tampered)
    (tampered / "config.json").write_text((path / "config.json").read_text())
    save_file({k: v for k, v in state.items() if k != "log_theta"},
              str(tampered / "model.safetensors"))
    with pytest.raises(InputError, match=r"tensor 'log_theta' of the model the config builds is missing"):
        ckpt.load_checkpoint(tampered)


def test_bare_weights_files_load_with_a_config_and_pickles_are_refused(saved, tmp_path):
    model, config, _ = saved
    plain = tmp_path / "weights.pt"
    torch.save(model.state_dict(), plain)
    loaded = ckpt.load_checkpoint(plain, config=config)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.model.state_dict().values()))
    pickled = tmp_path / "model.pth"
    torch.save(model, pickled)
    with pytest.raises(InputError, match=r"model\.pth: holds pickled code"):
        ckpt.load_checkpoint(pickled, config=config)
    with pytest.raises(InputError, match="needs the run's config"):
        ckpt.load_checkpoint(plain)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown weights format '.txt'"):
        ckpt.load_checkpoint(tmp_path / "notes.txt", config=config)


def test_save_is_atomic(saved, tmp_path, monkeypatch):
    model, config, _ = saved
    target = tmp_path / "step_00000009"

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(target, model, config, step=9)
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor temporary debris
    with pytest.raises(TypeError):  # a config that is not JSON fails before anything is written
        ckpt.save_checkpoint(target, model, config | {"bad": object()}, step=9)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_listing_and_pruning(saved, tmp_path):
    model, config, _ = saved
    for step in (3, 12, 7):
        ckpt.save_checkpoint(ckpt.checkpoint_dir(tmp_path, step), model, config, step=step)
    (tmp_path / "step_00000099").mkdir()  # incomplete: no config.json
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "step_00000003", "step_00000007", "step_00000012"]
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000012"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000007", "step_00000012"]


def test_optimizer_and_scheduler_state_round_trip_exactly():
    def make(seed):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
        optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
        return net, optimizer, scheduler

    def step(net, optimizer, scheduler, x):
        optimizer.zero_grad()
        net(x).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()

    x = torch.randn(8, 4)
    net, optimizer, scheduler = make(0)
    for _ in range(3):
        step(net, optimizer, scheduler, x)
    meta, tensors = optimizer_to_state(optimizer)
    json.dumps(meta)  # JSON-serialisable
    sched = json.loads(json.dumps(scheduler_to_state(scheduler)))
    twin, twin_optimizer, twin_scheduler = make(1)
    twin.load_state_dict(net.state_dict())
    optimizer_from_state(twin_optimizer, json.loads(json.dumps(meta)), tensors)
    scheduler_from_state(twin_scheduler, sched)
    for _ in range(2):
        step(net, optimizer, scheduler, x)
        step(twin, twin_optimizer, twin_scheduler, x)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))
    assert twin_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    meta, tensors = rng_to_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    rng_from_state(json.loads(json.dumps(meta)), tensors)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


class GpuGenerators:
    """The CUDA generator calls of ``torch.cuda``, recorded: this machine has no GPU, and what
    is checked is which GPUs a rank touches. ``get_rng_state_all`` (every visible GPU: a
    context opened on each) fails the test if called."""

    def __init__(self, monkeypatch):
        self.read, self.written = [], []
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        for every in ("get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, every, self.every)

    def get(self, device="cuda"):
        self.read.append(torch.device(device))
        return torch.full((16,), torch.device(device).index, dtype=torch.uint8)

    def set(self, state, device="cuda"):
        self.written.append((torch.device(device), int(state[0])))

    def every(self, *args):
        raise AssertionError("a rank touched every GPU's generator")


def test_each_rank_saves_and_restores_only_its_own_gpus_rng_state(monkeypatch):
    gpus = GpuGenerators(monkeypatch)
    meta, tensors = rng_to_state(torch.device("cuda", 1))  # the rank of GPU 1
    assert gpus.read == [torch.device("cuda", 1)]
    assert [k for k in tensors if "cuda" in k] == ["rng.cuda"] and tensors["rng.cuda"][0] == 1
    rng_from_state(meta, tensors, torch.device("cuda", 1))
    assert gpus.written == [(torch.device("cuda", 1), 1)]
    # A CPU process saves no CUDA state; a CPU run's state resumed on a GPU leaves the GPU's
    # generator as seeded; a GPU run's resumed on the CPU ignores it.
    cpu_meta, cpu_tensors = rng_to_state(torch.device("cpu"))
    assert not [k for k in cpu_tensors if "cuda" in k] and len(gpus.read) == 1
    rng_from_state(cpu_meta, cpu_tensors, torch.device("cuda", 0))
    rng_from_state(meta, tensors, torch.device("cpu"))
    assert len(gpus.written) == 1


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default():
    """pastflow gained `pretrain.recipe` (default null) after this checkpoint was written: it
    ran without a recipe, so the run with the default continues it; another value does not."""
    from pastflow.errors import InputError
    from pastflow.models.checkpoint import check_resumable
    from pastflow.pretrain.settings import resolve_pretrain_config

    run = resolve_pretrain_config({"train": {"steps": 10}})
    old = {k: v for k, v in run.items() if k != "recipe"}
    check_resumable(old, run, "ckpt/config.json")  # no error
    other = resolve_pretrain_config({"train": {"steps": 10}, "recipe": "past"})
    with pytest.raises(InputError, match="ckpt/config.json: the checkpoint differs .*'model"):
        check_resumable(old, other, "ckpt/config.json")
