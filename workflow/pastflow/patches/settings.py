"""Settings of ``pastflow patches`` (config section ``patches``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting

# A patch side above this is a unit mistake (microns for pixels, or the like): 4096 px is
# 2 mm at 0.5 um/px, and one such patch is 50 MB of pixels.
MAX_PATCH_PX = 4096


@dataclass(frozen=True)
class PatchesSettings(Settings):
    """Resolution and size of the patch store; both are recorded in the store.

    What one patch shows follows the sample's unit (``uns["pastflow"]["unit"]``, set by its
    reader): a cell is cut at ``patch_um``, a spot at its diameter plus ``spot_context_um``.
    """

    def patch_um_for(self, unit: str, unit_diameter_um: float) -> float:
        """Patch side in microns for a sample whose rows are ``unit``s of that diameter."""
        return self.patch_um if unit == "cell" else unit_diameter_um + self.spot_context_um

    mpp: float = setting(0.5, "resolution of the patch store, microns per pixel (unset, with "
                              "a named foundation model as pretrain.model.image: its own)",
                         exclusive_minimum=0, maximum=100)
    patch_um: float = setting(32.0, "patch side in microns (32 um at 0.5 um/px = 64 px, cell "
                                    "scale; 112 = 224 px, HEST/STAMP; unset, with a named "
                                    "foundation model: its input side)", exclusive_minimum=0)
    spot_context_um: float = setting(10.0, "a spot (Visium, legacy ST, Visium HD bins) is cut at "
                                           "its own diameter plus this many microns of context; "
                                           "cells are cut at patch_um", minimum=0)
    context_um: float = setting(0.0, "side of an optional larger context patch in microns "
                                     "(0 = none)", minimum=0)
    workers: int | None = setting(None, "threads decoding slide tiles (null = one per CPU of "
                                        "the job but one, at most 4)", minimum=1)

    def check(self, fail) -> None:
        # Each length is checked in pixels at the store's resolution, where a patch is cut.
        for key in ("patch_um", "spot_context_um", "context_um"):
            px = getattr(self, key) / self.mpp
            if px > MAX_PATCH_PX:
                fail(key, f"{getattr(self, key):g} um is {px:,.0f} px at patches.mpp "
                          f"{self.mpp:g} um/px; at most {MAX_PATCH_PX} px a side (microns "
                          f"given for pixels?)")
        if self.patch_um / self.mpp < 1:
            fail("patch_um", f"{self.patch_um:g} um is under one pixel at patches.mpp "
                             f"{self.mpp:g} um/px")
        if self.context_um and self.context_um <= self.patch_um:
            fail("context_um", f"a context patch ({self.context_um:g} um) must be larger than "
                               f"the patch (patch_um {self.patch_um:g} um); 0 = none")
