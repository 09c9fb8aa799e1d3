"""A held-out validation split in pretraining: the sheet's ``val`` samples are never trained
on; their loss at every checkpoint picks the model kept and stops training early."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pastflow.errors import InputError
from pastflow.models.checkpoint import (checkpoint_dir, list_checkpoints, load_checkpoint,
                                        prune_checkpoints)
from pastflow.models.curves import plot_training_curves
from pastflow.models.train import pretrain
from pastflow.models.validation import fixed_batches, stale_checkpoints
from test_models_fixtures import cohort, make_sample  # noqa: F401 (fixture)
from test_models_train import CONFIG, pretrain_in_one_thread, samples_of

STEPS, EVERY, PATIENCE = 30, 3, 2
RUN = {**CONFIG, "train": {**CONFIG["train"], "steps": STEPS, "checkpoint_every": EVERY,
                           "keep_checkpoints": 20, "lr": 3e-3,
                           "early_stopping_patience": PATIENCE}}


@pytest.fixture(scope="module")
def swapped_val(tmp_path_factory):
    """A val sample whose two marker-gene blocks are swapped: what the training samples teach
    (type-0 cells express the first block) is wrong on it, so its loss rises as training
    goes on while the training loss falls."""
    sample = make_sample(tmp_path_factory.mktemp("val"), "v1", seed=3)
    table = ad.read_h5ad(sample.table)
    names = list(table.var_names)
    table.var_names = names[6:12] + names[:6] + names[12:]
    table.write_h5ad(sample.table)
    return sample


@pytest.fixture(scope="module")
def validated(cohort, swapped_val, tmp_path_factory):
    return pretrain_in_one_thread(RUN, samples_of(cohort),
                                  tmp_path_factory.mktemp("validated"),
                                  validation=[(str(swapped_val.store), str(swapped_val.table))],
                                  progress=False)


def test_fixed_batches_are_one_size_each_and_a_seeded_subset():
    groups = [np.arange(0, 10), np.arange(10, 13), np.array([13])]
    batches = fixed_batches(groups, batch_size=4, max_cells=100, seed=0)
    # 10 cells: 4 + 4 + 2; 3 cells: one batch; a lone cell of its own size: left out.
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12]]
    # A trailing single cell joins the batch before it (a contrastive loss needs two).
    assert [len(b) for b in fixed_batches([np.arange(9)], 4, 100, 0)] == [4, 5]
    subset = fixed_batches(groups, 4, max_cells=6, seed=5)
    assert sum(len(b) for b in subset) <= 6
    assert all(np.array_equal(a, b) for a, b in zip(subset, fixed_batches(groups, 4, 6, 5)))


def test_stale_checkpoints_counts_evaluations_since_the_lowest_loss():
    assert stale_checkpoints([]) == (None, 0)
    assert stale_checkpoints([3.0, 2.0, 2.5, 2.0, 2.7]) == (1, 3)  # the first of equal losses
    assert stale_checkpoints([3.0, 2.0, 1.0]) == (2, 0)


def test_pruning_keeps_the_best_checkpoint(tmp_path):
    for step in (3, 6, 9, 12):
        checkpoint_dir(tmp_path, step).mkdir()
        (checkpoint_dir(tmp_path, step) / "config.json").write_text("{}")
    prune_checkpoints(tmp_path, keep=1, protect=6)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006", "step_00000012"]


def test_val_loss_rises_the_best_checkpoint_is_kept_and_training_stops_early(validated, cohort):
    out = validated.out_dir
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    validated_rows = metrics.dropna(subset=["val_loss"])
    stop = validated.step
    # Validated at every checkpoint (each part too), nowhere else; then stopped early.
    assert validated_rows["step"].tolist() == list(range(EVERY, stop + 1, EVERY))
    assert {"val_clip", "val_reconstruction", "val_pathway_clip"} <= set(metrics.columns)
    assert metrics["step"].tolist() == list(range(1, stop + 1))
    losses = validated_rows.set_index("step")["val_loss"]
    best = int(losses.idxmin())
    assert validated.best_step == best
    # PATIENCE checkpoints after the best, each with a higher validation loss: stopped there,
    # long before the 30 steps, while the training loss kept falling.
    assert stop == best + PATIENCE * EVERY < STEPS
    assert (losses.loc[best + EVERY:] > losses.loc[best]).all()
    assert metrics["loss"].tail(3).mean() < metrics["loss"].head(3).mean()

    final = load_checkpoint(out / "model")
    assert final.step == best
    assert final.validation["best_step"] == best and final.validation["stopped_early"]
    assert final.validation["steps_trained"] == stop
    assert final.validation["best_loss"] == pytest.approx(losses.loc[best])
    kept = load_file(checkpoint_dir(out / "checkpoints", best) / "model.safetensors")
    written = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(kept[k], written[k]) for k in kept)
    last = load_file(checkpoint_dir(out / "checkpoints", stop) / "model.safetensors")
    assert not all(torch.equal(last[k], written[k]) for k in last)  # not the last one

    # The val sample is validated on, never trained on.
    assert [row["sample"] for row in final.training_data] == [s.name for s in cohort]
    assert [row["sample"] for row in final.validation["data"]] == ["v1"]


def test_the_curves_show_training_and_validation_loss(validated):
    import matplotlib.pyplot as plt

    history = pd.read_csv(validated.out_dir / "metrics.tsv", sep="\t")
    figure = plot_training_curves(history, best_step=validated.best_step)
    total = next(ax for ax in figure.axes if ax.get_title() == "total")
    lines = {line.get_label(): line for line in total.get_lines()}
    assert {"training", "validation", f"kept: step {validated.best_step}"} <= set(lines)
    assert list(lines["validation"].get_xdata()) == history.dropna(subset=["val_loss"])[
        "step"].tolist()
    plt.close(figure)
    assert (validated.out_dir / "training_curves.png").stat().st_size > 10_000


def test_a_run_resumed_after_the_best_checkpoint_ends_identically(validated, cohort,
                                                                  swapped_val, tmp_path):
    """Resumed from a checkpoint past the best one (as after a pre-emption, which leaves the
    newest checkpoint and the best), the run restores the validation history: it stops at
    the same step and writes the same best model."""
    for step in (validated.best_step, validated.best_step + EVERY):
        shutil.copytree(checkpoint_dir(validated.out_dir / "checkpoints", step),
                        checkpoint_dir(tmp_path / "checkpoints", step))
    resumed = pretrain_in_one_thread(RUN, samples_of(cohort), tmp_path,
                                     validation=[(str(swapped_val.store),
                                                  str(swapped_val.table))],
                                     progress=False)
    assert (resumed.step, resumed.best_step) == (validated.step, validated.best_step)
    ours = load_file(tmp_path / "model" / "model.safetensors")
    theirs = load_file(validated.out_dir / "model" / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "metrics.tsv", sep="\t"),
                                  pd.read_csv(validated.out_dir / "metrics.tsv", sep="\t"))


def test_without_val_samples_the_model_is_the_last_checkpoint(cohort, tmp_path, caplog):
    config = {**CONFIG, "train": {**CONFIG["train"], "steps": 4, "checkpoint_every": 2}}
    with caplog.at_level("INFO", logger="pastflow.models.train"):
        result = pretrain(config, samples_of(cohort), tmp_path, progress=False)
    assert caplog.text.count("no validation samples") == 1
    assert result.best_step is None
    assert "val_loss" not in pd.read_csv(tmp_path / "metrics.tsv", sep="\t")
    final = load_checkpoint(tmp_path / "model")
    assert final.step == 4 and final.validation is None


def test_a_sample_both_trained_and_validated_on_is_refused(cohort, tmp_path):
    with pytest.raises(InputError, match="'s1' is both a training and a validation sample"):
        pretrain(CONFIG, samples_of(cohort), tmp_path, validation=samples_of(cohort)[:1],
                 progress=False)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_the_workflow_gives_pretraining_the_val_samples_only_as_validation(repo_root,
                                                                           tmp_path):
    """Dry run on a sheet of train, val and test samples: pretraining trains on the train
    sample and validates on the val ones; the probes of evaluate fit on the train one too."""
    rows = [line.split("\t") for line in
            (repo_root / "config" / "samples.tsv").read_text().splitlines()]
    splits = {"sim01": "train", "sim02": "val", "sim03": "val", "sim05": "test"}
    at = rows[0].index("split")
    sheet = [rows[0]] + [row[:at] + [splits[row[0]]] + row[at + 1:]
                         for row in rows[1:] if row[0] in splits]
    (tmp_path / "samples.tsv").write_text("".join("\t".join(r) + "\n" for r in sheet))
    bin_dir = Path(sys.executable).parent
    run = subprocess.run(
        [str(bin_dir / "snakemake"), "--snakefile", str(repo_root / "workflow" / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(repo_root / "config" / "config.yaml"),
         "--config", f"samples={tmp_path / 'samples.tsv'}", "--cores", "1", "-n", "-p",
         "results/predict/metrics.tsv"],
        env=dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"),
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    pretrain_line = next(line for line in run.stdout.splitlines() if " pretrain " in line)
    assert ("--stores results/patches/sim01.h5 --tables results/qc/sim01.h5ad "
            "--val-stores results/patches/sim02.h5 results/patches/sim03.h5 "
            "--val-tables results/qc/sim02.h5ad results/qc/sim03.h5ad") in pretrain_line
    evaluate_line = next(line for line in run.stdout.splitlines() if " evaluate " in line)
    assert "--train-embeddings results/embed/sim01.h5ad --train-tables" in evaluate_line
    assert "sim02" not in evaluate_line and "sim03" not in evaluate_line
