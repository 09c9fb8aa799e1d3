"""The folder layout of HEST-1k (Jaume et al., NeurIPS 2024; huggingface.co/datasets/MahmoodLab/hest).

One root holds every sample's files, one folder per kind, each named after the sample id
(as ``hest.HESTData._read_st`` of the HEST library finds them)::

    st/<id>.h5ad                                counts; obsm["spatial"] = spot centres, full-res px
    wsis/<id>.tif                               the H&E, pyramidal generic TIFF
    metadata/<id>.json                          st_technology, pixel_size_um_estimated, spot_diameter, ...
    xenium_seg/<id>_xenium_cell_seg.parquet     Xenium: the instrument's cells, aligned to the H&E
    transcripts/<id>_transcripts.parquet        Xenium: every transcript, with cell_id, he_x, he_y

The ingest reader, the HEST simulator and the cohort builder all take the layout from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ST_DIR, WSI_DIR, METADATA_DIR = "st", "wsis", "metadata"
XENIUM_SEG_DIR, TRANSCRIPTS_DIR = "xenium_seg", "transcripts"

# Values of the metadata's `st_technology` (HEST_v1_1_0.csv: 602, 552, 10 and 65 samples).
VISIUM, LEGACY_ST, VISIUM_HD, XENIUM = "Visium", "Spatial Transcriptomics", "Visium HD", "Xenium"
ST_TECHNOLOGIES = (VISIUM, LEGACY_ST, VISIUM_HD, XENIUM)
# HEST's nominal row of each technology, (diameter, centre-to-centre pitch) in microns, as its
# readers make them: Visium and ST spots; Visium HD 16 um bins pooled into 128 um squares and
# Xenium transcripts pooled into 100 um squares, laid edge to edge (side = pitch).
SPOT_UM = {VISIUM: (55.0, 100.0), LEGACY_ST: (100.0, 200.0), VISIUM_HD: (128.0, 128.0),
           XENIUM: (100.0, 100.0)}
POOLED = (VISIUM_HD, XENIUM)


@dataclass(frozen=True)
class HestPaths:
    """Where the files of sample ``sample_id`` lie under ``root``."""

    root: Path
    sample_id: str

    @classmethod
    def of_st(cls, st_h5ad: str | Path) -> "HestPaths":
        """The paths of the sample whose ``st/<id>.h5ad`` is ``st_h5ad`` (root = its grandparent)."""
        st_h5ad = Path(st_h5ad)
        return cls(st_h5ad.parent.parent, st_h5ad.stem)

    @property
    def st(self) -> Path:
        return self.root / ST_DIR / f"{self.sample_id}.h5ad"

    @property
    def wsi(self) -> Path:
        return self.root / WSI_DIR / f"{self.sample_id}.tif"

    @property
    def metadata(self) -> Path:
        return self.root / METADATA_DIR / f"{self.sample_id}.json"

    @property
    def cell_seg(self) -> Path:
        return self.root / XENIUM_SEG_DIR / f"{self.sample_id}_xenium_cell_seg.parquet"

    @property
    def transcripts(self) -> Path:
        return self.root / TRANSCRIPTS_DIR / f"{self.sample_id}_transcripts.parquet"
