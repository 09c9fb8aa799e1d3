"""The whole workflow configuration as one typed tree: each stage's settings under its
config section, plus the sample sheet, the data root and per-rule resources.

``config/config.yaml`` and a user's ``--configfile`` only override these defaults;
:func:`resolve_workflow_config` checks the merged config once, before any job runs.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pastflow.embed.settings import EmbedSettings
from pastflow.ingest.settings import IngestSettings
from pastflow.foundation_inputs import foundation_input
from pastflow.patches.settings import PatchesSettings
from pastflow.predict.settings import EvaluateSettings, PredictSettings
from pastflow.pretrain.settings import PretrainSettings
from pastflow.qc.settings import QCSettings
from pastflow.settings import Settings, dotted_get, json_schema, setting
from pastflow.simulate.settings import SimulateSettings
from pastflow.stain.settings import StainSettings
from pastflow.survival.settings import SurvivalSettings

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class RuleResources(Settings):
    """Memory and wall time of one rule's jobs (a profile's ``set-resources`` wins)."""

    one_row = True  # config/README.md lists a rule's resources in one row

    mem_mb: int = setting(2000, "memory, MB", minimum=1)
    runtime: int = setting(30, "wall time per attempt, minutes (x attempt on a retry)",
                           minimum=1)
    gpu: int = setting(0, "GPUs (pretrain: >= 1 launches one torchrun process per GPU)",
                       minimum=0)


def _rule(mem_mb: int, runtime: int) -> RuleResources:
    return setting(RuleResources(mem_mb=mem_mb, runtime=runtime),
                   f"{mem_mb} MB, {runtime} min")


@dataclass(frozen=True)
class ResourcesSettings(Settings):
    """Memory (MB) and wall time (minutes) per rule; partitions and GPU counts live in the
    profiles."""

    simulate_sample: RuleResources = _rule(2000, 30)
    simulate_clinical: RuleResources = _rule(500, 5)
    ingest: RuleResources = _rule(4000, 60)
    qc: RuleResources = _rule(4000, 30)
    patches: RuleResources = _rule(3000, 60)
    pretrain: RuleResources = _rule(16000, 240)
    embed: RuleResources = _rule(8000, 60)
    predict: RuleResources = _rule(4000, 30)
    evaluate: RuleResources = _rule(8000, 60)
    evaluate_lopo: RuleResources = _rule(8000, 60)
    summary: RuleResources = _rule(1000, 10)
    stain_calibrate: RuleResources = _rule(2000, 10)
    stain: RuleResources = _rule(2000, 10)
    stain_images: RuleResources = _rule(2000, 10)
    stain_agreement: RuleResources = _rule(1000, 10)
    survival_features: RuleResources = _rule(4000, 30)
    survival: RuleResources = _rule(4000, 30)
    survival_figures: RuleResources = _rule(2000, 10)


@dataclass(frozen=True)
class WorkflowConfig(Settings):
    """pastflow configuration (every key is described in config/README.md)."""

    samples: str = setting("config/samples.tsv", "the sample sheet (TSV; columns in the "
                                                 "top-level README)")
    data_root: str = setting(".", "directory the sheet's relative paths are resolved against")
    split_by_patient: bool = setting(True, "a patient's slides must share one split (train, "
                                           "val or test), checked at start-up; false only for "
                                           "a one-patient cohort that holds out a section "
                                           "(her2st)")
    simulate: SimulateSettings = setting(SimulateSettings(), "the demo cohort")
    ingest: IngestSettings = setting(IngestSettings(), "reading vendor data")
    qc: QCSettings = setting(QCSettings(), "filters and highly variable genes")
    patches: PatchesSettings = setting(PatchesSettings(), "the patch store")
    pretrain: PretrainSettings = setting(PretrainSettings(), "pretraining (PAST / STAMP)")
    embed: EmbedSettings = setting(EmbedSettings(), "embedding every cell")
    predict: PredictSettings = setting(PredictSettings(), "expression from H&E")
    evaluate: EvaluateSettings = setting(EvaluateSettings(), "scoring on the test samples")
    stain: StainSettings = setting(StainSettings(), "virtual IHC")
    survival: SurvivalSettings = setting(SurvivalSettings(), "multimodal survival")
    resources: ResourcesSettings = setting(ResourcesSettings(), "memory and wall time per rule")


# Config sections a stage command reads: the section name is the settings file's key.
STAGE_SECTIONS = ("simulate", "ingest", "qc", "patches", "pretrain", "embed", "predict",
                  "evaluate", "stain", "survival")


def resolve_workflow_config(config: Mapping, source: str = "config") -> WorkflowConfig:
    """The merged workflow config checked against every settings class; raises
    :class:`~pastflow.errors.InputError` naming the first bad key. Patch stores follow a
    named foundation model's resolution (:func:`patches_for_encoder`)."""
    return patches_for_encoder(WorkflowConfig.from_config(config, "", source), config)


