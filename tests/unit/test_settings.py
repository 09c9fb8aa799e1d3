"""Settings: one typed class per stage holds every default; the config only overrides, is
checked key by key, and reaches each stage command through one settings file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pastflow.config import (README_PATH, SCHEMA_PATH, WorkflowConfig, config_schema,
                             readme_tables, resolve_workflow_config)
from pastflow.errors import InputError
from pastflow.pretrain.settings import PretrainSettings
from pastflow.qc.settings import QCSettings
from pastflow.settings import Settings, load_section, setting

BIN = Path(sys.executable).parent


def test_the_schema_file_is_the_one_the_classes_write():
    assert yaml.safe_load(SCHEMA_PATH.read_text()) == config_schema(), (
        "run `.venv/bin/python -m pastflow.config` to rewrite the schema")


def test_config_readme_lists_every_key_with_its_default(repo_root):
    """Both directions: every key of the classes is in the README with its default, and
    the README names no key the classes lack (its tables are written from them)."""
    demo = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    readme = README_PATH.read_text()
    assert readme_tables(demo) in readme, (
        "run `.venv/bin/python -m pastflow.config` to rewrite config/README.md")
    assert "| `qc.min_counts` | `10` |" in readme
    assert "| `pretrain.train.lr` | `0.0003` | `0.001` |" in readme


def test_defaults_live_in_the_classes_and_the_config_only_overrides(repo_root):
    demo = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    settings = resolve_workflow_config(demo)
    assert settings.qc == QCSettings()  # not in config.yaml: every default from the class
    assert settings.pretrain.train.steps == 600  # set by config.yaml
    assert settings.pretrain.train.batch_size == PretrainSettings().train.batch_size
    # A partial nested section keeps the field's own default for the rest.
    image = resolve_workflow_config({"pretrain": {"model": {"expression": {"kwargs": {}}}}})
    assert image.pretrain.model.expression.name == "mlp"


@pytest.mark.parametrize("section, problem", [
    ({"qc": {"min_countz": 3}}, "unknown config key 'qc.min_countz'"),
    ({"pretrain": {"train": {"lrr": 1}}}, "unknown config key 'pretrain.train.lrr'"),
    ({"typo": 1}, "unknown config key 'typo'"),
    ({"qc": {"min_counts": "ten"}}, "config key 'qc.min_counts': expected an integer, got 'ten'"),
    ({"qc": {"min_counts": True}}, "config key 'qc.min_counts': expected an integer"),
    ({"patches": {"mpp": 0}}, "config key 'patches.mpp': must be > 0, got 0"),
    ({"patches": {"mpp": float("nan")}}, "expected a finite number"),
    ({"pretrain": {"train": {"lr": -1e-3}}}, "'pretrain.train.lr': must be > 0"),
    ({"pretrain": {"model": {"reconstruction": {"likelihood": "zinb"}}}},
     "'pretrain.model.reconstruction.likelihood': must be one of nb, poisson, mse"),
    ({"survival": {"penalizers": [0.1, -1]}}, "'survival.penalizers': must be > 0, got -1"),
    ({"survival": {"penalizers": []}}, "'survival.penalizers': give at least one"),
    ({"resources": {"qc": {"mem_mb": 0}}}, "'resources.qc.mem_mb': must be >= 1"),
    ({"resources": {"nope": {"mem_mb": 1}}}, "unknown config key 'resources.nope'"),
    ({"evaluate": {"markers": "EPCAM"}}, "'evaluate.markers': expected a list of a string"),
    ({"qc": 5}, "config key 'qc' must be a mapping"),
])
def test_a_bad_value_is_refused_naming_its_key(section, problem):
    with pytest.raises(InputError, match=_escaped(problem)):
        resolve_workflow_config(section, source="my.yaml")


@pytest.mark.parametrize("section, problem", [
    ({"patches": {"patch_um": 0.2}},
     "config key 'patches.patch_um': 0.2 um is under one pixel at patches.mpp 0.5 um/px"),
    ({"patches": {"patch_um": 1e6}}, "config key 'patches.patch_um': 1e+06 um is 2,000,000 px "
                                     "at patches.mpp 0.5 um/px; at most 4096 px a side"),
    ({"patches": {"spot_context_um": 5000}}, "config key 'patches.spot_context_um': 5000 um is "
                                             "10,000 px"),
    ({"patches": {"context_um": 16}}, "config key 'patches.context_um': a context patch (16 um) "
                                      "must be larger than the patch (patch_um 32 um)"),
    ({"patches": {"mpp": 1000}}, "config key 'patches.mpp': must be <= 100, got 1000"),
    ({"ingest": {"mpp": 250}}, "config key 'ingest.mpp': must be <= 100, got 250"),
    ({"pretrain": {"train": {"lr": 30}}}, "config key 'pretrain.train.lr': must be <= 1"),
    ({"pretrain": {"data": {"patch_px": 100000}}},
     "config key 'pretrain.data.patch_px': must be <= 4096, got 100000"),
    ({"pretrain": {"model": {"temperature": {"init": 5}}}},
     "config key 'pretrain.model.temperature.init': must lie between min and max "
     "(0.01 <= init <= 1), got 5"),
    ({"pretrain": {"data": {"augment": {"brightness": 3}}}},
     "config key 'pretrain.data.augment.brightness': must be <= 1"),
])
def test_an_implausible_size_or_rate_is_refused_naming_its_key(section, problem):
    """Values of the right type that cannot be meant: a patch under a pixel or of a thousand
    slides, a learning rate of 30 (issue 16)."""
    with pytest.raises(InputError, match=_escaped(problem)):
        resolve_workflow_config(section, source="my.yaml")


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_a_stage_reads_its_section_from_any_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("qc: {min_counts: 50}\npatches: {mpp: 1.0}\n")
    assert load_section(QCSettings, "qc", path) == QCSettings(min_counts=50)
    assert load_section(QCSettings, "qc", None) == QCSettings()
    path.write_text("qc: {min_countz: 50}\n")
    with pytest.raises(InputError, match=r"config.yaml: unknown config key 'qc.min_countz'"):
        load_section(QCSettings, "qc", path)
    with pytest.raises(InputError, match="settings file not found"):
        load_section(QCSettings, "qc", tmp_path / "absent.yaml")


def test_a_settings_file_keeps_the_order_of_ordered_mappings(tmp_path):
    """simulate.n_cells patterns match first to last: the file the workflow writes must not
    reorder them (sorted keys once gave every slide the catch-all's count)."""
    from pastflow.simulate.settings import SimulateSettings
    from pastflow.settings import write_settings_file

    settings = SimulateSettings.from_config({"n_cells": {"cohort*": 400, "*": 2500}}, "simulate")
    path = tmp_path / "simulate.json"
    assert write_settings_file({"simulate": settings.to_dict()}, path)
    assert not write_settings_file({"simulate": settings.to_dict()}, path)  # unchanged: kept
    read = load_section(SimulateSettings, "simulate", path)
    assert read.cells_for("cohort07") == 400 and read.cells_for("sim01") == 2500


def test_cross_field_checks_name_the_key():
    @dataclass(frozen=True)
    class Window(Settings):
        low: int = setting(0, "lower bound")
        high: int = setting(10, "upper bound")

        def check(self, fail):
            if self.low >= self.high:
                fail("low", "must be below high")

    assert Window.from_config({"low": 3}, "window").low == 3
    with pytest.raises(InputError, match="config key 'window.low': must be below high"):
        Window.from_config({"low": 30}, "window")


def test_a_pretrain_section_round_trips_through_its_dict():
    settings = PretrainSettings.from_config({"model": {"image": {"name": "timm", "kwargs": {
        "arch": "resnet10t"}}}}, "pretrain")
    again = PretrainSettings.from_config(settings.to_dict(), "pretrain")
    assert again == settings and again.model.image.kwargs == {"arch": "resnet10t"}


# ---------------------------------------------------------------------------- end to end

def copy_project(repo_root: Path, dest: Path) -> Path:
    """The workflow, config and resources of this checkout (no results, no venv)."""
    for part in ("workflow", "config", "resources", "envs"):
        shutil.copytree(repo_root / part, dest / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def snakemake(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([str(BIN / "snakemake"), "--cores", "1", "--nolock", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_new_setting_reaches_its_stage_from_config_yaml_alone(repo_root, tmp_path):
    """A field added to one settings class (and nothing else edited) is accepted in
    config.yaml, lands in the stage's settings file and in the settings the stage command
    runs with; a misspelt key stops the workflow before any job, naming it."""
    project = copy_project(repo_root, tmp_path / "project")
    qc_settings = project / "workflow" / "pastflow" / "qc" / "settings.py"
    qc_settings.write_text(qc_settings.read_text() + (
        '    fictitious_knob: int = setting(7, "a knob no stage had before", minimum=0)\n'))
    config = project / "config" / "config.yaml"
    config.write_text(config.read_text() + "\nqc:\n  fictitious_knob: 11\n")

    dry = snakemake(project, "-n", "-p", "results/qc/sim01.h5ad")
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    written = yaml.safe_load((project / "results" / "settings" / "qc.json").read_text())
    assert written["qc"]["fictitious_knob"] == 11 and written["qc"]["min_counts"] == 10
    assert "qc --ingested results/ingest/sim01.zarr --settings results/settings/qc.json" in (
        dry.stdout)

    # The stage command resolves the same settings (its log line records them) before it
    # reads any data.
    stage = subprocess.run(
        [sys.executable, "-m", "pastflow", "qc", "--ingested", "absent.zarr", "--out", "o.h5ad",
         "--fig-distributions", "d.png", "--fig-spatial", "s.png",
         "--settings", "results/settings/qc.json"],
        cwd=project, env=dict(os.environ, PYTHONPATH=str(project / "workflow")),
        capture_output=True, text=True, timeout=120)
    assert '"fictitious_knob": 11' in stage.stderr, stage.stderr[-2000:]

    config.write_text(config.read_text().replace("fictitious_knob: 11", "fictitous_knob: 11"))
    typo = snakemake(project, "-n", "results/qc/sim01.h5ad")
    assert typo.returncode != 0
    assert "unknown config key 'qc.fictitous_knob'" in typo.stdout + typo.stderr


@pytest.mark.slow
def test_a_changed_setting_reruns_only_its_stage(repo_root, tmp_path):
    """Settings files are rewritten only when their section changes: a new qc threshold
    makes the qc settings file newer, and leaves the patches one as it was."""
    project = copy_project(repo_root, tmp_path / "project")
    assert snakemake(project, "-n", "results/qc/sim01.h5ad").returncode == 0
    files = project / "results" / "settings"
    before = {p.name: p.stat().st_mtime_ns for p in files.glob("*.json")}
    config = project / "config" / "config.yaml"
    config.write_text(config.read_text() + "\nqc:\n  min_counts: 20\n")
    assert snakemake(project, "-n", "results/qc/sim01.h5ad").returncode == 0
    after = {p.name: p.stat().st_mtime_ns for p in files.glob("*.json")}
    assert after["qc.json"] > before["qc.json"]
    assert {k: v for k, v in after.items() if k != "qc.json"} == {
        k: v for k, v in before.items() if k != "qc.json"}


def test_every_stage_section_has_a_settings_class():
    from pastflow.config import STAGE_SECTIONS

    fields = {f for f in WorkflowConfig.__dataclass_fields__}
    assert set(STAGE_SECTIONS) <= fields


def test_a_named_foundation_model_cuts_the_stores_at_its_own_resolution():
    """UNI takes 224 px at 0.5 um/px: unset patch settings become its card's, set ones stay."""
    from pastflow.config import resolve_workflow_config

    uni = {"pretrain": {"model": {"image": {"name": "uni", "kwargs": {"weights": "u.bin"}}}}}
    assert (resolve_workflow_config(uni).patches.mpp,
            resolve_workflow_config(uni).patches.patch_um) == (0.5, 112.0)
    conch = {"pretrain": {"model": {"image": {"name": "conch"}}}}
    assert resolve_workflow_config(conch).patches.patch_um == 224.0  # 448 px
    coarser = dict(uni, patches={"mpp": 1.0})
    assert (resolve_workflow_config(coarser).patches.mpp,
            resolve_workflow_config(coarser).patches.patch_um) == (1.0, 224.0)
    chosen = dict(uni, patches={"mpp": 0.25, "patch_um": 32})
    assert (resolve_workflow_config(chosen).patches.mpp,
            resolve_workflow_config(chosen).patches.patch_um) == (0.25, 32.0)
    scratch = {"pretrain": {"model": {"image": {"name": "resnet18_cell"}}}}
    assert (resolve_workflow_config(scratch).patches.mpp,
            resolve_workflow_config(scratch).patches.patch_um) == (0.5, 32.0)


def test_pretraining_warns_when_a_foundation_model_gets_other_crops(caplog):
    from pastflow.models.train import warn_off_card

    with caplog.at_level("WARNING", logger="pastflow.models.train"):
        warn_off_card("uni", 0.5, 224, "a.h5")
        warn_off_card("resnet18_cell", 1.0, 48, "a.h5")
        assert not caplog.records
        warn_off_card("uni", 1.0, 112, "a.h5")
    assert "uni was trained on 224 px crops at 0.5 um/px; a.h5 gives 112 px at 1 um/px" \
        in caplog.text
