"""Atomic writes keep ordinary permissions, never leave temporaries, and survive a crash."""

from __future__ import annotations

import os
import stat

import pytest

from vla_rl_lib.utils import (
    atomic_directory,
    atomic_file,
    make_temp_dir,
    recover_directory,
    write_bytes_atomic,
    write_text_atomic,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_use_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a" / "x.yaml", "seed: 1\n")
        write_bytes_atomic(tmp_path / "y.png", b"\x89PNG")
        made = make_temp_dir(tmp_path, prefix=".ckpt.tmp-")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "x.yaml").read_text() == "seed: 1\n"
    assert _mode(tmp_path / "a" / "x.yaml") == 0o644 and _mode(tmp_path / "y.png") == 0o644
    assert _mode(made) == 0o755
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.yaml"]


def test_replacing_keeps_one_file(tmp_path):
    for text in ("one", "two"):
        write_text_atomic(tmp_path / "f.txt", text)
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert (tmp_path / "f.txt").read_text() == "two"


def test_atomic_file_keeps_the_previous_version_when_the_writer_fails(tmp_path):
    write_text_atomic(tmp_path / "f.txt", "one")
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_file(tmp_path / "f.txt", suffix=".mp4") as tmp:
            assert tmp.name.endswith(".mp4") and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert (tmp_path / "f.txt").read_text() == "one"


def test_atomic_directory_swaps_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    for version in ("one", "two"):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text(version)
    assert (target / "weights").read_text() == "two"
    with pytest.raises(RuntimeError, match="save failed"):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("three")
            raise RuntimeError("save failed")
    assert (target / "weights").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_recover_directory_after_a_crash_between_the_two_renames(tmp_path):
    target = tmp_path / "checkpoint"
    (tmp_path / ".checkpoint.old").mkdir()  # the old one moved aside, the new one not yet in
    (tmp_path / ".checkpoint.old" / "weights").write_text("kept")
    (tmp_path / ".checkpoint.tmp-abc").mkdir()  # a killed writer's half-written copy
    assert recover_directory(target) == target
    assert (target / "weights").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    assert recover_directory(tmp_path / "missing") is None
