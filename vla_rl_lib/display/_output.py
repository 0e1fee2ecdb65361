"""Where output goes: a Jupyter kernel (display handles) or a terminal (plain text).

IPython is a notebook dependency, not a core one, so it is imported only when a kernel runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

Mode = Literal["auto", "notebook", "terminal"]


class DisplayHandle(Protocol):
    def update(self, obj: Any, **kwargs: Any) -> None: ...


DisplayFn = Callable[..., Any]  # display(obj, display_id=True) -> DisplayHandle, like IPython's


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill, nbval), False in a terminal or IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def resolve_mode(mode: Mode) -> Literal["notebook", "terminal"]:
    if mode == "auto":
        return "notebook" if in_notebook() else "terminal"
    if mode not in ("notebook", "terminal"):
        raise ValueError(f"mode must be 'auto', 'notebook' or 'terminal', got {mode!r}")
    return mode


def ipython_display() -> DisplayFn:
    from IPython.display import display

    return display


def png_image(data: bytes) -> Any:
    from IPython.display import Image

    return Image(data=data, format="png")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write to a temporary name beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
