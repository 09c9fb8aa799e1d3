"""One sample, any technology -> one SpatialData zarr (the contract of :mod:`pastflow.contracts`)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.ingest.common import (SampleParts, build_sdata, build_table, check_values, is_blank,
                                    pastflow_uns)
from pastflow.ingest.he_image import export_ome_tiff, he_image_element
from pastflow.ingest.he_only import GIVEN_MPP
from pastflow.ingest.settings import IngestSettings
from pastflow.slide import check_slide_before_decoding
from pastflow.technologies import technology as lookup_technology

log = logging.getLogger(__name__)

EXPORTED_HE = "he.ome.tif"  # inside the zarr, for inputs whose H&E is a SpatialData element


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
    needs = lookup_technology(technology).required(data)
    if data is not None and needs == ("data",):
        # Converted SpatialData: the H&E and its registration are inside the zarr.
        for role, path in (("image", image), ("alignment", alignment)):
            if path is not None and path != data:
                log.warning("--%s %s ignored: the H&E and its registration come from %s", role, path, data)
        return {"data": _require(data, "data", technology), "image": None, "alignment": None}
    given = {"data": data, "image": image, "alignment": alignment}
    checked = {role: _require(given[role], role, technology) for role in needs}
    for role, path in given.items():  # optional extras must exist too
        if role not in checked and path is not None:
            checked[role] = _require(path, role, technology)
    return {role: checked.get(role) for role in given}


def write_sample(parts: SampleParts, out: Path, sample: str, patient: str, technology: str,
                 data_path: str, max_image_side: int):
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
                  alignment: str | Path | None = None,
                  settings: IngestSettings = IngestSettings(), sheet_mpp: float | None = None,
                  progress: bool = True) -> Path:
    """Read one sample in its vendor format and write ``out`` (a SpatialData ``.zarr``) atomically.

    Args:
        sample, patient: ids stored in ``obs`` and ``uns``.
        technology: a name in :data:`pastflow.technologies.REGISTRY`.
        out: the zarr to write; written under a temporary name and renamed when complete.
        data, image, alignment: the sample-sheet paths (``''`` or None when unused; see
            :data:`pastflow.contracts.SHEET_COLUMNS`).
        settings: ``mpp``, microns per H&E pixel, used only when the slide and the vendor
            files give none; ``max_image_px``: larger H&Es are stored downsampled in the zarr
            (the original stays the ``slide_path`` the patches stage reads).
        sheet_mpp: the sample's own resolution (sheet column ``mpp``); wins over
            ``settings.mpp`` for this sample.

    Returns:
        ``out``. Raises :class:`InputError` on bad input, leaving nothing at ``out``.
    """
    start = time.perf_counter()
    out = Path(out)
    paths = check_inputs(technology, _as_path(data), _as_path(image), _as_path(alignment))
    if paths["image"] is not None:  # a bomb is refused from its header, before any decoding
        check_slide_before_decoding(paths["image"], settings.max_jpeg_png_px)
    mpp = settings.mpp if sheet_mpp is None else sheet_mpp
    entry = lookup_technology(technology)
    parts = entry.read(paths, sample, mpp, settings, progress)
    parts.unit = parts.unit or entry.unit
    if parts.uns.get("mpp_source") == GIVEN_MPP:  # the reader used it: say where it came from
        parts.uns["mpp_source"] = ("sample sheet column mpp" if sheet_mpp is not None
                                   else "config ingest.mpp")
    if len(parts.cell_ids) == 0:
        raise InputError(paths["data"] or paths["image"], "no cells / spots / bins to ingest")
    check_values(parts, paths["data"] or paths["image"])
    data_path = str(paths["data"].resolve()) if paths["data"] else ""
    table = write_sample(parts, out, sample, patient, technology, data_path,
                         settings.max_image_px)
    log.info("ingested %s (%s): %d cells x %d genes in %.1f s -> %s", sample, technology, table.n_obs,
             table.n_vars, time.perf_counter() - start, out)
    return out
