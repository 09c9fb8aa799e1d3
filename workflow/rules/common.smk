# Config and sample sheet are validated here, before any job runs; a bad sheet stops the
# workflow with a message naming the file, the line and the column.
import json
import sys
from fnmatch import fnmatch
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))  # import pastflow from this checkout

from snakemake.exceptions import WorkflowError

from pastflow.errors import InputError
from pastflow.models.config import resolve_config
from pastflow.sheet import load_sample_sheet, validate_config

try:
    validate_config(config, source="config")
    # The pretrain section is checked against the model's own defaults (a misspelt key
    # fails here, not after the data stages have run).
    resolve_config(config.get("pretrain"), source="config: pretrain")
    SIMULATED = config["simulate"]["enabled"]
    # Simulated inputs do not exist yet: the simulate rules create them.
    samples = load_sample_sheet(
        config["samples"], config["data_root"], check_paths=not SIMULATED
    )
except InputError as err:
    sys.exit(f"pastflow: invalid input: {err}")

SAMPLES = list(samples.index)
# Rules run the package from this checkout with whatever Python the job's environment has
# (the project venv locally, a per-rule conda env with --sdm conda on a cluster).
PASTFLOW = (
    f"PYTHONPATH={workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}} python -m pastflow"
)
EXPRESSION_SAMPLES = [s for s in SAMPLES if samples.loc[s, "technology"] != "he_only"]
# Pretraining sees the train and val samples with expression; test samples never.
PRETRAIN_SAMPLES = [s for s in EXPRESSION_SAMPLES if samples.loc[s, "split"] != "test"]
# Evaluated: the test samples with measured expression.
EVALUATE_SAMPLES = [s for s in EXPRESSION_SAMPLES if samples.loc[s, "split"] == "test"]
MODEL = "results/pretrain/model"
SIM_OUT = config["simulate"].get("out", "results/simulated")
SUMMARY = "results/summary.json"
SURVIVAL = "results/survival"
# Survival needs tens of patients with outcomes: the simulated cohort, or a user's table.
SURVIVAL_PATIENTS = len(set(samples["patient"]))
RUN_SURVIVAL = bool(
    PRETRAIN_SAMPLES
    and (SIMULATED or config["survival"]["clinical"])
    and SURVIVAL_PATIENTS >= config["survival"]["min_patients"]
)
if PRETRAIN_SAMPLES and not RUN_SURVIVAL:
    print(
        f"pastflow: survival skipped ({SURVIVAL_PATIENTS} patients, survival.min_patients="
        f"{config['survival']['min_patients']}, clinical table: "
        f"{config['survival']['clinical'] or ('simulated' if SIMULATED else 'none')})",
        file=sys.stderr,
    )


wildcard_constraints:
    sample="|".join(SAMPLES),


def project_file(path):
    """A config path to a file shipped with pastflow (``resources/...``): as given when it
    exists relative to the working directory, else relative to this checkout, so a run in
    another directory (``--directory``) finds the project's defaults."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    return str(Path(workflow.basedir).parent / path)


def rule_resources(rule):
    """The rule's memory and wall time from config ``resources`` (the profile's
    ``set-resources`` wins). Runtimes grow with the attempt: a retried job (``retries:``,
    e.g. a pre-empted pretraining requeued by Slurm) gets more time to finish."""
    values = dict(config["resources"][rule])
    runtime = values.pop("runtime")
    values["runtime"] = lambda wildcards, attempt: runtime * attempt
    return values


def simulated_cells(wildcards):
    """``simulate.n_cells``: one count, or the first sample-name pattern that matches."""
    n_cells = config["simulate"]["n_cells"]
    if isinstance(n_cells, int):
        return n_cells
    for pattern, count in n_cells.items():
        if fnmatch(wildcards.sample, pattern):
            return count
    raise WorkflowError(
        f"config simulate.n_cells: no pattern matches {wildcards.sample}"
    )


def pretrain_launcher(wildcards, resources):
    """``python -m pastflow`` on CPU; on GPUs, torchrun with one process per GPU of the job
    (``resources.gpu``, set by the profile): single node, rendezvous on this host."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus < 1:
        return PASTFLOW
    return PASTFLOW.replace(
        "python -m pastflow",
        f"torchrun --standalone --nproc-per-node={gpus} -m pastflow",
    )


def sheet(field):
    """Input/params function returning one sheet column of the wildcard's sample."""
    return lambda wildcards: samples.loc[wildcards.sample, field]


def ingest_inputs(wildcards):
    """The simulated sample folder, or the sheet's own files for real data."""
    if SIMULATED:
        return [f"{SIM_OUT}/{wildcards.sample}"]
    row = samples.loc[wildcards.sample]
    return [row[c] for c in ("data", "image", "alignment") if row[c]]


def qc_table(wildcards):
    """The sample's QC table, or nothing for an H&E-only sample."""
    if wildcards.sample in EXPRESSION_SAMPLES:
        return f"results/qc/{wildcards.sample}.h5ad"
    return []


def optional_table(wildcards, input):
    """``--table PATH`` when the job has a QC table input, else nothing."""
    return f"--table {input.table}" if input.table else ""


def summary_inputs(wildcards):
    """Every patch store, and the cohort tables of the stages this run has."""
    inputs = {"stores": expand("results/patches/{sample}.h5", sample=SAMPLES)}
    if PRETRAIN_SAMPLES and EVALUATE_SAMPLES:
        inputs["metrics"] = "results/predict/metrics.tsv"
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
    if config["survival"].get("clinical"):
        return config["survival"]["clinical"]
    return f"{SIM_OUT}/clinical.tsv"


def survival_hscores(wildcards):
    """The stain stage's slide H-scores when ``survival.use_hscores`` is on."""
    if config["survival"].get("use_hscores"):
        return expand("results/stain/{sample}/hscores.tsv", sample=SAMPLES)
    return []


def survival_options(wildcards, input):
    """Optional inputs of ``pastflow survival``: H-scores, true hazard, gene sets."""
    options = []
    if input.hscores:
        options.append("--hscores " + " ".join(input.hscores))
    if input.truth:
        options.append(f"--truth {input.truth}")
    gene_sets = resolve_config(config.get("pretrain"))["data"]["gene_sets"]
    if gene_sets:
        options.append(f"--gene-sets {gene_sets}")
    return " ".join(options)


def all_outputs():
    outputs = [SUMMARY]
    outputs += expand("results/patches/{sample}.h5", sample=SAMPLES)
    outputs += expand("results/qc/{sample}.h5ad", sample=EXPRESSION_SAMPLES)
    if SIMULATED:
        outputs.append(f"{SIM_OUT}/clinical.tsv")
    if PRETRAIN_SAMPLES:  # the model stages need samples with expression to train on
        outputs += expand("results/predict/{sample}.h5ad", sample=SAMPLES)
        outputs += expand("results/stain/{sample}/hscores.tsv", sample=SAMPLES)
        if EVALUATE_SAMPLES:
            outputs.append("results/predict/metrics.tsv")
            outputs.append("results/stain/hscore_agreement.tsv")
        if RUN_SURVIVAL:
            outputs.append("results/survival/cindex.tsv")
    return outputs
