# Config and sample sheet are checked here, before any job runs: a misspelt key, a value out
# of range or a bad sheet stops the workflow with a message naming the key, or the file, the
# line and the column.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))  # import pastflow from this checkout

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from pastflow.cores import cohort_patients, sheet_core_patients
from pastflow.config import STAGE_SECTIONS, config_schema, resolve_workflow_config
from pastflow.errors import InputError
from pastflow.preflight import check_run, write_notes
from pastflow.job_logs import log_tails
from pastflow.rule_commands import (
    list_option,
    option,
    options,
    pastflow_command,
    pastflow_launcher,
)
from pastflow.settings import project_path, write_json_if_changed, write_settings_file
from pastflow.sheet import load_sample_sheet
from pastflow.technologies import REGISTRY as TECHNOLOGY_REGISTRY

try:
    # Every key against the stage settings classes (pastflow/<stage>/settings.py), which
    # hold the only defaults.
    SETTINGS = resolve_workflow_config(config)
    SIMULATED = SETTINGS.simulate.enabled
    # Relative `samples` and `data_root` resolve against the working directory
    # (--directory), else against the checkout (config/samples_her2st.tsv from anywhere).
    SHEET = str(project_path(SETTINGS.samples))
    DATA_ROOT = str(project_path(SETTINGS.data_root))
    # Simulated inputs do not exist yet: the simulate rules create them.
    samples = load_sample_sheet(
        SHEET,
        DATA_ROOT,
        check_paths=not SIMULATED,
        split_by_patient=SETTINGS.split_by_patient,
    )
    # Tissue-microarray rows (sheet column `cores`): the cores' patients stand for the row's.
    if SIMULATED:  # the core maps do not exist yet: the simulator's naming
        from pastflow.simulate.tma import simulated_core_patients

        CORE_PATIENTS = simulated_core_patients(samples, SETTINGS.simulate)
    else:
        CORE_PATIENTS = sheet_core_patients(samples)
    PATIENTS = cohort_patients(samples, CORE_PATIENTS)
except InputError as err:
    sys.exit(f"pastflow: invalid input: {err}")
SETTINGS_DIR = "results/settings"
# The schema, written from the same classes (workflow/schemas/config.schema.yaml is a copy
# for readers, kept equal by a test): validating fills every default into `config`.
CONFIG_SCHEMA = Path(SETTINGS_DIR, "config.schema.json").resolve()
write_json_if_changed(config_schema(), CONFIG_SCHEMA)
validate(config, str(CONFIG_SCHEMA))


def settings_file(section):
    """The settings file of a config section, an input of every job of its stage: rewritten
    only when the section changes, so a changed setting reruns exactly those jobs."""
    return f"{SETTINGS_DIR}/{section}.json"


for _section in STAGE_SECTIONS:
    write_settings_file(
        {_section: getattr(SETTINGS, _section).to_dict()}, settings_file(_section)
    )

SAMPLES = list(samples.index)
# Rules run the package from this checkout with the interpreter that runs Snakemake (so a
# plain shell needs no activated venv), or with --sdm conda the `python` of the rule's env.
PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else sys.executable
)
PASTFLOW = pastflow_command(workflow.basedir, PYTHON)
EXPRESSION_SAMPLES = [
    s
    for s in SAMPLES
    if TECHNOLOGY_REGISTRY[samples.loc[s, "technology"]].has_expression
]
# Pretraining trains on the train samples with expression; the val ones give its validation
# loss (best checkpoint, early stopping) and are never trained on; test samples never seen.
PRETRAIN_SAMPLES = [s for s in EXPRESSION_SAMPLES if samples.loc[s, "split"] == "train"]
VAL_SAMPLES = [s for s in EXPRESSION_SAMPLES if samples.loc[s, "split"] == "val"]
# Evaluated: the test samples with measured expression.
EVALUATE_SAMPLES = [s for s in EXPRESSION_SAMPLES if samples.loc[s, "split"] == "test"]
MODEL = "results/pretrain/model"
SIM_OUT = SETTINGS.simulate.out
SUMMARY = "results/summary.json"
SURVIVAL = "results/survival"
SURVIVAL_FIGURES = ("cindex", "km", "forest", "td_auc")  # rule survival_figures
# Survival needs tens of patients with outcomes: the simulated cohort, or a user's table.
SURVIVAL_PATIENTS = len(PATIENTS)
RUN_SURVIVAL = bool(
    PRETRAIN_SAMPLES
    and (SIMULATED or SETTINGS.survival.clinical)
    and SURVIVAL_PATIENTS >= SETTINGS.survival.min_patients
)
# Config, sheet and data against each other (panel genes, clinical table) before any job
# (pastflow/preflight.py); a stage the sheet leaves out is said on the console and on the
# report's front page (NOTES_FILE, read by `pastflow summary`).
try:
    NOTES = check_run(
        SETTINGS,
        samples,
        simulated=SIMULATED,
        model_samples=PRETRAIN_SAMPLES,
        run_survival=RUN_SURVIVAL,
        patients=PATIENTS,
    )
