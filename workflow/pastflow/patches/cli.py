"""``pastflow patches``: an ingested sample -> its patch store and patch gallery."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "patches",
        help="cut a patch around every cell: one HDF5 patch store per sample",
        description="Build the patch store of one ingested sample (the slide resampled to the "
        "patch resolution plus the cell index) and a gallery of sampled patches.",
    )
    parser.add_argument(
        "--table",
        required=True,
        type=Path,
        help="the ingested sample, results/ingest/{sample}.zarr (only its table is read)",
    )
    parser.add_argument("--out", required=True, type=Path, help="patch store to write (.h5)")
    parser.add_argument("--gallery", type=Path, help="patch gallery to write (.png)")
    parser.add_argument(
        "--patch-um",
        type=float,
        default=32.0,
        help="patch side in microns (default 32: cell scale; 112 = 224 px at 0.5)",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        default=0.5,
        help="resolution of the patches in microns per pixel (default 0.5)",
    )
    parser.add_argument(
        "--context-um",
        type=float,
        default=0.0,
        help="side of a larger context patch in microns, 0 = none (default 0)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="threads decoding slide tiles (default: up to 4)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def read_cells(table_path: Path):
    """``(cell_ids, xy_px (n, 2), pastflow uns dict)`` from an ingested SpatialData zarr.

    Reads only ``obs`` and ``uns`` of ``tables/table``: the count matrix is not needed here.
    """
    import anndata
    import numpy as np
    import zarr

    from pastflow.contracts import TABLE_KEY
    from pastflow.errors import InputError

    if not table_path.exists():
        raise InputError(table_path, "ingested sample not found")
    group_path = table_path / "tables" / TABLE_KEY
    try:
        group = zarr.open_group(str(group_path), mode="r")
        obs = anndata.io.read_elem(group["obs"])
        uns = anndata.io.read_elem(group["uns"]) if "uns" in group else {}
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise InputError(group_path, f"not an AnnData table ({err})") from err
    missing = [c for c in ("cell_id", "x_px", "y_px") if c not in obs.columns]
    if missing:
        raise InputError(group_path, f"obs lacks column(s) {', '.join(missing)}")
    meta = dict(uns.get("pastflow", {}))
    for key in ("slide_path", "mpp"):
        if key not in meta:
            raise InputError(group_path, f'uns["pastflow"] lacks "{key}"')
    xy = np.column_stack([obs["x_px"].to_numpy(np.float64), obs["y_px"].to_numpy(np.float64)])
    return obs["cell_id"].astype(str).to_numpy(), xy, meta


def run(args: argparse.Namespace) -> None:
    from pastflow.patches.gallery import save_gallery
    from pastflow.patches.store import build_patch_store

    cell_ids, xy, meta = read_cells(args.table)
    build_patch_store(
        meta["slide_path"],
        cell_ids,
        xy,
        args.out,
        target_mpp=args.mpp,
        patch_um=args.patch_um,
        context_um=args.context_um or None,
        slide_mpp=float(meta["mpp"]),
        cells_path=args.table,
        workers=args.workers,
        progress=not args.no_progress,
    )
    if args.gallery is not None:
        save_gallery(args.out, args.gallery, title=str(meta.get("sample", args.table.stem)))
    # build_patch_store has logged the summary line (cells, bytes per cell, seconds).
