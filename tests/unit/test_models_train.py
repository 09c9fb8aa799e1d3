"""pastflow.models.train: pretraining runs, exact resume after SIGTERM, DDP on 2 CPU
processes, and the ``pretrain`` CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pastflow.errors import InputError
from pastflow.models.checkpoint import latest_checkpoint, load_checkpoint
from pastflow.cli import main as cli_main
from pastflow.models.model import PastModel
from pastflow.models.train import EXIT_PREEMPTED, cosine_schedule, parameter_groups, pretrain
from pastflow.pretrain.settings import PretrainSettings
from pastflow.settings import load_section
from test_models_fixtures import cohort  # noqa: F401 (fixture)

STEPS = 36

CONFIG = {
    "seed": 11,
    "model": {"embed_dim": 16,
              "image": {"name": "vit_cell", "kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2}},
              "expression": {"name": "mlp", "kwargs": {"hidden": [32]}},
              "pathway": {"kwargs": {"hidden": [16]}},
              "reconstruction": {"hidden": 16}, "pathway_head": {"hidden": 16},
              "spatial": {"k": 2, "heads": 2}},
    "data": {"augment": {"hed_sigma": 0.05, "brightness": 0.05}},
    "train": {"steps": STEPS, "batch_size": 8, "lr": 1e-3, "warmup_steps": 4,
              "checkpoint_every": 5, "keep_checkpoints": 3, "num_workers": 0, "log_every": 1},
}


def samples_of(cohort):
    return [(str(s.store), str(s.table)) for s in cohort]


def cli_args(cohort, config_path, out):
    return ["pretrain", "--settings", str(config_path), "--stores", *[str(s.store) for s in cohort],
            "--tables", *[str(s.table) for s in cohort], "--out", str(out), "--no-progress"]


def subprocess_env() -> dict:
    # One thread per process: the tests share 2 cores, and results must not depend on it.
    return dict(os.environ, OMP_NUM_THREADS="1")


def pretrain_in_one_thread(*args, **kwargs):
    """``pretrain`` in this process with one thread, like the subprocesses
    (``OMP_NUM_THREADS=1``): float sums then add up in the same order everywhere, which
    bit-for-bit comparisons between them need. Set at each call: building the test data
    (other OpenMP users) can reset torch's thread count."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):  # numpy's BLAS too
            return pretrain(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(cohort, tmp_path_factory):
    return pretrain_in_one_thread(CONFIG, samples_of(cohort),
                                  tmp_path_factory.mktemp("uninterrupted"),
                    progress=False)


def test_cosine_schedule_by_hand():
    factor = cosine_schedule(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(14) == pytest.approx(0.1) and factor(100) == pytest.approx(0.1)


def test_parameter_groups_exempt_vectors_and_frozen_weights():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    net[2].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(net, 0.05)
    assert decay["params"] == [net[0].weight] and decay["weight_decay"] == 0.05
    assert {id(p) for p in no_decay["params"]} == {id(net[0].bias), id(net[1].weight),
                                                   id(net[1].bias), id(net[2].bias)}


def test_pretrain_writes_model_metrics_and_curves_and_learns(uninterrupted, cohort):
    out = uninterrupted.out_dir
    assert uninterrupted.step == STEPS and not uninterrupted.preempted
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert metrics["step"].tolist() == list(range(1, STEPS + 1))
    assert {"loss", "clip", "reconstruction", "pathway_regression", "pathway_clip", "lr",
            "temperature"} <= set(metrics.columns)
    weights = {"clip": 1.0, "reconstruction": 1.0, "pathway_regression": 1.0, "pathway_clip": 0.5}
    assert (metrics["loss"] - sum(w * metrics[k] for k, w in weights.items())).abs().max() < 1e-4
    # The two cell types are easy to tell apart in both modalities: the losses fall.
    first, last = metrics.head(6).mean(numeric_only=True), metrics.tail(6).mean(numeric_only=True)
    assert last["clip"] < first["clip"] and last["loss"] < first["loss"]
    assert (out / "training_curves.png").stat().st_size > 10_000
    coverage = pd.read_csv(out / "pathway_coverage.tsv", sep="\t")
    assert len(coverage) == 2 * 13  # 2 samples x the 13 default gene sets
    kept = coverage[coverage["kept"]]
    assert set(kept["pathway"]) == {"PROLIFERATION_G2M", "T_CELL_RECEPTOR"}
    assert kept.set_index(["sample", "pathway"]).loc[("s2", "T_CELL_RECEPTOR"), "n_present"] == 5
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step_00000030", "step_00000035", "step_00000036"]  # newest 3 kept
    final = load_checkpoint(out / "model")
    assert final.step == STEPS and final.config["model"]["pathways"] == uninterrupted.model.pathways
    assert all(torch.equal(a, b) for a, b in zip(final.model.state_dict().values(),
                                                 uninterrupted.model.state_dict().values()))


def test_sigterm_saves_and_the_resumed_run_ends_with_identical_weights(uninterrupted, cohort,
                                                                      tmp_path):
    """A run stopped by SIGTERM part-way and resumed ends bit-for-bit where an uninterrupted
    run does. The interrupted run streams through 2 loader workers (which get the signal
    too), the others through none: the result does not depend on the workers either."""
    config = json.loads(json.dumps(CONFIG))
    config["train"]["num_workers"] = 2
    config_path = tmp_path / "pretrain.yaml"
    config_path.write_text(yaml.safe_dump({"pretrain": config}))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "pastflow",
                                *cli_args(cohort, config_path, out)], env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step_00000005" / "config.json").exists():
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        # To the whole process group, loader workers included, as Slurm does.
        os.killpg(process.pid, signal.SIGTERM)
        log = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == EXIT_PREEMPTED, log[-3000:]
    assert "received SIGTERM" in log
    stopped_at = int(latest_checkpoint(out / "checkpoints").name.split("_")[1])
    assert 5 < stopped_at < STEPS, log[-3000:]
    assert not (out / "model").exists()  # no final model from an interrupted run

    resumed = pretrain_in_one_thread(config, samples_of(cohort), out, progress=False)
    assert resumed.step == STEPS and not resumed.preempted
    ours = load_file(out / "model" / "model.safetensors")
    theirs = load_file(uninterrupted.out_dir / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    history = pd.read_csv(out / "metrics.tsv", sep="\t")
    reference = pd.read_csv(uninterrupted.out_dir / "metrics.tsv", sep="\t")
    pd.testing.assert_frame_equal(history, reference)


def test_resuming_with_another_config_is_refused(uninterrupted, cohort):
    changed = json.loads(json.dumps(CONFIG))
    changed["model"]["embed_dim"] = 32
    with pytest.raises(InputError, match=r"step_00000036/config\.json: .*'model\.embed_dim'"):
        pretrain(changed, samples_of(cohort), uninterrupted.out_dir, progress=False)


SHORT = {**CONFIG, "train": {**CONFIG["train"], "steps": 6, "checkpoint_every": 3}}


def test_a_checkpoint_of_other_training_data_is_moved_aside_not_resumed(cohort, tmp_path,
                                                                         caplog):
    """A sample moved from train to test (here: dropped from the training set), or a
    rebuilt training store: the old checkpoints are moved aside, training starts fresh and
    the model records what it was trained on."""
    import shutil

    import h5py

    samples = []  # copies: this test rewrites one store
    for sample in cohort:
        store, table = tmp_path / sample.store.name, tmp_path / sample.table.name
        shutil.copy(sample.store, store)
        shutil.copy(sample.table, table)
        samples.append((str(store), str(table)))
    out = tmp_path / "run"
    pretrain(SHORT, samples, out, progress=False)
    assert [row["sample"] for row in first_data(out)] == ["s1", "s2"]

    with caplog.at_level("WARNING", logger="pastflow.models.train"):
        pretrain(SHORT, samples[:1], out, progress=False)  # s2 now held out
    assert "trained on other data (removed: s2)" in caplog.text
    assert (out / "checkpoints.old-1").is_dir()
    assert [row["sample"] for row in first_data(out)] == ["s1"]
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert metrics["step"].tolist() == list(range(1, 7))  # every step trained again

    caplog.clear()
    with h5py.File(samples[0][0], "a") as f:  # the store of s1 rebuilt with other content
        f.attrs["rebuilt"] = 1
    with caplog.at_level("WARNING", logger="pastflow.models.train"):
        pretrain(SHORT, samples[:1], out, progress=False)
    assert "trained on other data (changed: s1)" in caplog.text
    assert (out / "checkpoints.old-2").is_dir()


def first_data(out):
    return load_checkpoint(out / "model").training_data


def test_cells_and_spots_train_one_model_each_read_at_its_own_size(cohort, tmp_path):
    """A cohort of a cell slide and a spot slide: one model learns from both (batches of one
    size each), records each sample's unit, and embeds a spot slide at the spot's size."""
    from pastflow.embed.sample import embed_sample
    from pastflow.embed.settings import EmbedSettings
    from test_models_fixtures import PATCH_PX, make_sample

    spots = make_sample(tmp_path / "spots", "spots", seed=3, spot_px=PATCH_PX + 8)
    out = tmp_path / "run"
    pretrain(SHORT, [(str(cohort[0].store), str(cohort[0].table)),
                     (str(spots.store), str(spots.table))], out, progress=False)
    units = {row["sample"]: (row["unit"], row["patch_um"]) for row in first_data(out)}
    assert units == {"s1": ("cell", PATCH_PX * 0.5), "spots": ("spot", (PATCH_PX + 8) * 0.5)}
    table = embed_sample(out / "model", spots.store, tmp_path / "spots.h5ad",
                         EmbedSettings(batch_size=16), progress=False)
    meta = table.uns["pastflow_embed"]
    assert meta["store_unit"] == "spot" and meta["crop_px"] == PATCH_PX + 8
    assert meta["image_px"] == PATCH_PX and table.obsm["X_image"].shape == (36, 16)
    assert table.obsm["X_image"].std(axis=0).mean() > 0  # spots differ from each other


def test_a_test_sample_the_model_was_trained_on_is_refused(cohort, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(SHORT, samples_of(cohort), out, progress=False)
    argv = ["embed", "--model", str(out / "model"), "--store", str(cohort[1].store),
            "--out", str(tmp_path / "s2.h5ad")]
    assert cli_main(argv + ["--split", "test"]) == 2
    assert "was trained on sample 's2', which the sample sheet now marks 'test'" in (
        capsys.readouterr().err)
    assert not (tmp_path / "s2.h5ad").exists()
    assert cli_main(argv + ["--split", "train"]) == 0  # embedding a training sample is fine
    predict = ["predict", "--model", str(out / "model"), "--embedding", str(tmp_path / "s2.h5ad"),
               "--out", str(tmp_path / "p.h5ad"), "--split"]
    assert cli_main(predict + ["test"]) == 2
    assert "which the sample sheet now marks 'test'" in capsys.readouterr().err
    assert cli_main(predict + ["train"]) == 0


DDP_DRIVER = """
import json, logging, os, sys
from pathlib import Path
from safetensors.torch import save_file
from pastflow.models.train import pretrain

logging.basicConfig(level=logging.INFO)
config, samples, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
result = pretrain(config, samples, out, progress=False)
state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
save_file(state, str(out / f"rank{os.environ['RANK']}.safetensors"))
"""


def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(cohort, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    config = json.loads(json.dumps(CONFIG))
    config["model"]["spatial"]["k"] = 0
    config["train"].update(steps=6, checkpoint_every=100)
    out = tmp_path / "ddp"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", str(driver), json.dumps(config),
                          json.dumps(samples_of(cohort)), str(out)],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "rank 1 of 2 on cpu (gloo)" in run.stderr
    rank0 = load_file(out / "rank0.safetensors")
    rank1 = load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # They trained: the weights moved from the initial ones (same seed, same config).
    trained = load_checkpoint(out / "model").model
    torch.manual_seed(config["seed"])
    initial = PastModel(trained.config)
    assert not torch.equal(initial.image_projection.project.weight,
                           trained.image_projection.project.weight)
    assert len(pd.read_csv(out / "metrics.tsv", sep="\t")) == 6


@pytest.mark.slow  # torchrun with two gloo ranks, then a resume (~15 s each)
@pytest.mark.parametrize("stop_signal", [signal.SIGUSR1, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_to_a_torchrun_run_exits_75_and_resumes_on_one_process(cohort, tmp_path,
                                                                       caplog, stop_signal):
    """torchrun turns a worker's exit status into its own (1); through ``pastflow.launch``
    (the pretrain rule's command on GPUs) a run stopped by a signal exits 75 once its
    checkpoint is saved. The signal goes to the launcher's process group, which torchrun's
    workers (each in a session of its own) are not in: the launcher forwards it. SIGUSR1:
    torchrun would die of it, orphaning its workers, but starts with it ignored; SIGTERM:
    torchrun stops its workers itself too. The checkpoint of 2 processes then resumes on 1
    (new random streams, a warning) and trains on to the last step."""
    config = json.loads(json.dumps(CONFIG))
    config["model"]["spatial"]["k"] = 0
    config["train"].update(steps=20, checkpoint_every=3)
    config_path = tmp_path / "pretrain.yaml"
    config_path.write_text(yaml.safe_dump({"pretrain": config}))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "pastflow.launch", "--nproc-per-node=2",
                                *cli_args(cohort, config_path, out)], env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints" / "step_00000003" / "config.json").exists():
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.01)
        os.killpg(process.pid, stop_signal)
        log = process.communicate(timeout=180)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == EXIT_PREEMPTED, log[-3000:]
    # Each rank (twice on SIGTERM: from the launcher and from torchrun).
    assert log.count(f"received {stop_signal.name}") >= 2, log[-3000:]
    stopped_at = int(latest_checkpoint(out / "checkpoints").name.split("_")[1])
    assert 3 < stopped_at < 20, log[-3000:]
    assert not (out / "model").exists()
    if stop_signal != signal.SIGUSR1:
        return  # the resume once is enough

    with caplog.at_level("WARNING", logger="pastflow.models.train"):
        resumed = pretrain_in_one_thread(config, samples_of(cohort), out, progress=False)
    assert "checkpoint of 2 processes resumed on 1" in caplog.text
    assert resumed.step == 20 and not resumed.preempted
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert metrics["step"].tolist() == list(range(1, 21))  # continued, not started over


def test_cli_reads_the_pretrain_section_and_reports_bad_input(cohort, tmp_path, capsys):
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump({"samples": "x.tsv", "pretrain": {"train": {"steps": 3}}}))
    settings = load_section(PretrainSettings, "pretrain", path)
    assert settings.train.steps == 3 and settings.train.lr == PretrainSettings().train.lr
    path.write_text(yaml.safe_dump({"pretrain": {"train": {"stepz": 3}}}))
    with pytest.raises(InputError,
                       match=r"workflow\.yaml: unknown config key 'pretrain\.train\.stepz'"):
        load_section(PretrainSettings, "pretrain", path)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"pretrain": CONFIG}))
    args = cli_args(cohort, good, tmp_path / "out")
    tables_at = args.index("--tables")
    assert cli_main(args[:tables_at + 2] + args[tables_at + 3:]) == 2  # 2 stores, 1 table
    assert "give one QC table per patch store" in capsys.readouterr().err
    assert cli_main(cli_args(cohort, tmp_path / "absent.yaml", tmp_path / "out")) == 2
    assert "absent.yaml: settings file not found" in capsys.readouterr().err


