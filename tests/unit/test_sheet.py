"""Sample sheet and config validation: a bad sheet fails with the line and the column."""

from __future__ import annotations

import copy

import pytest
import yaml

from pastflow.errors import InputError
from pastflow.config import resolve_workflow_config
from pastflow.sheet import load_sample_sheet

HEADER = "sample\tpatient\ttechnology\tdata\timage\talignment\tsplit\n"


def write_sheet(tmp_path, *rows):
    path = tmp_path / "samples.tsv"
    path.write_text(HEADER + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_default_sheet_and_config_are_valid(repo_root):
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    resolve_workflow_config(config)
    sheet = load_sample_sheet(repo_root / config["samples"], check_paths=False)
    assert len(sheet) >= 4
    assert set(sheet["split"]) >= {"train", "test"}
    assert {"xenium", "visium"} <= set(sheet["technology"])


def test_paths_resolve_against_data_root(tmp_path):
    (tmp_path / "img.tif").write_bytes(b"x")
    path = write_sheet(tmp_path, ["s1", "p1", "he_only", "", "img.tif", "", "test"])
    sheet = load_sample_sheet(path, data_root=tmp_path)
    assert sheet.loc["s1", "image"] == str(tmp_path / "img.tif")
    assert sheet.loc["s1", "data"] == ""


@pytest.mark.parametrize(
    "row, expected",
    [
        (["s 1", "p1", "he_only", "", "x", "", "test"], "line 2 (sample 's 1'), column 'sample'"),
        (["s1", "p1", "merfish", "", "x", "", "test"], "column 'technology'"),
        (["s1", "p1", "he_only", "", "x", "", "holdout"], "column 'split'"),
        (["s1", "p1", "xenium", "d", "x", "", "train"], "column 'alignment': required"),
        (["../etc", "p1", "he_only", "", "x", "", "test"], "not a safe name"),
    ],
)
def test_bad_rows_name_line_and_column(tmp_path, row, expected):
    path = write_sheet(tmp_path, row)
    with pytest.raises(InputError) as err:
        load_sample_sheet(path, check_paths=False)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_mpp_column_is_optional(tmp_path):
    without = write_sheet(tmp_path, ["s1", "p1", "he_only", "", "x.png", "", "test"])
    sheet = load_sample_sheet(without, check_paths=False)
    assert sheet.loc["s1", "mpp"] == ""
    with_mpp = tmp_path / "with_mpp.tsv"
    with_mpp.write_text(HEADER.replace("\n", "\tmpp\n")
                        + "s1\tp1\the_only\t\tx.png\t\ttest\t0.25\n"
                        + "s2\tp1\the_only\t\ty.png\t\ttest\t\n")
    sheet = load_sample_sheet(with_mpp, check_paths=False)
    assert sheet.loc["s1", "mpp"] == "0.25" and sheet.loc["s2", "mpp"] == ""
    assert list(sheet.columns[:7]) == HEADER.split()


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf"])
def test_bad_mpp_names_line_column_and_config_key(tmp_path, value):
    path = tmp_path / "samples.tsv"
    path.write_text(HEADER.replace("\n", "\tmpp\n")
                    + "s1\tp1\the_only\t\tx.png\t\ttest\t0.5\n"
                    + f"s2\tp1\the_only\t\ty.png\t\ttest\t{value}\n")
    with pytest.raises(InputError) as err:
        load_sample_sheet(path, check_paths=False)
    message = str(err.value)
    assert message.startswith(f"{path}: line 3 (sample 's2'), column 'mpp': {value!r} is not a "
                              "positive number of microns per pixel")
    assert "ingest.mpp" in message and "\n" not in message


def test_duplicate_sample_names_first_line(tmp_path):
    row = ["s1", "p1", "he_only", "", "x", "", "test"]
    path = write_sheet(tmp_path, row, ["s2", "p1", "he_only", "", "x", "", "test"], row)
    with pytest.raises(InputError, match=r"line 4 .*duplicate sample id \(first on line 2\)"):
        load_sample_sheet(path, check_paths=False)


def test_missing_path_is_named(tmp_path):
    path = write_sheet(tmp_path, ["s1", "p1", "he_only", "", "nope.svs", "", "test"])
    with pytest.raises(InputError, match=r"column 'image': path does not exist: .*nope.svs"):
        load_sample_sheet(path, data_root=tmp_path)


@pytest.mark.parametrize("content, expected", [
    ("", "sample sheet is empty"),
    (HEADER, "header but no samples"),
    ("sample\tpatient\n", "missing column"),
])
def test_empty_or_malformed_sheets(tmp_path, content, expected):
    path = tmp_path / "samples.tsv"
    path.write_text(content)
    with pytest.raises(InputError, match=expected):
        load_sample_sheet(path)


def test_config_errors_name_the_key(repo_root):
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    bad = copy.deepcopy(config)
    bad["patches"] = {"mpp": -1}
    with pytest.raises(InputError, match=r"config.yaml: config key 'patches.mpp': must be > 0"):
        resolve_workflow_config(bad, source="config.yaml")
    bad = copy.deepcopy(config)
    bad["typo_key"] = 1
    with pytest.raises(InputError, match="unknown config key 'typo_key'"):
        resolve_workflow_config(bad)


def test_converted_xenium_zarr_needs_no_image(tmp_path):
    path = write_sheet(tmp_path, ["x1", "p1", "xenium", "x.zarr", "", "", "train"])
    assert load_sample_sheet(path, check_paths=False).loc["x1", "data"].endswith("x.zarr")


# --------------------------------------------------------------------------- the sheet as a whole


def test_a_patient_in_two_splits_is_refused_naming_both_lines_and_the_fix(tmp_path):
    path = write_sheet(tmp_path, ["s1", "p1", "he_only", "", "a.tif", "", "train"],
                       ["s2", "p2", "he_only", "", "b.tif", "", "test"],
                       ["s3", "p1", "he_only", "", "c.tif", "", "test"])
    with pytest.raises(InputError) as err:
        load_sample_sheet(path, check_paths=False)
    assert str(err.value) == (
        f"{path}: line 4 (sample 's3'), column 'split': patient 'p1' is 'test' here but 'train' "
        "on line 2; put every slide of a patient in one split (or, for a one-patient cohort "
        "that holds out a section, set the config key split_by_patient: false)")
    sheet = load_sample_sheet(path, check_paths=False, split_by_patient=False)
    assert list(sheet["split"]) == ["train", "test", "test"]


def test_her2st_holds_out_a_section_of_its_one_patient_by_config(repo_root):
    """The real one-patient cohort: C6 is a held-out section of patient C, said in its config."""
    config = yaml.safe_load((repo_root / "config" / "her2st.yaml").read_text())
    assert config["split_by_patient"] is False
    sheet_path = repo_root / config["samples"]
    with pytest.raises(InputError, match="patient 'C' is 'test' here but 'train' on line 2"):
        load_sample_sheet(sheet_path, check_paths=False)
    settings = resolve_workflow_config(config)
    sheet = load_sample_sheet(sheet_path, check_paths=False,
                              split_by_patient=settings.split_by_patient)
    assert list(sheet.index) == ["C2", "C3", "C4", "C5", "C6"]


@pytest.mark.parametrize("column", ["image", "data"])
def test_one_input_under_two_sample_ids_is_refused(tmp_path, column):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "he.tif").write_bytes(b"x")
    (tmp_path / "d" / "counts.tsv.gz").write_bytes(b"x")
    (tmp_path / "d" / "sel.tsv").write_bytes(b"x")
    (tmp_path / "d" / "other.tif").write_bytes(b"x")
    (tmp_path / "d" / "other.tsv.gz").write_bytes(b"x")
    (tmp_path / "link.tif").symlink_to(tmp_path / "d" / "he.tif")
    first = ["s1", "p1", "legacy_st", "d/counts.tsv.gz", "d/he.tif", "d/sel.tsv", "train"]
    # The same file spelt another way: through ../ or a symlink, listed as a test sample.
    second = (["s2", "p2", "legacy_st", "d/other.tsv.gz", "link.tif", "d/sel.tsv", "test"]
              if column == "image" else
              ["s2", "p2", "legacy_st", "d/../d/counts.tsv.gz", "d/other.tif", "d/sel.tsv", "test"])
    path = write_sheet(tmp_path, first, second)
    with pytest.raises(InputError) as err:
        load_sample_sheet(path, data_root=tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: line 3 (sample 's2'), column '{column}': ")
    assert f"is already the {column} of sample 's1' on line 2; list each slide once" in message


def test_hash_inside_a_path_is_data_and_comment_lines_keep_line_numbers(tmp_path):
    """Only a line starting with '#' is a comment: 'run#2/he.tif' is a path, not 'run'."""
    (tmp_path / "run#2").mkdir()
    (tmp_path / "run#2" / "he.tif").write_bytes(b"x")
    path = tmp_path / "samples.tsv"
    path.write_text("# a cohort\n# written by hand\n" + HEADER
                    + "s1\tp1\the_only\t\trun#2/he.tif\t\ttest\n\n"
                    + "s2\tp2\the_only\t\tmissing #3.tif\t\ttest\n")
    with pytest.raises(InputError) as err:
        load_sample_sheet(path, data_root=tmp_path)
    # two comments, the header, s1 and a blank line come first: s2 is line 6 of the file
    assert str(err.value).startswith(f"{path}: line 6 (sample 's2'), column 'image': path does "
                                     f"not exist: {tmp_path / 'missing #3.tif'}")
    path.write_text("# a cohort\n" + HEADER + "s1\tp1\the_only\t\trun#2/he.tif\t\ttest\n")
    sheet = load_sample_sheet(path, data_root=tmp_path)
    assert sheet.loc["s1", "image"] == str(tmp_path / "run#2" / "he.tif")
    assert sheet.loc["s1", "split"] == "test"


def test_a_row_with_too_many_values_names_its_line(tmp_path):
    path = write_sheet(tmp_path, ["s1", "p1", "he_only", "", "a.tif", "", "test"],
                       ["s2", "p2", "he_only", "", "b.tif", "", "test", "extra"])
    with pytest.raises(InputError, match=r"line 3: 8 tab-separated values but the header has 7 "
                                         r"columns; remove the extra tabs"):
        load_sample_sheet(path, check_paths=False)
