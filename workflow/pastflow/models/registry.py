"""One registry of encoder builders, selected by name in the config (the timm pattern).

Encoders come in three kinds: ``image`` (patch -> feature vector), ``expression``
(log-normalised genes -> feature vector) and ``pathway`` (pathway scores -> feature vector).
A builder is registered under its kind and a name::

    @register_image_encoder("resnet18_cell")
    def resnet18_cell(**kwargs) -> nn.Module: ...

    encoder = build_image_encoder("resnet18_cell", image_px=64)

Every built encoder is an ``nn.Module`` with an integer attribute ``out_dim`` (the width of
the features its ``forward`` returns), so that the model can size its projections.
"""

from __future__ import annotations

import inspect
from typing import Callable

from pastflow.errors import InputError

KINDS = ("image", "expression", "pathway")
_BUILDERS: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}


def register_encoder(kind: str, name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``builder(**kwargs) -> nn.Module`` as encoder ``name`` of ``kind``."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown encoder kind {kind!r}; kinds: {', '.join(KINDS)}")

    def decorate(builder: Callable) -> Callable:
        if name in _BUILDERS[kind]:
            raise ValueError(f"{kind} encoder {name!r} is registered twice")
        _BUILDERS[kind][name] = builder
        return builder

    return decorate


def register_image_encoder(name: str) -> Callable[[Callable], Callable]:
    return register_encoder("image", name)


def register_expression_encoder(name: str) -> Callable[[Callable], Callable]:
    return register_encoder("expression", name)


def register_pathway_encoder(name: str) -> Callable[[Callable], Callable]:
    return register_encoder("pathway", name)


def _load_builtin_encoders() -> None:
    # The modules register their builders when imported; imported here, not at the top,
    # so that reading the registry stays cheap and free of import cycles.
    from pastflow.models import expression, image  # noqa: F401


def list_encoders(kind: str) -> list[str]:
    """Names registered for ``kind``, sorted."""
    _load_builtin_encoders()
    return sorted(_BUILDERS[kind])


def build_encoder(kind: str, name: str, **kwargs):
    """Build encoder ``name`` of ``kind`` with ``kwargs``.

    Raises:
        InputError: no such encoder (the message lists the registered names) or the
            builder rejects an argument.
    """
    _load_builtin_encoders()
    if kind not in _BUILDERS:
        raise ValueError(f"unknown encoder kind {kind!r}; kinds: {', '.join(KINDS)}")
    try:
        builder = _BUILDERS[kind][name]
    except KeyError:
        raise InputError(None, f"unknown {kind} encoder {name!r} in the config; registered: "
                               f"{', '.join(sorted(_BUILDERS[kind]))}") from None
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as err:
        # A misspelt or missing option in the config: name the encoder, not a traceback.
        raise InputError(None, f"{kind} encoder {name!r}: {err}") from None
    return builder(**kwargs)


def build_image_encoder(name: str, **kwargs):
    return build_encoder("image", name, **kwargs)


def build_expression_encoder(name: str, **kwargs):
    return build_encoder("expression", name, **kwargs)


def build_pathway_encoder(name: str, **kwargs):
    return build_encoder("pathway", name, **kwargs)
