"""Recognise the samples in a folder of vendor outputs, by the files each layout always has.

A folder is walked once, top-down; a recognised sample folder is not entered again, so its
own images (Xenium morphology stacks, Space Ranger's downsampled PNGs) are never taken for
slides. In order, a folder is:

- a HEST-1k root: ``st/<id>.h5ad`` beside ``wsis/`` or ``metadata/`` (one sample per id);
- a Xenium bundle: holds ``experiment.xenium``; or a SpatialData ``.zarr`` with ``tables/``;
- Space Ranger ``outs/``: holds ``spatial/`` and ``binned_outputs/`` (Visium HD) or a
  ``filtered_feature_bc_matrix`` (Visium);
- else its files are looked at: ``<name>_selection.tsv`` beside ``<name>.tsv(.gz)`` is a legacy
  ST sample, an AnnData ``.h5ad``/``.h5`` with spot positions a Visium one, and every slide no
  sample claimed is an H&E-only slide.

A sample's H&E is the slide file inside its folder, else beside it; when several could be it,
the one named like an H&E (``he``, ``h&e``, ``hne``) wins, and otherwise the image is left empty
with the candidates in a note. Nothing is decoded: only names and file headers are read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pastflow.hest_layout import METADATA_DIR, ST_DIR, TRANSCRIPTS_DIR, WSI_DIR, XENIUM_SEG_DIR

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".tif", ".tiff", ".btf",
                  ".jpg", ".jpeg", ".png")
# Names that say what a folder or file is, not which sample: the sample is named by its parent.
GENERIC_NAMES = {"outs", "xenium", "output", "outputs", "data", "raw", "spatial", "he", "h&e",
                 "hne", "image", "slide", "wsi"}
# Xenium's own image stacks (DAPI and boundary stains), never the H&E.
XENIUM_OWN_IMAGES = re.compile(r"^morphology(_focus|_mip)?(_\d+)?\.ome\.tif$", re.IGNORECASE)
HE_NAME = re.compile(r"(^|[^a-z])(he|h&e|hne|h_e)([^a-z]|$)", re.IGNORECASE)
SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ScannedSample:
    """One guessed sheet row; ``notes`` say what the user must check or fill."""

    sample: str
    technology: str
    data: Path | None = None
    image: Path | None = None
    alignment: Path | None = None
    notes: list[str] = field(default_factory=list)
    ambiguous: list[Path] = field(default_factory=list)  # files that could be its image or alignment


def is_slide(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(SLIDE_SUFFIXES) and not name.startswith(".")


def sample_name(path: Path) -> str:
    """The id a folder or file suggests: its name, or its parent's for a generic name."""
    name = path.name
    for suffix in (".ome.tif", ".ome.tiff", *SLIDE_SUFFIXES, ".zarr", ".h5ad", ".h5",
                   ".tsv.gz", ".tsv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.lower() in GENERIC_NAMES and path.parent.name:
        return sample_name(path.parent)
    return name


def _pick(sample: ScannedSample, what: str, candidates: list[Path]) -> None:
    """Set ``sample.<what>`` to the one candidate, or the one named after the sample, or the one
    named like an H&E; else leave it empty with a note listing them (and keep them from
    becoming samples of their own)."""
    name = sample.sample
    if len(candidates) == 1:
        setattr(sample, what, candidates[0])
        return
    for matches in (lambda c: name.lower() in c.name.lower(), lambda c: HE_NAME.search(c.name)):
        named = [c for c in candidates if matches(c)]
        if len(named) == 1:
            setattr(sample, what, named[0])
            return
    if candidates:
        sample.ambiguous += candidates
        sample.notes.append(f"{len(candidates)} files could be the {what} "
                            f"({', '.join(c.name for c in candidates[:5])}): fill `{what}`")


def _slides_near(folder: Path, claimed: set[Path], exclude=lambda p: False) -> list[Path]:
    """Unclaimed slide files in ``folder``, else beside it (in its parent)."""
    for place in (folder, folder.parent):
        found = sorted(p for p in place.iterdir()
                       if is_slide(p) and p.resolve() not in claimed and not exclude(p))
        if found:
            return found
    return []


def _xenium_bundle(folder: Path, claimed: set[Path]) -> ScannedSample:
    sample = ScannedSample(sample_name(folder), "xenium", data=folder)
    _pick(sample, "image", _slides_near(folder, claimed, lambda p: bool(
        XENIUM_OWN_IMAGES.match(p.name))))
    alignments = [p for place in (folder, folder.parent) for p in sorted(place.glob("*.csv"))
                  if "imagealignment" in p.name.lower()]
    _pick(sample, "alignment", alignments)
    if sample.image is None and not sample.notes:
        sample.notes.append("no H&E slide found in or beside the bundle: fill `image`")
    if sample.alignment is None and not any("alignment" in n for n in sample.notes):
        sample.notes.append("no *imagealignment.csv (Xenium Explorer's H&E registration) found: "
                            "fill `alignment`")
    return sample


def _spaceranger_outs(folder: Path, claimed: set[Path]) -> ScannedSample:
    technology = "visium_hd" if (folder / "binned_outputs").is_dir() else "visium"
    sample = ScannedSample(sample_name(folder), technology, data=folder)
    _pick(sample, "image", _slides_near(folder, claimed))
    if sample.image is None and not sample.notes:
        sample.notes.append("no full-resolution H&E found in or beside outs/ (Space Ranger's "
                            "tissue_*_image.png are downsampled): fill `image`")
    return sample


def _hest_root(folder: Path) -> list[ScannedSample]:
    samples = []
    for st in sorted((folder / ST_DIR).glob("*.h5ad")):
        wsi = folder / WSI_DIR / f"{st.stem}.tif"
        sample = ScannedSample(st.stem, "hest", data=st, image=wsi if wsi.is_file() else None)
        if sample.image is None:
            sample.notes.append(f"{WSI_DIR}/{st.stem}.tif is missing: download it or fill `image`")
        if not (folder / METADATA_DIR / f"{st.stem}.json").is_file():
            sample.notes.append(f"{METADATA_DIR}/{st.stem}.json is missing (the reader needs "
                                "its pixel size and spot diameter)")
        samples.append(sample)
    return samples


def _is_spot_anndata(path: Path) -> bool:
    """An AnnData file (``obs``, ``var``, ``X``) with spot positions in ``obsm/spatial``."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return all(k in fh for k in ("obs", "var", "X")) and "spatial" in fh.get("obsm", {})
    except OSError:
        return False


def _loose_files(folder: Path, files: list[Path], claimed: set[Path]) -> list[ScannedSample]:
    """Legacy ST tables and AnnData spot tables among ``folder``'s own files."""
    samples = []
    for selection in sorted(f for f in files if f.name.endswith("_selection.tsv")):
        stem = selection.name[: -len("_selection.tsv")]
        counts = next((folder / f"{stem}{s}" for s in (".tsv.gz", ".tsv")
                       if (folder / f"{stem}{s}").is_file()), None)
        if counts is None:
            continue
        sample = ScannedSample(stem, "legacy_st", data=counts, alignment=selection)
        _pick(sample, "image", _slides_near(folder, claimed))
        samples.append(sample)
    for table in sorted(f for f in files if f.suffix in (".h5ad", ".h5")):
        if _is_spot_anndata(table):
            sample = ScannedSample(sample_name(table), "visium", data=table)
            _pick(sample, "image", _slides_near(folder, claimed))
            samples.append(sample)
    return samples


def _claim(sample: ScannedSample, claimed: set[Path]) -> None:
    for path in (sample.data, sample.image, sample.alignment, *sample.ambiguous):
        if path is not None:
            claimed.add(path.resolve())


def scan_folder(root: str | Path) -> list[ScannedSample]:
    """Every sample found under ``root``, in walk order, with unique safe ids."""
    root = Path(root)
    samples: list[ScannedSample] = []
    claimed: set[Path] = set()
    he_candidates: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found: list[ScannedSample] = []
        if (folder / ST_DIR).is_dir() and any(
                (folder / d).is_dir() for d in (WSI_DIR, METADATA_DIR)):
            found = _hest_root(folder)
            dirnames[:] = [d for d in dirnames if d not in (
                ST_DIR, WSI_DIR, METADATA_DIR, XENIUM_SEG_DIR, TRANSCRIPTS_DIR)]
        elif (folder / "experiment.xenium").is_file() or (
                folder.suffix == ".zarr" and (folder / "tables").is_dir()):
            found = [_xenium_bundle(folder, claimed) if folder.suffix != ".zarr"
                     else ScannedSample(sample_name(folder), "xenium", data=folder)]
            dirnames[:] = []
        elif (folder / "spatial").is_dir() and (
                (folder / "binned_outputs").is_dir()
                or any(folder.glob("filtered_feature_bc_matrix*"))):
            found = [_spaceranger_outs(folder, claimed)]
            dirnames[:] = []
        files = [folder / f for f in sorted(filenames) if not f.startswith(".")]
        found += _loose_files(folder, files, claimed | {s.image.resolve() for s in found
                                                       if s.image is not None})
        for sample in found:
            _claim(sample, claimed)
        samples += found
        he_candidates += [f for f in files if is_slide(f)]
    for slide in he_candidates:  # every slide no sample took is a slide of its own
        if slide.resolve() not in claimed:
            samples.append(ScannedSample(sample_name(slide), "he_only", image=slide))
    _unique_ids(samples)
    return samples


def _unique_ids(samples: list[ScannedSample]) -> None:
    """Make ids safe sheet names (letters, digits, '.', '_', '-') and unique (``-2``, ``-3``)."""
    seen: dict[str, int] = {}
    for sample in samples:
        safe = SAFE_ID.sub("_", sample.sample).strip("._-") or "sample"
        if not safe[0].isalnum():
            safe = f"s{safe}"
        count = seen.get(safe.lower(), 0) + 1
        seen[safe.lower()] = count
        sample.sample = safe if count == 1 else f"{safe}-{count}"
