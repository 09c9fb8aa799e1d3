"""QC stage: scanpy filtering, normalisation, highly variable genes, per-sample figures."""

from pastflow.qc.filter import run_qc, QCThresholds
from pastflow.qc.plots import plot_qc_distributions, plot_qc_spatial

__all__ = ["run_qc", "QCThresholds", "plot_qc_distributions", "plot_qc_spatial"]
