"""The ``predict`` and ``evaluate`` stages: expression from H&E, scored on held-out samples.

- ``head.py``: the trained reconstruction head -> log1p expression (:func:`predict_log_expression`);
- ``sample.py``: :func:`predict_sample`, one sample -> ``results/predict/{sample}.h5ad``;
- ``metrics.py``: per-gene Pearson r (constant prediction -> 0) and the most variable genes;
- ``ridge.py``: the HEST-Benchmark probe (standardise, PCA 256, ridge);
- ``evaluate.py``: the five methods (trained head, HEST probe on trained and on random
  embeddings and on morphology features, mean expression) on arrays, two gene selections
  (chosen on the training cells; the HEST convention, on the test sample), bootstrap
  intervals, and leave-one-patient-out;
- ``cohort.py``: :func:`evaluate_cohort` (test samples: tables and figures) and
  :func:`evaluate_lopo` (leave-one-patient-out) on files; ``plots.py``: the figures;
- ``settings.py``: config sections ``predict`` and ``evaluate``;
- ``cli.py``: ``pastflow predict``, ``pastflow evaluate`` and ``pastflow evaluate-lopo``.
"""
