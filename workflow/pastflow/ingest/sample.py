"""One sample, any technology -> one SpatialData zarr (the contract of :mod:`pastflow.contracts`)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

from pastflow.atomic import atomic_path
from pastflow.contracts import TECHNOLOGIES
from pastflow.errors import InputError
from pastflow.ingest.common import (SampleParts, build_sdata, build_table, check_values, is_blank,
                                    pastflow_uns)
from pastflow.ingest.he_image import MAX_IMAGE_SIDE, export_ome_tiff, he_image_element

log = logging.getLogger(__name__)

EXPORTED_HE = "he.ome.tif"  # inside the zarr, for inputs whose H&E is a SpatialData element
ANNDATA_SUFFIXES = (".h5ad", ".h5")


def _as_path(value: str | Path | None) -> Path | None:
    return Path(value) if value not in (None, "") else None


def _require(path: Path | None, role: str, technology: str) -> Path:
    """``path`` if it exists and is not empty; :class:`InputError` naming it otherwise."""
    if path is None:
        raise InputError(None, f"technology '{technology}' needs --{role}")
    if not path.exists():
        raise InputError(path, f"{role} not found")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(path, f"{role} file is empty")
    if path.is_dir() and not any(path.iterdir()):
        raise InputError(path, f"{role} folder is empty")
    return path


def check_inputs(technology: str, data: Path | None, image: Path | None,
                 alignment: Path | None) -> dict[str, Path | None]:
    """Validate the paths a technology needs, before reading anything. Returns them by role."""
    if technology not in TECHNOLOGIES:
        raise InputError(None, f"unknown technology {technology!r}; choose one of {', '.join(TECHNOLOGIES)}")
    if technology == "xenium" and data is not None and data.suffix == ".zarr":
        # Converted SpatialData: the H&E and its registration are inside the zarr.
        for role, path in (("image", image), ("alignment", alignment)):
            if path is not None and path != data:
                log.warning("--%s %s ignored: the H&E and its registration come from %s", role, path, data)
        return {"data": _require(data, "data", technology), "image": None, "alignment": None}
    needs = {
        "xenium": ("data", "image", "alignment"),
        "visium": ("data", "image"),
        "visium_hd": ("data", "image"),
        "legacy_st": ("data", "image", "alignment"),
        "he_only": ("image",),
    }[technology]
    given = {"data": data, "image": image, "alignment": alignment}
    checked = {role: _require(given[role], role, technology) for role in needs}
    for role, path in given.items():  # optional extras must exist too
        if role not in checked and path is not None:
            checked[role] = _require(path, role, technology)
    return {role: checked.get(role) for role in given}


def read_parts(technology: str, sample: str, paths: dict[str, Path | None], mpp: float | None,
               progress: bool = True) -> SampleParts:
    """Dispatch to the technology's reader."""
    data, image, alignment = paths["data"], paths["image"], paths["alignment"]
    if technology == "xenium":
        if data.suffix == ".zarr":
            from pastflow.ingest.xenium_zarr import read_xenium_zarr

            return read_xenium_zarr(data)
        from pastflow.ingest.xenium import read_xenium

        return read_xenium(data, image, alignment)
    if technology == "visium":
        if data.is_file() and data.suffix in ANNDATA_SUFFIXES:
            from pastflow.ingest.visium import read_visium_anndata

            return read_visium_anndata(data, image, mpp=mpp)
        from pastflow.ingest.visium import read_visium

        return read_visium(data, image, sample, mpp=mpp)
    if technology == "visium_hd":
        from pastflow.ingest.visium_hd import read_visium_hd

        return read_visium_hd(data, image, sample, mpp=mpp)
    if technology == "legacy_st":
        from pastflow.ingest.legacy_st import read_legacy_st

        return read_legacy_st(data, image, alignment)
    from pastflow.ingest.he_only import read_he_only

    return read_he_only(image, mpp, progress=progress)


def write_sample(parts: SampleParts, out: Path, sample: str, patient: str, technology: str,
                 data_path: str, max_image_side: int = MAX_IMAGE_SIDE):
    """Assemble ``parts`` into the contract's SpatialData and write it to ``out`` atomically.

    Returns the table written. For an embedded H&E (a converted SpatialData input) the pyramid
    is exported to ``out/he.ome.tif``, which becomes the sample's ``slide_path``.
    """
    with (atomic_path(out) as tmp,
          tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as scratch):
        if parts.embedded_he is not None:
            # The slide file is made first (the image element reads it), moved in after the write.
            image_source = Path(scratch) / EXPORTED_HE
            export_ome_tiff(parts.embedded_he, image_source, parts.mpp)
            slide_path = out.resolve() / EXPORTED_HE
        else:
            image_source = slide_path = parts.slide_path.resolve()
        parts.uns["he_blank"] = is_blank(image_source)
        if parts.uns["he_blank"]:
            # Expression and coordinates are still good; only image-based stages are not.
            log.warning("%s: the H&E is blank (one flat colour): ingested with "
                        "uns['pastflow']['he_blank'] = True; its patches will be empty", image_source)
        element, downsample = he_image_element(image_source, max_side=max_image_side)
        uns = pastflow_uns(parts, sample, patient, technology, slide_path, data_path, downsample)
        table = build_table(parts, sample, patient, uns)
        sdata = build_sdata(parts, table, element)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="zarr v3 autosharding")
            sdata.write(tmp)
        if parts.embedded_he is not None:
            os.replace(image_source, tmp / EXPORTED_HE)
    return table


def ingest_sample(sample: str, patient: str, technology: str, out: str | Path, *,
                  data: str | Path | None = None, image: str | Path | None = None,
                  alignment: str | Path | None = None, mpp: float | None = None,
                  max_image_side: int = MAX_IMAGE_SIDE, progress: bool = True) -> Path:
    """Read one sample in its vendor format and write ``out`` (a SpatialData ``.zarr``) atomically.

    Args:
        sample, patient: ids stored in ``obs`` and ``uns``.
        technology: one of :data:`pastflow.contracts.TECHNOLOGIES`.
        out: the zarr to write; written under a temporary name and renamed when complete.
        data, image, alignment: the sample-sheet paths (``''`` or None when unused; see
            :data:`pastflow.contracts.SHEET_COLUMNS`).
        mpp: microns per H&E pixel, used only when the slide and the vendor files give none.
        max_image_side: larger H&Es are stored downsampled in the zarr (the original stays the
            ``slide_path`` the patches stage reads).

    Returns:
        ``out``. Raises :class:`InputError` on bad input, leaving nothing at ``out``.
    """
    start = time.perf_counter()
    out = Path(out)
    paths = check_inputs(technology, _as_path(data), _as_path(image), _as_path(alignment))
    parts = read_parts(technology, sample, paths, mpp, progress)
    if len(parts.cell_ids) == 0:
        raise InputError(paths["data"] or paths["image"], "no cells / spots / bins to ingest")
    check_values(parts, paths["data"] or paths["image"])
    data_path = str(paths["data"].resolve()) if paths["data"] else ""
    table = write_sample(parts, out, sample, patient, technology, data_path, max_image_side)
    log.info("ingested %s (%s): %d cells x %d genes in %.1f s -> %s", sample, technology, table.n_obs,
             table.n_vars, time.perf_counter() - start, out)
    return out
