"""The ``predict`` and ``evaluate`` stages: expression from H&E, scored on held-out samples.

- ``head.py``: the trained reconstruction head -> log1p expression (:func:`predict_log_expression`);
- ``sample.py``: :func:`predict_sample`, one sample -> ``results/predict/{sample}.h5ad``;
- ``metrics.py``: per-gene Pearson r (constant prediction -> 0) and the most variable genes;
- ``ridge.py``: the HEST-Benchmark probe (standardise, PCA 256, ridge);
- ``evaluate.py``: the four methods (trained head, HEST probe on trained and on random
  embeddings, mean expression) on arrays, and leave-one-patient-out;
- ``cohort.py``: :func:`evaluate_cohort` on files (tables and figures); ``plots.py``: the
  figures; ``cli.py``: ``pastflow predict`` and ``pastflow evaluate``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "predict_log_expression": "pastflow.predict.head",
    "predict_sample": "pastflow.predict.sample",
    "pearson_per_gene": "pastflow.predict.metrics",
    "most_variable_genes": "pastflow.predict.metrics",
    "fit_hest_ridge": "pastflow.predict.ridge",
    "evaluate_sample": "pastflow.predict.evaluate",
    "evaluate_leave_one_patient_out": "pastflow.predict.evaluate",
    "evaluate_cohort": "pastflow.predict.cohort",
    "plot_per_gene": "pastflow.predict.plots",
    "plot_marker_maps": "pastflow.predict.plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so that `pastflow --help` (which imports pastflow.predict.cli) loads no torch.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
