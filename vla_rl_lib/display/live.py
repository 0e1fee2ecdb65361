"""A live training plot in the manner of fastprogress: one image updated in place.

In a Jupyter kernel the plot is shown once through `display(..., display_id=True)` and then
replaced through the handle, at most every `throttle_s` seconds; `close()` draws the final
state, so a saved notebook holds exactly one, final PNG and no widget. In a terminal the same
calls print one compact line per refresh.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from matplotlib.figure import Figure

from vla_rl_lib.display._output import (
    DisplayFn,
    DisplayHandle,
    Mode,
    ipython_display,
    png_image,
    resolve_mode,
)
from vla_rl_lib.display.plots import CURVE_KEYS, STEP_KEYS, draw_curves, figure_to_png


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class LivePlot:
    """Show training curves while they are being produced.

    >>> with LivePlot() as live:
    ...     for update in range(n_updates):
    ...         record = {"update": update, "env_steps": ..., "train/success_rate": ...}
    ...         writer.log(record)
    ...         live.update(record)

    keys are plotted against each of `x_keys` present in the records (update and env steps).
    Records are kept in memory; `records` returns them. `display_fn` and `clock` exist so
    tests (and other front ends) can stand in for IPython's display and the wall clock.
    """

    def __init__(
        self,
        keys: Sequence[str] = CURVE_KEYS,
        *,
        x_keys: Sequence[str] = STEP_KEYS,
        throttle_s: float = 2.0,
        mode: Mode = "auto",
        ci_counts: Mapping[str, str] | None = None,
        display_fn: DisplayFn | None = None,
        image_fn: Callable[[bytes], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
        draw: Callable[[Figure, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        if not keys:
            raise ValueError("LivePlot needs at least one metric key to plot")
        if throttle_s < 0:
            raise ValueError(f"throttle_s must be >= 0 seconds, got {throttle_s}")
        self.keys = list(keys)
        self.x_keys = list(x_keys)
        self.throttle_s = throttle_s
        self.mode = resolve_mode(mode)
        self.ci_counts = ci_counts
        self._display_fn = display_fn
        self._image_fn = image_fn or png_image
        self._clock = clock
        self._stream = stream
        self._draw = draw  # e.g. plots.draw_training; None: `keys` against each of `x_keys`
        self._records: list[dict[str, Any]] = []
        self._handle: DisplayHandle | None = None
        self._last_shown: float | None = None
        self._shown_count = 0  # records already reflected in the output
        self._closed = False

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def update(self, record: Mapping[str, Any]) -> None:
        """Add one metrics record; redraw if `throttle_s` has passed since the last redraw."""
        if self._closed:
            raise RuntimeError("LivePlot is closed; create a new one to keep plotting")
        self._records.append(dict(record))
        now = self._clock()
        if self._last_shown is None or now - self._last_shown >= self.throttle_s:
            self._show()
            self._last_shown = now

    def close(self) -> None:
        """Draw the final state (if anything changed since the last redraw) and stop."""
        if not self._closed and len(self._records) > self._shown_count:
            self._show()
        self._closed = True

    def __enter__(self) -> LivePlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- output ---------------------------------------------------------------------------

    def _show(self) -> None:
        self._shown_count = len(self._records)
        if self.mode == "terminal":
            print(self.text_line(), file=self._stream or sys.stdout, flush=True)
            return
        image = self._image_fn(self.png())
        if self._handle is None:
            display = self._display_fn or ipython_display()
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)

    def text_line(self) -> str:
        """The latest value of every x key and plotted key, e.g. `update 12 | env_steps 3,072 | ...`."""
        latest: dict[str, Any] = {}
        for r in self._records:
            latest.update({k: r[k] for k in (*self.x_keys, *self.keys) if k in r})
        parts = [
            f"{k} {_format_value(latest[k])}" for k in (*self.x_keys, *self.keys) if k in latest
        ]
        return " | ".join(parts)

    def png(self) -> bytes:
        """The current plot as PNG bytes."""
        if self._draw is not None:
            fig = Figure(figsize=(10, 5.6), layout="constrained")
            self._draw(fig, self._records)
            return figure_to_png(fig)
        xs = [x for x in self.x_keys if any(x in r for r in self._records)] or self.x_keys[:1]
        fig = Figure(figsize=(4.2 * len(xs), 2.4 * len(self.keys)), layout="constrained")
        draw_curves(fig, self._records, xs, self.keys, self.ci_counts)
        return figure_to_png(fig)
