"""Where output goes: a Jupyter kernel (display handles) or a terminal (plain text).

IPython is a notebook dependency, not a core one, so it is imported only when a kernel runs.
"""

from __future__ import annotations

from collections.abc import Callable
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
