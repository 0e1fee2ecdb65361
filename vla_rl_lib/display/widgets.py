"""An interactive frame browser: Play + slider + image. For live JupyterLab sessions only.

A widget's state is not part of a saved notebook's readable record, so with interactive=False
(papermill, nbval, CI) the browser falls back to the static `show_frames`.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from vla_rl_lib.display.media import Frames, as_frames, show_frames


def _png(frame: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def frame_browser(frames: Frames, fps: float = 10.0, interactive: bool = True) -> Any:
    """Return an ipywidgets box to step through frames, or show static frames and return None."""
    array = as_frames(frames)
    if not interactive:
        show_frames(array, fps=fps)
        return None
    try:
        import ipywidgets as widgets
    except ImportError as exc:
        raise ImportError(
            "frame_browser(interactive=True) needs ipywidgets: pip install -e .[dev] "
            "(or pass interactive=False for a static filmstrip and GIF)"
        ) from exc
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")

    cache: dict[int, bytes] = {}

    def png(t: int) -> bytes:
        if t not in cache:
            cache[t] = _png(array[t])
        return cache[t]

    last = len(array) - 1
    width = max(array.shape[2], 256)  # small sim cameras are hard to see at native size
    image = widgets.Image(value=png(0), format="png", width=width)
    slider = widgets.IntSlider(value=0, min=0, max=last, description="t")
    play = widgets.Play(value=0, min=0, max=last, interval=max(1, round(1000 / fps)))
    widgets.jslink((play, "value"), (slider, "value"))
    slider.observe(lambda change: setattr(image, "value", png(change["new"])), names="value")
    return widgets.VBox([widgets.HBox([play, slider]), image])
