"""Names shared between stages: sample-sheet columns and what an ingested sample holds.

Every ingested sample is one SpatialData zarr (``results/ingest/{sample}.zarr``) with

- ``images["he"]``: the H&E (RGB, ``c, y, x``), in H&E level-0 pixels (the ``he_pixels``
  coordinate system; identity transform);
- ``shapes["cells"]``: cell (or spot / bin) shapes in ``he_pixels``;
- ``tables["table"]``: an AnnData, one row per cell (or spot / bin), ``X`` raw counts
  (CSR float32; ``n x 0`` for H&E-only slides), ``obs`` columns listed in :data:`OBS_COLUMNS`,
  ``obsm["spatial"]`` = ``[x_px, y_px]``, and ``uns["pastflow"]`` holding the keys of
  :data:`UNS_KEYS`.

``vendor_to_he`` is the 3x3 affine (row-major list) that maps vendor coordinates
``[x, y, 1]`` (microns for Xenium and Visium HD, full-resolution pixels for Visium and legacy
ST) to H&E level-0 pixels; it is stored with the data, never implied.
"""


# Sample sheet (config/samples.tsv). Paths are relative to config["data_root"] unless absolute.
#   data:      xenium: the output bundle folder; visium: Space Ranger `outs/`;
#              visium_hd: Space Ranger HD `outs/`; legacy_st: counts `.tsv(.gz)`;
#              hest: a HEST-1k sample's `st/<id>.h5ad` (`metadata/<id>.json` beside `st/`);
#              he_only: empty (the slide is `image`)
#   image:     the full-resolution H&E (OME-TIFF, vendor WSI, TIFF, JPEG or PNG)
#   alignment: xenium: `*_he_imagealignment.csv`; legacy_st: the spot `*_selection.tsv`;
#              otherwise empty
SHEET_COLUMNS = ("sample", "patient", "technology", "data", "image", "alignment", "split")
# Optional columns: a sheet may leave them out; the loaded sheet always has them ('' = not given).
#   mpp:       level-0 microns per pixel of this sample's H&E, for a file that records none;
#              empty = the config key `ingest.mpp`
#   cores:     a tissue-microarray slide's core map (TSV: core, patient, x_px, y_px,
#              radius_px; pastflow.cores), whose patients replace the row's `patient` (then
#              the TMA block's id) for survival and per-core H-scores; empty = one section
SHEET_MPP_COLUMN = "mpp"
SHEET_CORES_COLUMN = "cores"
OPTIONAL_SHEET_COLUMNS = (SHEET_MPP_COLUMN, SHEET_CORES_COLUMN)

OBS_COLUMNS = ("cell_id", "sample", "patient", "x_px", "y_px", "x_vendor", "y_vendor")

UNS_KEYS = (
    "technology",   # a name in pastflow.technologies.REGISTRY
    "sample",
    "patient",
    "slide_path",   # absolute path of the H&E file the patches stage reads (the vendor pyramid)
    "mpp",          # microns per H&E level-0 pixel
    "vendor_to_he",  # 3x3 affine, vendor space -> H&E level-0 pixels
    "vendor_space",  # "microns" or "fullres_pixels" or "he_pixels"
    "unit",         # what one row measures: "cell" (one cell) or "spot" (a spot or bin of many)
    "unit_diameter_um",  # cell ~ 10, Visium spot 55, HD bin 8, legacy ST spot 100
)
# Units of measurement. A cell is cut at the cell patch size (patches.patch_um); a spot at its
# own diameter plus context (patches.spot_context_um), so the patch shows what was measured.
UNITS = ("cell", "spot")

IMAGE_KEY = "he"
SHAPES_KEY = "cells"
TABLE_KEY = "table"
HE_SPACE = "he_pixels"

# The resolution contract. Two resolutions (microns per pixel), or two patch sides in
# microns, are the same when they differ by at most this fraction, |a / b - 1| <= 0.05:
# a patch store and the model that reads it (embed, predict: refused beyond it), the
# training stores of one model (pretrain: refused), a slide's resolution as given and as its
# file records it (patches, ingest: warned). Stores built at one target resolution differ by at most
# 2 x LEVEL_MPP_TOLERANCE, so they always agree.
MPP_TOLERANCE = 0.05
# A pyramid level this close to the target resolution (relative) is read as it is, not
# resampled: resampling would blur every pixel for a scale change under a pixel across a patch.
LEVEL_MPP_TOLERANCE = 0.02
