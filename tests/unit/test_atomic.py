"""Outputs appear complete or not at all."""

from __future__ import annotations

import pytest

from pastflow.atomic import atomic_outputs, atomic_path


def test_file_renamed_on_success(tmp_path):
    target = tmp_path / "sub" / "out.h5"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.name.endswith(".h5")  # writers that dispatch on the suffix still work
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["out.h5"]


def test_directory_output_replaces_old(tmp_path):
    target = tmp_path / "s.zarr"
    target.mkdir()
    (target / "stale").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == ["new"]


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.tsv"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_several_outputs_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.h5ad"
    with pytest.raises(RuntimeError):
        with atomic_outputs(a, b) as (ta, tb):
            ta.write_text("a")
            raise RuntimeError("second writer failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_outputs(a, b) as (ta, tb):
        ta.write_text("a")
        tb.write_text("b")
    assert a.read_text() == "a" and b.read_text() == "b"


def test_writer_that_wrote_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="produced nothing"):
        with atomic_path(tmp_path / "x"):
            pass
