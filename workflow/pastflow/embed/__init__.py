"""The ``embed`` stage: a trained model's embeddings of every cell of a sample.

- ``encode.py``: :func:`embed_images` (patch store -> image embeddings, with spatial context
  when the model has it; batches read ahead by loader workers, every GPU of the job, bf16
  on CUDA), :func:`embed_expression` (QC table -> expression embeddings),
  :func:`random_model` (the same architecture with seeded random weights, the baseline);
- ``morphology.py``: :func:`morphology_features`, hand-crafted H&E features of a batch of
  patches (stains after colour deconvolution, nuclei, texture), the morphology baseline;
- ``sample.py``: :func:`embed_sample`, one sample -> ``results/embed/{sample}.h5ad``
  (``obsm`` ``X_image``, ``X_image_random``, ``X_morphology``, ``X_expression``);
- ``resolution.py``: the resolution contract between patch stores and models (a store at
  another ``mpp`` than the model's is refused);
- ``cli.py``: ``pastflow embed``.
"""
