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
        "cells per simulated slide: one number, or sample-name patterns (shell-style, first "
        "match wins) to numbers", minimum=50)
    n_genes: int = setting(300, "genes in the simulated panel (real marker symbols plus "
                                "filler)", minimum=50)
    mpp: float = setting(0.25, "microns per pixel of the simulated H&E level 0",
                         exclusive_minimum=0, maximum=100)
    cohort_seed: int = setting(0, "seed of the patient-level parameters (composition, "
                                  "survival)", minimum=0)
    dispersion: float = setting(0.1, "negative-binomial overdispersion of simulated counts",
                                minimum=0)

    def check(self, fail) -> None:
        if isinstance(self.n_cells, dict) and not self.n_cells:
            fail("n_cells", "give one number or at least one pattern")

    def cells_for(self, sample: str) -> int:
        """``n_cells`` of ``sample``: the number, or the first pattern that matches it."""
        if isinstance(self.n_cells, int):
            return self.n_cells
        for pattern, count in self.n_cells.items():
            if fnmatch(sample, pattern):
                return count
        from pastflow.errors import InputError

        raise InputError("config", f"config key 'simulate.n_cells': no pattern matches "
                                   f"sample {sample!r}")
