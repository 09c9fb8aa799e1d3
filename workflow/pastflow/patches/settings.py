"""Settings of ``pastflow patches`` (config section ``patches``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class PatchesSettings(Settings):
    """Resolution and size of the patch store; both are recorded in the store."""

    mpp: float = setting(0.5, "resolution of the patch store, microns per pixel",
                         exclusive_minimum=0)
    patch_um: float = setting(32.0, "patch side in microns (32 um at 0.5 um/px = 64 px, cell "
                                    "scale; 112 = 224 px, HEST/STAMP)", exclusive_minimum=0)
    context_um: float = setting(0.0, "side of an optional larger context patch in microns "
                                     "(0 = none)", minimum=0)
    workers: int | None = setting(None, "threads decoding slide tiles (null = up to 4)",
                                  minimum=1)
