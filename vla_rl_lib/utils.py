"""Atomic writes with ordinary file permissions: the one copy in ``vla_rl_lib``.

A file or directory is written under a temporary name beside its final place,
flushed to disk, then renamed into place, so a reader (or a run resumed after
a crash) never sees half of one. ``lift`` keeps its own small copy: it is a
separate distribution and does not import this package.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_default_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by ``tempfile`` (0600/0700) the permissions ``open`` would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def make_temp_dir(parent: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """A temporary directory beside its final place, with ordinary permissions."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    apply_default_mode(tmp, directory=True)
    return tmp


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is renamed over ``path``.

    ``suffix`` ends the temporary name (a writer that picks its format by the
    extension needs it, e.g. ``.mp4``). On any error the temporary file is removed
    and ``path`` keeps its previous version.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        apply_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: readers never see half a file, and a crash
    leaves the previous version."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``write_bytes_atomic`` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: object) -> Path:
    """``write_text_atomic`` of ``data`` as indented JSON."""
    return write_text_atomic(path, json.dumps(data, indent=2))


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` to fill; on success it replaces ``path``.

    Every file in it is flushed to disk first. The swap is two renames: the old
    directory moves aside to ``.<name>.old``, then the new one takes its name. A
    crash between the two leaves the old one there, and ``recover_directory``
    puts it back; a crash before them leaves ``.<name>.tmp-*``, which it removes.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(path.parent, prefix=f".{path.name}.tmp-")
    try:
        yield tmp
        for file in sorted(tmp.rglob("*")):
            if file.is_file():
                _fsync(file)
        old = _old_name(path)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(path: str | os.PathLike) -> Path | None:
    """``path`` if it exists after repairing an interrupted ``atomic_directory``, else None.

    A writer killed between its two renames left only ``.<name>.old``: it is moved
    back. Temporary directories of killed writers are removed.
    """
    path = Path(path)
    old = _old_name(path)
    if not path.exists() and old.exists():
        os.replace(old, path)
    if path.parent.exists():
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    return path if path.exists() else None
