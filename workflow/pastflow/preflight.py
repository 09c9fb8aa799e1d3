"""Semantic checks of a run before any job starts, and the stages it skips, said out loud.

The settings classes check each key alone (type, range); the sheet checks each row. What
needs the two together is here, called once when Snakemake parses the workflow
(``workflow/rules/common.smk``), so that a wrong gene or a clinical table without events
stops the run in a second instead of after pretraining:

- panel and marker genes against the genes the samples measure, read from the vendor files'
  gene lists (:mod:`pastflow.gene_names`; the simulator's panel for a simulated run, whose
  files do not exist yet): a misspelt gene would draw a blank virtual stain that reads as a
  true negative;
- the clinical table (``survival.clinical``) against the sheet's patients, through the one
  reader every survival job uses (:func:`pastflow.clinical.read_clinical`);
- the stages a sheet leaves out (no training samples, too few patients for survival) as
  lines for the console and the report's front page (:func:`stage_notes`).

Every refusal is a :class:`~pastflow.errors.InputError` naming the file or config key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from pastflow.errors import InputError
from pastflow.gene_names import sample_genes
from pastflow.settings import project_path
from pastflow.technologies import REGISTRY

_SHOWN = 5  # names listed in a message before "..."
MODEL_STAGES = "pretrain, embed, predict, evaluate, stain, survival"


def check_run(settings, samples: pd.DataFrame, *, simulated: bool,
              model_samples: Sequence[str], run_survival: bool,
              patients: Sequence[str] | None = None) -> list[str]:
    """Check what the run's stages will read against each other; return the notes of the
    stages it skips (:func:`stage_notes`).

    ``settings``: the resolved :class:`pastflow.config.WorkflowConfig`; ``samples``: the
    checked sheet (:func:`pastflow.sheet.load_sample_sheet`); ``model_samples``: the samples
    pretraining trains on (none: no model stage runs); ``run_survival``: whether the
    survival stage runs; ``patients``: the cohort's patients (default the sheet's; a
    tissue-microarray row contributes its cores' patients, :func:`pastflow.cores.cohort_patients`).

    Raises:
        InputError: a panel or marker gene no sample measures, a stain image of a marker
            that is not in the panel or has no gene measured, a clinical table that does not
            fit the sheet (patients, events, times).
    """
    if model_samples:
        check_genes(settings, samples, simulated=simulated)
    patients = list(samples["patient"]) if patients is None else list(patients)
    if run_survival and settings.survival.clinical:
        from pastflow.clinical import read_clinical

        read_clinical(settings.survival.clinical, patients)
    return stage_notes(settings, patients, simulated=simulated, model_samples=model_samples,
                       run_survival=run_survival)


def stage_notes(settings, patients: Sequence[str], *, simulated: bool,
                model_samples: Sequence[str], run_survival: bool) -> list[str]:
    """One line per stage the run skips, and why (``patients``: the cohort's)."""
    if not model_samples:
        return [f"no training samples (split train, with expression): model stages "
                f"skipped ({MODEL_STAGES})"]
    if run_survival:
        return []
    clinical = settings.survival.clinical or ("simulated" if simulated else "none")
    return [f"survival skipped ({len(set(patients))} patients, "
            f"survival.min_patients={settings.survival.min_patients}, clinical table: "
            f"{clinical})"]


def measured_genes(samples: pd.DataFrame, *, simulated: bool,
                   simulated_genes: int) -> dict[str, set[str]]:
    """Sample -> the genes it measures, for the samples with expression whose gene list is
    cheap to read (a simulated run: the simulator's panel of ``simulated_genes``)."""
    expression = [s for s in samples.index if REGISTRY[samples.loc[s, "technology"]].has_expression]
    if simulated:
        from pastflow.simulate.genes import gene_panel

        panel = set(gene_panel(simulated_genes))
        return {s: panel for s in expression}
    genes = {}
    for s in expression:
        found = sample_genes(samples.loc[s, "technology"], samples.loc[s, "data"])
        if found:
            genes[s] = found
    return genes


def check_genes(settings, samples: pd.DataFrame, *, simulated: bool) -> None:
    """The stain panel, ``stain.images`` and ``evaluate.markers`` against the measured genes
    (the union over samples: with ``pretrain.data.gene_panel: union`` a gene measured in some
    samples is predicted for all)."""
    from pastflow.predict.settings import EvaluateSettings
    from pastflow.stain.panel import read_panel

    panel_path = project_path(settings.stain.panel)
    panel = read_panel(panel_path)
    by_name = {m.name: m for m in panel}
    for image in settings.stain.images:
        if image not in by_name:
            raise InputError("config", f"config key 'stain.images': {image!r} is not a marker "
                                       f"of the panel {settings.stain.panel} (markers: "
                                       f"{', '.join(by_name)})")
    genes_by_sample = measured_genes(samples, simulated=simulated,
                                     simulated_genes=settings.simulate.n_genes)
    if not genes_by_sample:
        return  # no gene list readable up-front: the stages read the genes themselves
    measured = set().union(*genes_by_sample.values())
    read_from = f"{len(genes_by_sample)} sample(s) whose gene lists were read"
    for marker in panel:
        absent = [g for g in marker.genes if g not in measured]
        if absent and not marker.optional:
            raise InputError(panel_path, f"marker {marker.name!r}: gene(s) {_listing(absent)} "
                                         f"measured in none of the {read_from} "
                                         f"({_listing(list(genes_by_sample))}); fix the symbol, "
                                         "or mark the marker `optional: true` if the data may "
                                         "lack it")
        if len(absent) == len(marker.genes) and marker.name in settings.stain.images:
            raise InputError("config", f"config key 'stain.images': marker {marker.name!r} "
                                       f"would be a blank image: none of its genes "
                                       f"({_listing(list(marker.genes))}) is measured in the "
                                       f"{read_from}; leave it out of stain.images")
    absent = [g for g in settings.evaluate.markers if g not in measured]
    # The shipped marker list is generic: a gene the data lacks is only not drawn. A list
    # the user wrote is checked like a panel, since a misspelling would silently vanish.
    if absent and list(settings.evaluate.markers) != EvaluateSettings().markers:
        raise InputError("config", f"config key 'evaluate.markers': gene(s) {_listing(absent)} "
                                   f"measured in none of the {read_from}; fix the symbol or "
                                   "leave it out")


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def write_notes(notes: Sequence[str], path: str | Path) -> bool:
    """The notes as the JSON list ``pastflow summary --notes`` puts on the front page
    (rewritten only when they change)."""
    from pastflow.settings import write_json_if_changed

    return write_json_if_changed(list(notes), path)


def read_notes(path: str | Path | None) -> list[str]:
    """The notes :func:`write_notes` wrote; [] without a file."""
    import json

    if path is None:
        return []
    path = Path(path)
    try:
        notes = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "notes file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not a JSON list of notes ({err})") from None
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise InputError(path, "not a JSON list of notes")
    return notes