except InputError as err:
    sys.exit(f"pastflow: invalid input: {err}")
for _note in NOTES:
    print(f"pastflow: {_note}", file=sys.stderr)
NOTES_FILE = f"{SETTINGS_DIR}/notes.json"
write_notes(NOTES, NOTES_FILE)


wildcard_constraints:
    sample="|".join(SAMPLES),


def project_file(path):
    """A config path to a file shipped with pastflow, found from any working directory."""
    return str(project_path(path))


def rule_resources(rule):
    """The rule's memory and wall time from config ``resources`` (the profile's
    ``set-resources`` wins). Runtimes grow with the attempt: a retried job (``retries:``,
    e.g. a pre-empted pretraining requeued by Slurm) gets more time to finish."""
    values = getattr(SETTINGS.resources, rule).to_dict()
    if not values["gpu"]:
        del values["gpu"]  # CPU-only rules ask for no GPU resource at all
    runtime = values.pop("runtime")
    values["runtime"] = lambda wildcards, attempt: runtime * attempt
    return values


def pretrain_launcher(wildcards, resources):
    """``python -m pastflow`` on CPU; on GPUs, torchrun (of the same interpreter) with one
    process per GPU of the job (``resources.gpu``, set by the profile): single node,
    rendezvous on this host."""
    gpus = int(resources.get("gpu", 0) or 0)
    return pastflow_launcher(workflow.basedir, PYTHON, gpus)


def show_failed_job_logs():
    """For ``onerror:``: the last lines of each failed job's log on the console, so the
    reason is there and not only Snakemake's "exited with non-zero exit code". (Jobs of a
    group job are its ``jobs``.)"""
    failed = getattr(workflow.scheduler, "failed", ())
    jobs = [part for job in failed for part in getattr(job, "jobs", [job])]
    logs = {str(path) for job in jobs for path in job.log}
    if logs:
        print(log_tails(sorted(logs)), file=sys.stderr)


def sheet_values(*columns):
    """A params function: the sample's values in ``columns`` of the sheet, as written (the
    shell line quotes them: ``--image={params.row[image]:q}``, the ``=`` form keeping an
    empty value an argument). Only these columns are the job's params, so editing another
    column (a split, another path) does not rerun it."""

    def values(wildcards):
        row = samples.loc[wildcards.sample]
        return {column: str(row[column]) for column in columns}

    return values


def ingest_inputs(wildcards):
    """The simulated sample folder, or the sheet's own files for real data."""
    if SIMULATED:
        return [f"{SIM_OUT}/{wildcards.sample}"]
    row = samples.loc[wildcards.sample]
    return [row[c] for c in ("data", "image", "alignment") if row[c]]


def core_map(sample):
    """A tissue-microarray sample's core map (sheet column ``cores``), else ''."""
    return samples.loc[sample, "cores"]


