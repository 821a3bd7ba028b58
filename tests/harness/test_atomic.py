"""Whole-or-nothing writes: the one helper every report, manifest, cache entry and dataset goes through."""

import pytest

from harness.atomic import staged_file, staged_folder, write_atomic


def test_write_atomic_text_and_bytes_land_whole_in_a_new_folder(tmp_path):
    write_atomic(tmp_path / "a" / "b.txt", "naïve\n")
    write_atomic(tmp_path / "a" / "c.png", b"\x89PNG\x00")
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "naïve\n"
    assert (tmp_path / "a" / "c.png").read_bytes() == b"\x89PNG\x00"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt", "c.png"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), staged_file(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_concurrent_writers_stage_to_different_files(tmp_path):
    path = tmp_path / "entry.json"
    with staged_file(path) as first, staged_file(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("1")
        second.write_text("2")
    assert path.read_text() == "1"  # the last to finish wins, whole


def test_a_failed_folder_is_removed_and_the_target_never_appears(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(KeyboardInterrupt), staged_folder(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with staged_folder(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
    assert (out / "model.safetensors").read_bytes() == b"whole"