def patches_for_encoder(settings: WorkflowConfig, config: Mapping) -> WorkflowConfig:
    """``settings`` with the patch stores cut at the pretrained image encoder's own input when
    it is a named foundation model (``pretrain.model.image.name: uni``, ...): the
    ``patches.mpp`` and ``patches.patch_um`` the config leaves unset become its model card's
    (UNI: 0.5 um/px, 224 px = 112 um), so its crops show what it was trained on. Values the
    config sets are kept (pretraining then warns that they differ from the card's)."""
    card = foundation_input(settings.pretrain.model.image.name)
    given = config.get("patches") or {}
    if card is None:
        return settings
    image_px, mpp = card
    changes = {}
    if "mpp" not in given:
        changes["mpp"] = mpp
    if "patch_um" not in given:
        changes["patch_um"] = image_px * changes.get("mpp", settings.patches.mpp)
    if not changes:
        return settings
    return dataclasses.replace(settings, patches=dataclasses.replace(settings.patches, **changes))


def config_schema() -> dict:
    """The JSON schema of the workflow config (``workflow/schemas/config.schema.yaml``)."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(json_schema(WorkflowConfig))
    return schema


README_PATH = SCHEMA_PATH.parents[2] / "config" / "README.md"
README_BEGIN = "<!-- settings tables: written by `python -m pastflow.config`; do not edit -->"
README_END = "<!-- end of settings tables -->"


def readme_tables(demo: Mapping | None = None) -> str:
    """Markdown tables of every config key (the top-level keys, then one table per
    section): default, the demo config's value where it sets one, and meaning, all from the
    settings classes."""
    demo = demo or {}
    defaults = WorkflowConfig()
    hints = typing.get_type_hints(WorkflowConfig)
    header = ["| key | default | `config.yaml` | meaning |", "|---|---|---|---|"]
    top, sections = [], []
    for f in dataclasses.fields(WorkflowConfig):
        rows = [_row(key, default, meaning, demo)
                for key, default, meaning in _rows(f, hints[f.name], f.name,
                                                   getattr(defaults, f.name))]
        if _is_section(hints[f.name]):
            doc = " ".join((hints[f.name].__doc__ or "").split("\n\n")[0].split())
            sections += [f"### `{f.name}`", "", doc, "", *header, *rows, ""]
        else:
            top += rows
    return "\n".join([README_BEGIN, "", "### Top level", "", *header, *top, "", *sections,
                      README_END])


def _is_section(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, Settings) and not getattr(tp, "one_row", False)


def _row(key: str, default, meaning: str, demo: Mapping) -> str:
    value = dotted_get(demo, key, _ABSENT)
    shown = "" if value is _ABSENT else _cell(value)
    return f"| `{key}` | {_cell(default)} | {shown} | {meaning} |"


_ABSENT = object()


def _cell(value) -> str:
    return "`" + json.dumps(value).replace("|", "\\|") + "`"


def _rows(f: dataclasses.Field, tp, key: str, default):
    """``(dotted key, default, meaning)`` of a field whose default value is ``default``,
    nested settings flattened (except one-row classes such as a rule's resources)."""
    if _is_section(tp):
        hints = typing.get_type_hints(tp)
        for sub in dataclasses.fields(tp):
            yield from _rows(sub, hints[sub.name], f"{key}.{sub.name}",
                             getattr(default, sub.name))
        return
    plain = default.to_dict() if isinstance(default, Settings) else default
    yield key, plain, f.metadata.get("help", "")


def write_readme_tables(path: Path = README_PATH, demo_config: Path | None = None) -> None:
    """Replace the generated block of ``config/README.md`` with :func:`readme_tables`."""
    import yaml

    demo_config = demo_config or path.parent / "config.yaml"
    text = path.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    tables = readme_tables(yaml.safe_load(demo_config.read_text()))
    path.write_text(text[:start] + tables + text[end:])


def write_config_schema(path: str | Path = SCHEMA_PATH) -> None:
    """Write :func:`config_schema` as YAML."""
    import yaml

    header = ("# Written by `python -m pastflow.config` from the settings classes; do not edit.\n"
              "# Defaults, types and ranges live in pastflow/<stage>/settings.py.\n")
    Path(path).write_text(header + yaml.safe_dump(config_schema(), sort_keys=False,
                                                  width=100))


if __name__ == "__main__":
    write_config_schema()
    write_readme_tables()
    print(f"wrote {SCHEMA_PATH} and the tables of {README_PATH}")
