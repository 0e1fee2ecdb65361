"""Progress bars that leave an honest record in a saved notebook.

- terminal: tqdm.
- notebook, interactive=True: tqdm's widget bar (for a person watching JupyterLab).
- notebook, interactive=False (papermill, nbval, CI): one text line updated through a display
  handle. A tqdm widget would be saved frozen at 0%; this line is saved in its final state.

nbval compares a cell against the first display of the line (it does not apply
update_display_data), and the line holds timings, so a cell showing progress must not carry
`# NBVAL_CHECK_OUTPUT`; under `--nbval-lax` such cells pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from tqdm import tqdm

from vla_rl_lib.display._output import DisplayFn, DisplayHandle, Mode, ipython_display, resolve_mode


def _pretty(text: str) -> Any:
    from IPython.display import Pretty

    return Pretty(text)


class HandleProgress:
    """A tqdm-like bar drawn as one text line through a display handle.

    Supports iteration, `update(n)`, `set_postfix(...)`, `close()` and `with`; redraws at most
    every `throttle_s` seconds and always on close, so the saved text ends at the final count.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        *,
        throttle_s: float = 0.5,
        display_fn: DisplayFn | None = None,
        text_fn: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.n = 0
        self.throttle_s = throttle_s
        self._display_fn = display_fn
        self._text_fn = text_fn or _pretty
        self._clock = clock
        self._start = clock()
        self._last_drawn: float | None = None
        self._postfix: str | None = None
        self._handle: DisplayHandle | None = None
        self._closed = False
        self._draw()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar has no iterable; call update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - (self._last_drawn or 0.0) >= self.throttle_s:
            self._draw()

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items()
        )

    def text(self) -> str:
        return tqdm.format_meter(
            self.n,
            self.total,
            self._clock() - self._start,
            prefix=self.desc,
            postfix=self._postfix,
            ncols=100,
        )

    def close(self) -> None:
        if not self._closed:
            self._draw()
            self._closed = True

    def __enter__(self) -> HandleProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _draw(self) -> None:
        line = self._text_fn(self.text())
        if self._handle is None:
            self._handle = (self._display_fn or ipython_display())(line, display_id=True)
        else:
            self._handle.update(line)
        self._last_drawn = self._clock()


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    interactive: bool = False,
    mode: Mode = "auto",
) -> Any:
    """A progress bar over `iterable` (or a manual one with `total`) suited to where it runs.

    Returns tqdm (terminal, or notebook with interactive=True) or a HandleProgress; all three
    iterate, and take update(n), set_postfix(...) and close().
    """
    if resolve_mode(mode) == "terminal":
        return tqdm(iterable, total=total, desc=desc)
    if interactive:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, total=total, desc=desc)
    return HandleProgress(iterable, total=total, desc=desc)
