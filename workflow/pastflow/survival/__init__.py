"""Multimodal survival (cohort level): slide features -> patient features -> Cox models.

- :mod:`~pastflow.survival.features`: per-patient features of each modality (clinical,
  image embeddings and their cluster composition, predicted pathway scores, virtual H-scores);
- :mod:`~pastflow.survival.cox`: penalised Cox proportional hazards (lifelines) with the
  penalizer chosen by inner cross-validation, and the per-fold preprocessing (imputation,
  scaling, PCA) fitted on training patients only;
- :mod:`~pastflow.survival.cv`: repeated stratified k-fold over patients, Harrell's c-index
  and its bootstrap interval;
- :mod:`~pastflow.survival.mil`: attention-MIL over cell embeddings with a Cox loss (torch);
- :mod:`~pastflow.survival.metrics`: time-dependent AUC of cross-validated risks;
- :mod:`~pastflow.survival.plots`: Kaplan-Meier, forest, c-index and td-AUC figures;
- :mod:`~pastflow.survival.cohort`: the three jobs that tie them together,
  ``pastflow survival-features`` (patient features), ``pastflow survival`` (cross-validated
  models) and ``pastflow survival-figures``;
- :mod:`~pastflow.survival.settings`: config section ``survival``.
"""
