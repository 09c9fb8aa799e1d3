"""The technology registry: one entry per kind of sample the pipeline reads.

Each :class:`Technology` says which sample-sheet paths it needs, how to read them, its unit
of measurement and whether it carries expression. The sheet schema's choices, the sheet
checks, ``pastflow ingest`` and the workflow's rules all read this table, so adding a
technology means one entry here plus its reader in :mod:`pastflow.ingest`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pastflow.errors import InputError

CONVERTED_SPATIALDATA = ".zarr"  # a Xenium bundle already converted by spatialdata-io


@dataclass(frozen=True)
class Technology:
    name: str
    required_paths: tuple[str, ...]  # sheet columns that must be given (data, image, alignment)
    data_help: str                   # what the sheet's `data` column holds
    unit: str                        # what one row measures (contracts.UNITS); a reader may say otherwise
    unit_diameter_um: float          # its nominal diameter (readers use the data's own when given)
    has_expression: bool             # False: H&E only, no table to train or score on
    simulated: bool                  # the demo simulator writes this technology
    read: Callable                   # (paths by role, sample, mpp, IngestSettings, progress) -> SampleParts

    def required(self, data: str | Path | None) -> tuple[str, ...]:
        """The sheet columns this sample needs; a converted SpatialData carries its H&E."""
        if self.name == "xenium" and data and Path(data).suffix == CONVERTED_SPATIALDATA:
            return ("data",)
        return self.required_paths


# Readers are imported when called: `pastflow ingest` of one technology loads only its own.
def _read_xenium(paths, sample, mpp, settings, progress):
    if paths["data"].suffix == CONVERTED_SPATIALDATA:
        from pastflow.ingest.xenium_zarr import read_xenium_zarr

        return read_xenium_zarr(paths["data"])
    from pastflow.ingest.xenium import read_xenium

    return read_xenium(paths["data"], paths["image"], paths["alignment"])


def _read_visium(paths, sample, mpp, settings, progress):
    from pastflow.ingest.visium import ANNDATA_SUFFIXES, read_visium, read_visium_anndata

    if paths["data"].is_file() and paths["data"].suffix in ANNDATA_SUFFIXES:
        return read_visium_anndata(paths["data"], paths["image"], mpp=mpp)
    return read_visium(paths["data"], paths["image"], sample, mpp=mpp)


def _read_visium_hd(paths, sample, mpp, settings, progress):
    from pastflow.ingest.visium_hd import read_visium_hd

    return read_visium_hd(paths["data"], paths["image"], sample, settings.visium_hd, mpp=mpp,
                          progress=progress, max_detection_mm2=settings.max_detection_mm2)


def _read_legacy_st(paths, sample, mpp, settings, progress):
    from pastflow.ingest.legacy_st import read_legacy_st

    return read_legacy_st(paths["data"], paths["image"], paths["alignment"])


def _read_hest(paths, sample, mpp, settings, progress):
    from pastflow.ingest.hest import read_hest

    return read_hest(paths["data"], paths["image"], mpp, settings.hest, progress)


def _read_he_only(paths, sample, mpp, settings, progress):
    from pastflow.ingest.he_only import read_he_only

    return read_he_only(paths["image"], mpp, progress=progress,
                        max_area_mm2=settings.max_detection_mm2)


REGISTRY: dict[str, Technology] = {t.name: t for t in (
    Technology("xenium", ("data", "image", "alignment"),
               "output bundle folder (or an already converted SpatialData .zarr)",
               "cell", 10.0, True, True, _read_xenium),
    Technology("visium", ("data", "image"), "Space Ranger outs/ (or an AnnData .h5/.h5ad)",
               "spot", 55.0, True, True, _read_visium),
    Technology("visium_hd", ("data", "image"),
               "Space Ranger outs/ (2 um bins summed into cells; else 8 or 16 um bins as spots)",
               "cell", 10.0, True, True, _read_visium_hd),
    Technology("legacy_st", ("data", "image", "alignment"), "counts .tsv(.gz)",
               "spot", 100.0, True, False, _read_legacy_st),
    # unit and diameter come from each sample (spots, HEST's pseudo-spots, or Xenium cells)
    Technology("hest", ("data", "image"), "HEST-1k st/<id>.h5ad (metadata/<id>.json beside st/)",
               "spot", 55.0, True, False, _read_hest),
    Technology("he_only", ("image",), "empty (the slide is `image`)",
               "cell", 10.0, False, True, _read_he_only),
)}
NAMES = tuple(REGISTRY)
SIMULATED = tuple(name for name, t in REGISTRY.items() if t.simulated)


def technology(name: str, source: str | Path | None = None) -> Technology:
    """The registry entry of ``name``; :class:`InputError` naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(source, f"unknown technology {name!r}; choose one of "
                                 f"{', '.join(NAMES)}") from None
