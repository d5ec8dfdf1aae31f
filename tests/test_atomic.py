"""Tests for atomic.py, the one writer every output goes through.

Run: .venv/bin/python -m pytest tests/test_atomic.py -q

Oracles: the bytes on disk, and the listing of the folder (no temporary file survives).
"""
import json

import pytest
import torch

import atomic
import plots


def test_text_and_json_round_trip(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic.write_text_atomic(path, "first\n")
    atomic.write_text_atomic(path, "second\n")
    assert path.read_text() == "second\n"
    atomic.save_json_atomic(tmp_path / "x.json", {"a": torch.tensor([1, 2]), "p": tmp_path})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2], "p": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "x.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def explode(f):
        f.write(b"half a fi")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        atomic.write_atomic(path, explode)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_folder_as_file_path_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        atomic.write_text_atomic(tmp_path, "x")
    assert list(tmp_path.iterdir()) == []


def test_figure_written_as_png(tmp_path):
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plots.save_figure_atomic(fig, tmp_path / "f.png", dpi=40)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums()


def test_replace_folder_swaps_whole_folders(tmp_path):
    target = tmp_path / "ckpt"
    atomic.replace_folder_atomic(target, lambda d: (d / "a.txt").write_text("1"))
    atomic.replace_folder_atomic(target, lambda d: (d / "b.txt").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]

    def half(d):
        (d / "c.txt").write_text("3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.replace_folder_atomic(target, half)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_folder_or_backup_finds_the_old_folder(tmp_path):
    target, old = tmp_path / "ckpt", tmp_path / "ckpt.old"
    old.mkdir()
    assert atomic.folder_or_backup(target) == old
    target.mkdir()
    assert atomic.folder_or_backup(target) == target


def test_leftovers_of_a_killed_writer_are_removed(tmp_path):
    """SIGKILL runs no cleanup: the next write of the same path removes what it left."""
    (tmp_path / ".out.txt.abc123.tmp").write_text("half")
    (tmp_path / ".ckpt.def456.tmp").mkdir()
    (tmp_path / ".other.txt.x.tmp").write_text("not ours")
    atomic.write_text_atomic(tmp_path / "out.txt", "whole")
    atomic.replace_folder_atomic(tmp_path / "ckpt", lambda d: (d / "a").write_text("1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.txt.x.tmp", "ckpt", "out.txt"]


def test_outputs_get_the_umask_modes_not_mkstemps(tmp_path):
    """mkstemp makes 0600 files; an output is as readable as open() would have made it."""
    import os
    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic.write_text_atomic(tmp_path / "out.txt", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    folder = atomic.replace_folder_atomic(tmp_path / "ckpt", lambda d: None)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
