"""Ingestion: one sample of any supported technology -> one SpatialData zarr.

Readers (one module per format, each returning :class:`~pastflow.ingest.common.SampleParts`):
``xenium`` (XOA bundle + post-Xenium H&E + alignment csv), ``xenium_zarr`` (Xenium already
converted to SpatialData), ``visium`` (Space Ranger ``outs/`` or an AnnData), ``visium_hd``
(2 um bins summed into cells by ``bins_to_cells``, read in chunks by ``tenx_h5``; else 8 or
16 um bins as spots), ``legacy_st`` (HER2ST layout), ``he_only`` (cells = nuclei found by ``nuclei``).
``common`` assembles the contract's elements, ``he_image`` the lazy H&E element, ``sample``
runs one sample end to end, ``cli`` is ``pastflow ingest``.
"""
