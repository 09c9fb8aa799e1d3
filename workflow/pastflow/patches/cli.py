"""``pastflow patches``: an ingested sample -> its patch store and patch gallery."""

from __future__ import annotations

import argparse
from pathlib import Path

from pastflow.settings import add_settings_argument


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "patches",
        help="cut a patch around every cell: one HDF5 patch store per sample",
        description="Build the patch store of one ingested sample (the slide resampled to the "
        "patch resolution plus the cell index) and a gallery of sampled patches.",
    )
    parser.add_argument(
        "--ingested",
        required=True,
        type=Path,
        help="the ingested sample, results/ingest/{sample}.zarr (only its table is read)",
    )
    parser.add_argument("--out", required=True, type=Path, help="patch store to write (.h5)")
    parser.add_argument("--gallery", type=Path, help="patch gallery to write (.png)")
    add_settings_argument(parser, "patches")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def read_cells(ingested: Path):
    """``(cell_ids, xy_px (n, 2), pastflow uns dict)`` from an ingested SpatialData zarr.

    Reads only ``obs`` and ``uns`` of ``tables/table``: the count matrix is not needed here.
    """
    import anndata
    import numpy as np
    import zarr

    from pastflow.contracts import TABLE_KEY
    from pastflow.errors import InputError

    if not ingested.exists():
        raise InputError(ingested, "ingested sample not found")
    group_path = ingested / "tables" / TABLE_KEY
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
    from pastflow.patches.settings import PatchesSettings
    from pastflow.patches.store import build_patch_store
    from pastflow.settings import load_section

    settings = load_section(PatchesSettings, "patches", args.settings)
    cell_ids, xy, meta = read_cells(args.ingested)
    unit = str(meta.get("unit", "cell"))  # zarrs ingested before units hold cells or spots
    diameter = float(meta.get("unit_diameter_um", 0.0))
    build_patch_store(
        meta["slide_path"],
        cell_ids,
        xy,
        args.out,
        target_mpp=settings.mpp,
        patch_um=settings.patch_um_for(unit, diameter),
        context_um=settings.context_um or None,
        slide_mpp=float(meta["mpp"]),
        cells_path=args.ingested,
        unit=unit,
        unit_diameter_um=diameter,
        workers=settings.workers,
        progress=not args.no_progress,
    )
    if args.gallery is not None:
        save_gallery(args.out, args.gallery, title=str(meta.get("sample", args.ingested.stem)))
    # build_patch_store has logged the summary line (cells, bytes per cell, seconds).
