"""Pretrain stage: the ``pastflow pretrain`` command and its settings; the model, losses and
training loop it runs live in :mod:`pastflow.models`."""
