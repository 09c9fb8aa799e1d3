"""The ``stain`` stage: virtual IHC from predicted expression.

- ``panel.py``: the marker panel (marker -> genes, compartment, cut-offs) and marker scores;
- ``calibrate.py``: 0/1+/2+/3+ cut-offs calibrated on the training slides, for measured
  scores (their measured expression) and for predicted ones (the model's predictions);
- ``score.py``: binning, region grid, H-scores;
- ``deconvolve.py``: colour deconvolution (scikit-image) and the DAB pixel H-score;
- ``render.py``: the virtual stain (hematoxylin + Beer-Lambert DAB per cell), tile by tile;
- ``pyramid.py``: tiled pyramidal TIFF output; ``sample.py``: one sample's levels and H-scores
  (``pastflow stain``); ``images.py``: its virtual stains and thumbnails, drawn from those
  levels (``pastflow stain-images``); ``settings.py``: config section ``stain``;
- ``agreement.py``: predicted vs measured H-scores (r, quadratic kappa, intervals, reasons);
  ``plots.py``: figures; ``io.py``: reading the prediction and QC tables; ``cli.py``.
"""
