"""``pastflow qc``: filter + normalise one sample's table and draw its QC figures."""

from __future__ import annotations

from pastflow.settings import add_settings_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("qc", help="scanpy QC of one ingested sample")
    p.add_argument("--ingested", required=True,
                   help="ingested SpatialData zarr (results/ingest/S.zarr)")
    p.add_argument("--out", required=True, help="filtered, normalised AnnData (.h5ad)")
    p.add_argument("--fig-distributions", required=True, help="PNG: counts/genes per cell")
    p.add_argument("--fig-spatial", required=True, help="PNG: counts over the H&E thumbnail")
    add_settings_argument(p, "qc")
    p.set_defaults(func=run)


def run(args) -> None:
    import logging
    import time

    import scanpy as sc

    from pastflow.atomic import atomic_outputs
    from pastflow.qc.filter import run_qc
    from pastflow.qc.plots import plot_qc_distributions, plot_qc_spatial
    from pastflow.qc.settings import QCSettings
    from pastflow.settings import load_section
    from pastflow.tables import read_ingested_table
    from pastflow.thumbnail import read_thumbnail

    start = time.perf_counter()
    thresholds = load_section(QCSettings, "qc", args.settings)
    raw = read_ingested_table(args.ingested)
    sample = raw.uns["pastflow"]["sample"]
    adata = run_qc(raw, thresholds, source=args.ingested)
    sc.pp.calculate_qc_metrics(raw, percent_top=None, log1p=False, inplace=True)
    thumb, downsample = read_thumbnail(raw.uns["pastflow"]["slide_path"])
    # zarr lists a group's members in the order its concurrent reads complete, so the uns read
    # from the ingested sample comes back in a varying order, and the HDF5 layout follows the
    # write order: sorted keys make the file byte-identical from run to run.
    adata.uns = sorted_keys(dict(adata.uns))
    with atomic_outputs(args.out, args.fig_distributions, args.fig_spatial) as (out, fd, fs):
        plot_qc_distributions(raw, thresholds, sample, fd)
        plot_qc_spatial(raw, thumb, downsample, sample, fs)
        adata.write_h5ad(out)
    logging.getLogger("pastflow.qc").info(
        "qc %s: %d/%d cells, %d genes (%d highly variable) in %.1f s", sample, adata.n_obs,
        raw.n_obs, adata.n_vars, int(adata.var["highly_variable"].sum()),
        time.perf_counter() - start)


def sorted_keys(value):
    """``value`` with every dict inside it (recursively) rebuilt in sorted key order."""
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value)}
    return value
