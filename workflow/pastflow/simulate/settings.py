"""Settings of ``pastflow simulate`` (config section ``simulate``)."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class SimulateSettings(Settings):
    """The embedded demo cohort, written in real vendor formats with ground truth."""

    enabled: bool = setting(False, "simulate the sheet's samples into `simulate.out` before "
                                   "ingesting (the demo); false for real data")
    out: str = setting("results/simulated", "where simulated slides are written")
    n_cells: int | dict[str, int] = setting(
        {"cohort*": 400, "*": 2500},
        "cells per simulated slide (per core on a TMA, see `tma_cores`): one number, or "
        "sample-name patterns (shell-style, first match wins) to numbers", minimum=50)
    tma_cores: int | dict[str, int] = setting(
        {"tma*": 40, "*": 0},
        "cores per simulated slide: N > 0 makes the sample a tissue microarray of N round cores "
        "(Xenium only), each a different patient `<patient>-<core>` (core `A1`, `A2`, ...) with "
        "`n_cells` cells; one number, or sample-name patterns like `n_cells`", minimum=0)
    n_genes: int = setting(300, "genes in the simulated panel (real marker symbols plus "
                                "filler)", minimum=50)
    mpp: float = setting(0.25, "microns per pixel of the simulated H&E level 0",
                         exclusive_minimum=0, maximum=100)
    cohort_seed: int = setting(0, "seed of the patient-level parameters (composition, "
                                  "survival)", minimum=0)
    dispersion: float = setting(0.1, "negative-binomial overdispersion of simulated counts",
                                minimum=0)

    def check(self, fail) -> None:
        for key in ("n_cells", "tma_cores"):
            if isinstance(getattr(self, key), dict) and not getattr(self, key):
                fail(key, "give one number or at least one pattern")

    def cells_for(self, sample: str) -> int:
        """``n_cells`` of ``sample`` (per core on a TMA)."""
        return self._for_sample("n_cells", sample)

    def cores_for(self, sample: str) -> int:
        """``tma_cores`` of ``sample``: 0 for an ordinary one-patient slide."""
        return self._for_sample("tma_cores", sample)

    def _for_sample(self, key: str, sample: str) -> int:
        """Setting ``key`` for ``sample``: the number, or the first pattern that matches it."""
        value = getattr(self, key)
        if isinstance(value, int):
            return value
        for pattern, count in value.items():
            if fnmatch(sample, pattern):
                return count
        from pastflow.errors import InputError

        raise InputError("config", f"config key 'simulate.{key}': no pattern matches "
                                   f"sample {sample!r}")
