"""Simulated cohorts in real vendor formats, with ground truth beside the data.

``pastflow simulate`` writes H&E pyramids (OME-TIFF and OpenSlide-readable generic TIFF),
Xenium bundles, Visium and Visium HD Space Ranger ``outs/`` folders, and a clinical table
whose survival follows a known hazard, so the demo workflow goes through the real readers
(spatialdata-io, OpenSlide, tifffile).

Modules: ``clinical`` (patient biology, hazard, survival), ``genes`` (the panel),
``biology`` (cell types, nucleus shapes, expression), ``tissue`` (domains, cell placement),
``geometry`` (tissue microns <-> H&E pixels), ``render`` (H&E tiles), ``tiff`` (pyramids),
``tenx`` (10x HDF5 and ids), ``xenium``, ``visium``, ``visium_hd``, ``spaceranger``,
``slide`` (one section), ``cohort`` (entry points), ``tma`` (a tissue microarray: many
patients' cores on one Xenium slide), ``cli``.
"""