def core_map_input(wildcards):
    """The job's core map input: the map, or the simulated sample's folder that holds it."""
    if not core_map(wildcards.sample):
        return []
    return (
        [f"{SIM_OUT}/{wildcards.sample}"] if SIMULATED else [core_map(wildcards.sample)]
    )


def core_map_option(wildcards):
    """``--cores PATH`` for a tissue-microarray sample, else nothing."""
    return option("--cores", core_map(wildcards.sample))


TMA_SAMPLES = [s for s in SAMPLES if core_map(s)]


def qc_table(wildcards):
    """The sample's QC table, or nothing for an H&E-only sample."""
    if wildcards.sample in EXPRESSION_SAMPLES:
        return f"results/qc/{wildcards.sample}.h5ad"
    return []


def optional_table(wildcards, input):
    """``--table PATH`` when the job has a QC table input, else nothing."""
    return option("--table", input.table)


def validation_options(wildcards, input):
    """``--val-stores ... --val-tables ...`` of pretraining's val samples, else nothing."""
    stores = list_option("--val-stores", input.val_stores)
    tables = list_option("--val-tables", input.val_tables)
    return f"{stores} {tables}".strip()


def summary_inputs(wildcards):
    """Every patch store, and the cohort tables of the stages this run has."""
    inputs = {"stores": expand("results/patches/{sample}.h5", sample=SAMPLES)}
    if PRETRAIN_SAMPLES and EVALUATE_SAMPLES:
        inputs["metrics"] = "results/predict/metrics.tsv"
        inputs["paired"] = "results/predict/paired.tsv"
        inputs["agreement"] = "results/stain/hscore_agreement.tsv"
    if RUN_SURVIVAL:
        inputs["cindex"] = "results/survival/cindex.tsv"
    return inputs


def load_run_summary(path=SUMMARY):
    """The run's key numbers (``pastflow summary``) for the report's front page, or None
    before the run has made them."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def survival_clinical():
    """The user's clinical table, or the simulated cohort's."""
    if SETTINGS.survival.clinical:
        return SETTINGS.survival.clinical
    return f"{SIM_OUT}/clinical.tsv"


def survival_hscores(wildcards):
    """The stain stage's slide H-scores when ``survival.use_hscores`` is on."""
    if SETTINGS.survival.use_hscores:
        return expand("results/stain/{sample}/hscores.tsv", sample=SAMPLES)
    return []


def survival_gene_sets():
    """The GMT of the pathway features: pretraining's (``pretrain.data.gene_sets``)."""
    from pastflow.models.pathways import default_gmt_path

    if SETTINGS.pretrain.data.gene_sets:
        return project_file(SETTINGS.pretrain.data.gene_sets)
    return str(default_gmt_path())


def survival_options(wildcards, input):
    """Optional input of ``pastflow survival``: the simulated cohort's true hazard."""
    return option("--truth", input.truth)


def all_outputs():
    outputs = [SUMMARY]
    outputs += expand("results/patches/{sample}.h5", sample=SAMPLES)
    outputs += expand("results/qc/{sample}.h5ad", sample=EXPRESSION_SAMPLES)
    if SIMULATED:
        outputs.append(f"{SIM_OUT}/clinical.tsv")
    if PRETRAIN_SAMPLES:  # the model stages need samples with expression to train on
        outputs += expand("results/predict/{sample}.h5ad", sample=SAMPLES)
        outputs += expand("results/stain/{sample}/hscores.tsv", sample=SAMPLES)
        outputs += expand(
            "results/stain/{sample}/virtual_{marker}.tif",
            sample=SAMPLES,
            marker=SETTINGS.stain.images,
        )
        outputs += expand("results/stain/{sample}/thumbnails.jpg", sample=SAMPLES)
        if EVALUATE_SAMPLES:
            outputs.append("results/predict/metrics.tsv")
            outputs.append("results/predict/lopo.tsv")
            outputs.append("results/stain/hscore_agreement.tsv")
        if RUN_SURVIVAL:
            outputs.append("results/survival/cindex.tsv")
            outputs += expand("results/survival/{figure}.png", figure=SURVIVAL_FIGURES)
    return outputs
