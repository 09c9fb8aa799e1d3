"""The ``patches`` stage: an RGB patch centred on every cell (or spot) of a slide.

- :func:`build_patch_store` (``store.py``): slide -> one HDF5 patch store per sample;
- :class:`PatchStore` (``reader.py``): random access to any cell's patch, for training loaders;
  :func:`export_patches` / :func:`export_patches_h5` for the literal ``[n, 3, h, w]`` layout;
- :func:`save_gallery` (``gallery.py``): a figure of sampled patches to check centring;
- ``planar_writer.py``: writes the store image band by band in a background thread (with
  ``O_DIRECT`` where the file system allows);
- ``tissue.py``: the tissue mask behind the ``in_tissue`` flag; ``resample.py``: seamless
  strip-wise resampling; ``cli.py``: ``pastflow patches``.
"""
