"""Camera frames to filmstrips, GIFs and videos.

Frames are uint8 RGB, shaped (T, H, W, 3) or given as a sequence of (H, W, 3) arrays.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

from vla_rl_lib.display._output import Mode, ipython_display, resolve_mode
from vla_rl_lib.utils import atomic_file, write_bytes_atomic

Frames = np.ndarray | Sequence[np.ndarray]

_LABEL_H = 12
_GAP = 2


def as_frames(frames: Frames) -> np.ndarray:
    """Validate and stack frames into one uint8 array of shape (T, H, W, 3)."""
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise ValueError(
            f"frames must be RGB shaped (T, H, W, 3) with T >= 1, got shape {array.shape}; "
            "stack a list of (H, W, 3) frames or drop an alpha channel with frames[..., :3]"
        )
    if array.dtype != np.uint8:
        raise TypeError(
            f"frames must be uint8, got {array.dtype}; convert floats in [0, 1] with "
            "(frames * 255).round().astype(np.uint8)"
        )
    return array


def sample_indices(length: int, n: int) -> list[int]:
    """`n` evenly spaced indices over range(length), always including the first and last."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n >= length:
        return list(range(length))
    if n == 1:
        return [0]
    return [round(i * (length - 1) / (n - 1)) for i in range(n)]


def filmstrip(frames: Frames, n: int = 8, path: str | os.PathLike[str] | None = None) -> bytes:
    """PNG of `n` evenly spaced frames in a row, each labelled with its time index."""
    array = as_frames(frames)
    indices = sample_indices(len(array), n)
    _, h, w, _ = array.shape
    strip = Image.new("RGB", (len(indices) * (w + _GAP) - _GAP, h + _LABEL_H), "white")
    draw = ImageDraw.Draw(strip)
    for slot, t in enumerate(indices):
        left = slot * (w + _GAP)
        strip.paste(Image.fromarray(array[t]), (left, 0))
        draw.text((left + 2, h), f"t={t}", fill="black")
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    png = buf.getvalue()
    if path is not None:
        write_bytes_atomic(path, png)
    return png


def gif_bytes(frames: Frames, fps: float = 10.0) -> bytes:
    """An endlessly looping animated GIF of the frames."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return iio.imwrite(
        "<bytes>", as_frames(frames), extension=".gif", duration=1000.0 / fps, loop=0
    )


def save_gif(frames: Frames, path: str | os.PathLike[str], fps: float = 10.0) -> Path:
    """Write an animated GIF (atomically); returns the path."""
    return write_bytes_atomic(path, gif_bytes(frames, fps))


def ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _even(array: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: repeat the last row/column where one is odd."""
    _, h, w, _ = array.shape
    return np.pad(array, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def save_video(frames: Frames, path: str | os.PathLike[str], fps: float = 10.0) -> Path:
    """Write an .mp4 (H.264, via imageio-ffmpeg) or a .gif, by the suffix of `path`.

    Without imageio-ffmpeg an .mp4 request writes a GIF beside it instead (with a warning
    saying so); the path actually written is returned.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return save_gif(frames, path, fps)
    if suffix != ".mp4":
        raise ValueError(f"save_video writes .mp4 or .gif, got {path.name!r}")
    if not ffmpeg_available():
        gif_path = path.with_suffix(".gif")
        warnings.warn(
            f"imageio-ffmpeg is not installed, so {path.name} was written as a GIF at {gif_path} "
            "(pip install imageio-ffmpeg for mp4)",
            stacklevel=2,
        )
        return save_gif(frames, gif_path, fps)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    array = _even(as_frames(frames))
    with atomic_file(path, suffix=".mp4") as tmp:  # ffmpeg picks the container by the suffix
        iio.imwrite(
            tmp,
            array,
            plugin="FFMPEG",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=1,
        )
    return path


def show_frames(frames: Frames, n: int = 8, fps: float = 10.0, mode: Mode = "auto") -> None:
    """Show a filmstrip and the animated GIF inline; in a terminal, say how to save them."""
    array = as_frames(frames)
    if resolve_mode(mode) == "terminal":
        t, h, w, _ = array.shape
        print(
            f"{t} frames of {h}x{w}: no notebook to show them in; "
            "use save_gif(frames, path) or filmstrip(frames, path=...)",
            file=sys.stdout,
        )
        return
    from IPython.display import Image as IPyImage

    display = ipython_display()
    display(IPyImage(data=filmstrip(array, n), format="png"))
    display(IPyImage(data=gif_bytes(array, fps), format="gif"))
