"""QC stage: scanpy filtering, normalisation, highly variable genes, per-sample figures."""