def test_compiled_forward_trains_the_same_model_and_checkpoints_its_own_names(
        uninterrupted, cohort, tmp_path, monkeypatch):
    """``train.compile``: the forward pass goes through torch.compile (TorchDynamo's graph
    capture, with the ``aot_eager`` backend here: the C++ code generation of the default
    backend is torch's and takes minutes on 2 cores). The first steps' losses are those of
    the plain run, and the checkpoint keeps the model's own parameter names."""
    import functools

    compiled = []

    def compile_for_test(module, **kwargs):
        compiled.append(type(module).__name__)
        return real_compile(module, backend="aot_eager", **kwargs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.wraps(real_compile)(compile_for_test))
    config = json.loads(json.dumps(CONFIG))
    config["train"].update(steps=3, compile=True)
    run = pretrain_in_one_thread(config, samples_of(cohort), tmp_path / "compiled",
                                 progress=False)
    assert compiled == ["PastModel"]
    plain = pd.read_csv(uninterrupted.out_dir / "metrics.tsv", sep="\t").head(3)
    ours = pd.read_csv(run.out_dir / "metrics.tsv", sep="\t")
    # Within the 4 warm-up steps the learning rate does not depend on the step count.
    assert ours["loss"].tolist() == pytest.approx(plain["loss"].tolist(), rel=1e-4)
    saved = load_file(run.out_dir / "model" / "model.safetensors")
    assert set(saved) == set(load_file(uninterrupted.out_dir / "model" / "model.safetensors"))
