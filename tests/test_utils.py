"""Atomic writes keep ordinary permissions and never leave temporaries."""

from __future__ import annotations

import os
import stat

from vla_rl_lib.utils import make_temp_dir, write_bytes_atomic, write_text_atomic


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
