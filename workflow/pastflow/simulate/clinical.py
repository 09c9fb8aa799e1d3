"""Patient-level truth: tumour biology parameters, a known hazard, and survival outcomes.

Everything here is a pure function of ``(cohort_seed, patient id)``: the clinical table of a
cohort is computed from patient ids alone, without rendering any slide, and a patient's slides
(simulated later, in any order) see the same parameters.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pastflow.atomic import atomic_outputs
from pastflow.errors import InputError

log = logging.getLogger(__name__)

# log-hazard = sum_k coef_k * (x_k - centre_k); centres make log_hazard ~ 0 for a typical patient.
HAZARD_COEFFICIENTS = {
    "proliferation_fraction": (4.0, 0.25),   # per unit fraction of cycling tumour cells
    "immune_infiltration": (-2.5, 0.40),     # inflamed tumours do better
    "stage": (0.5, 2.0),                     # per stage
    "age": (0.02, 60.0),                     # per year
}
WEIBULL_SHAPE = 1.3
WEIBULL_SCALE_MONTHS = 90.0  # baseline scale (log_hazard = 0): median ~ 68 months
FOLLOW_UP_MONTHS = (24.0, 120.0)  # administrative censoring, uniform (staggered accrual)
DROPOUT_MEAN_MONTHS = 400.0  # exponential loss to follow-up


@dataclass(frozen=True)
class PatientParameters:
    """Latent biology of one patient; drives slide composition, expression and survival.

    Fractions are in [0, 1]; ``age`` in years; ``stage`` 1-4; times in months.
    """

    patient: str
    immune_infiltration: float  # scales immune domains, intratumoural T cells and IFN-gamma programme
    proliferation_fraction: float  # fraction of tumour cells in cycle (MKI67+)
    tumour_fraction: float  # fraction of the tissue area in tumour nests
    er_positive: bool
    her2_positive: bool
    age: int
    stage: int
    log_hazard: float
    os_time: float  # months, > 0
    os_event: int  # 1 = death observed, 0 = censored


def _patient_rng(patient: str, cohort_seed: int) -> np.random.Generator:
    # sha256, not hash(): stable across processes and Python versions.
    digest = hashlib.sha256(patient.encode("utf-8")).digest()
    entropy = [int(cohort_seed), int.from_bytes(digest[:8], "little")]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def log_hazard(proliferation_fraction: float, immune_infiltration: float, stage: int, age: float) -> float:
    """The true log-hazard ratio of :data:`HAZARD_COEFFICIENTS` (0 for a typical patient)."""
    values = {
        "proliferation_fraction": proliferation_fraction,
        "immune_infiltration": immune_infiltration,
        "stage": stage,
        "age": age,
    }
    return float(sum(coef * (values[k] - centre) for k, (coef, centre) in HAZARD_COEFFICIENTS.items()))


def patient_parameters(patient: str, cohort_seed: int = 0) -> PatientParameters:
    """Draw one patient's parameters and outcome deterministically from ``(cohort_seed, patient)``.

    Survival: Weibull proportional hazards, ``S(t) = exp(-(t / scale)^shape * exp(log_hazard))``,
    censored by the earlier of uniform administrative follow-up and exponential drop-out.
    """
    rng = _patient_rng(patient, cohort_seed)
    # The draw order below is part of the contract: changing it changes every cohort.
    immune = float(rng.beta(2.0, 3.0))
    prolif = float(0.03 + 0.55 * rng.beta(2.0, 4.0))
    tumour = float(0.25 + 0.35 * rng.beta(2.0, 2.0))
    er_pos = bool(rng.random() < 0.7)
    her2_pos = bool(rng.random() < 0.2)
    age = int(np.clip(round(rng.normal(62.0, 11.0)), 30, 90))
    # Highly proliferative tumours tend to present later.
    stage_logits = np.array([0.9, 0.9, 0.2, -0.5]) + np.array([-1.0, 0.0, 1.0, 2.0]) * (prolif - 0.25) * 4
    stage_p = np.exp(stage_logits) / np.exp(stage_logits).sum()
    stage = int(rng.choice(4, p=stage_p)) + 1
    lh = log_hazard(prolif, immune, stage, age)
    # Inverse-CDF draw of the Weibull event time under proportional hazards.
    event_time = WEIBULL_SCALE_MONTHS * (rng.exponential() / np.exp(lh)) ** (1.0 / WEIBULL_SHAPE)
    censor_time = min(rng.uniform(*FOLLOW_UP_MONTHS), rng.exponential(DROPOUT_MEAN_MONTHS))
    os_time = max(round(float(min(event_time, censor_time)), 2), 0.01)
    return PatientParameters(
        patient=patient,
        immune_infiltration=immune,
        proliferation_fraction=prolif,
        tumour_fraction=tumour,
        er_positive=er_pos,
        her2_positive=her2_pos,
        age=age,
        stage=stage,
        log_hazard=lh,
        os_time=os_time,
        os_event=int(event_time <= censor_time),
    )


def clinical_tables(patients: list[str], cohort_seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(clinical, truth)`` data frames, one row per patient, in the given order.

    clinical: patient, os_time (months), os_event (0/1), age, stage (1-4).
    truth: patient, log_hazard, then the latent parameters that produced it.
    """
    params = [patient_parameters(p, cohort_seed) for p in patients]
    clinical = pd.DataFrame(
        {
            "patient": [p.patient for p in params],
            "os_time": [p.os_time for p in params],
            "os_event": [p.os_event for p in params],
            "age": [p.age for p in params],
            "stage": [p.stage for p in params],
        }
    )
    truth = pd.DataFrame([asdict(p) for p in params])
    truth = truth[["patient", "log_hazard", "immune_infiltration", "proliferation_fraction",
                   "tumour_fraction", "er_positive", "her2_positive"]]
    return clinical, truth


def simulate_clinical(out_dir: str | Path, patients: list[str], cohort_seed: int = 0) -> tuple[Path, Path]:
    """Write ``out_dir/clinical.tsv`` and ``out_dir/truth_hazard.tsv`` for ``patients``.

    Returns the two paths. Both files appear together or not at all.
    """
    out_dir = Path(out_dir)
    patients = [str(p) for p in patients]
    if not patients:
        raise InputError(out_dir, "no patient ids given")
    dupes = sorted({p for p in patients if patients.count(p) > 1})
    if dupes:
        raise InputError(out_dir, f"duplicate patient ids: {', '.join(dupes)}")
    if any(not p.strip() for p in patients):
        raise InputError(out_dir, "empty patient id")
    clinical, truth = clinical_tables(patients, cohort_seed)
    paths = (out_dir / "clinical.tsv", out_dir / "truth_hazard.tsv")
    with atomic_outputs(*paths) as (tmp_clinical, tmp_truth):
        clinical.to_csv(tmp_clinical, sep="\t", index=False)
        truth.to_csv(tmp_truth, sep="\t", index=False, float_format="%.6g")
    log.info("wrote clinical table for %d patients (%d events) to %s",
             len(clinical), int(clinical["os_event"].sum()), paths[0])
    return paths
