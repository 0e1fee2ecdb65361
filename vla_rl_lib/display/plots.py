"""Learning curves, PPO diagnostics and run comparisons, drawn to PNG bytes.

Everything draws on a bare `matplotlib.figure.Figure`: no pyplot state and no backend, so the
same call works in a terminal, in JupyterLab and under papermill (where `MPLBACKEND=Agg` would
make `plt.show()` save nothing).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vla_rl_lib.metrics import wilson_interval
from vla_rl_lib.utils import write_bytes_atomic

Records = Sequence[Mapping[str, Any]]

CURVE_KEYS = ("train/success_rate", "train/episode_return", "eval_success")
STEP_KEYS = ("update", "env_steps")
DIAGNOSTIC_NAMES = ("approx_kl", "clip_fraction", "explained_variance", "entropy")

_PANEL_W, _PANEL_H, _DPI = 4.2, 2.6, 100


def figure_to_png(fig: Figure, dpi: int = _DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _finish(fig: Figure, path: str | os.PathLike[str] | None) -> bytes:
    png = figure_to_png(fig)
    if path is not None:
        write_bytes_atomic(path, png)
    return png


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, (bool, str)):
        return None
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return None
    return as_float if math.isfinite(as_float) else None


def _with_x(records: Records, x: str) -> list[tuple[float | None, Mapping[str, Any]]]:
    """Pair each record with its x value, carrying the last x forward to records that lack it.

    An eval record logged as {"update": 7, "eval_success": ...} then still has the env_steps
    of the training record before it, so it can be drawn against env steps too.
    """
    paired, last = [], None
    for r in records:
        value = _number(r.get(x))
        last = value if value is not None else last
        paired.append((last, r))
    return paired


def series(records: Records, x: str, key: str) -> tuple[list[float], list[float]]:
    """(xs, ys) over the records holding a finite number for `key` (x carried forward)."""
    xs, ys = [], []
    for xv, r in _with_x(records, x):
        yv = _number(r.get(key))
        if xv is not None and yv is not None:
            xs.append(xv)
            ys.append(yv)
    return xs, ys


def _wilson_band(
    records: Records, x: str, key: str, count_key: str
) -> tuple[list[float], list[float], list[float]]:
    xs, lows, highs = [], [], []
    for xv, r in _with_x(records, x):
        p, n = _number(r.get(key)), _number(r.get(count_key))
        if xv is None or p is None or n is None or n < 1:
            continue
        low, high = wilson_interval(round(p * n), int(n))
        xs.append(xv)
        lows.append(low)
        highs.append(high)
    return xs, lows, highs


def _empty_panel(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.5")


def _plot_key(
    ax: Axes, records: Records, x: str, key: str, count_key: str | None, label: str | None = None
) -> bool:
    xs, ys = series(records, x, key)
    if not xs:
        return False
    if count_key is not None:
        bx, lows, highs = _wilson_band(records, x, key, count_key)
        if bx:
            ax.fill_between(bx, lows, highs, alpha=0.2, linewidth=0)
    marker = "o" if len(xs) < 30 else None
    ax.plot(xs, ys, marker=marker, markersize=3, label=label)
    if "success" in key:
        ax.set_ylim(-0.03, 1.03)
    return True


def draw_curves(
    fig: Figure,
    records: Records,
    xs: Sequence[str],
    keys: Sequence[str],
    ci_counts: Mapping[str, str] | None = None,
) -> None:
    """One row per key, one column per x axis; empty panels say "no data yet"."""
    axes = fig.subplots(len(keys), len(xs), squeeze=False)
    for row, key in enumerate(keys):
        for col, x in enumerate(xs):
            ax = axes[row][col]
            count_key = (ci_counts or {}).get(key)
            if not _plot_key(ax, records, x, key, count_key):
                _empty_panel(ax, "no data yet")
            ax.set_xlabel(x)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)


def _as_list(x: str | Sequence[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def _present_keys(records: Records) -> list[str]:
    return list(dict.fromkeys(k for r in records for k, v in r.items() if _number(v) is not None))


def plot_learning_curves(
    records: Records,
    x: str | Sequence[str] = "update",
    keys: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    ci_counts: Mapping[str, str] | None = None,
) -> bytes:
    """PNG of each key against `x` ("update", "env_steps", or both as a sequence).

    keys default to those of CURVE_KEYS present in the records. ci_counts maps a success-rate
    key to the key holding its episode count, e.g. {"eval_success": "eval_episodes"}, to shade
    its 95% Wilson interval. With `path` the PNG is also saved there (atomically).
    """
    xs = _as_list(x)
    present = _present_keys(records)
    if keys is None:
        keys = [k for k in CURVE_KEYS if k in present]
        if not keys:
            raise ValueError(
                f"none of the default curve keys {list(CURVE_KEYS)} is in the records; "
                f"pass keys= from {[k for k in present if k not in STEP_KEYS]}"
            )
    missing = [k for k in [*keys, *xs] if k not in present]
    if missing:
        raise KeyError(f"keys {missing} never hold a number in the records; available: {present}")
    fig = Figure(figsize=(_PANEL_W * len(xs), _PANEL_H * len(keys)), layout="constrained")
    draw_curves(fig, records, xs, keys, ci_counts)
    return _finish(fig, path)


def find_key(records: Records, name: str) -> str | None:
    """The logged key for a metric name: `name` itself or any `<prefix>/name`."""
    for key in _present_keys(records):
        if key == name or key.endswith("/" + name):
            return key
    return None


def plot_diagnostics(
    records: Records,
    x: str = "update",
    path: str | os.PathLike[str] | None = None,
    names: Sequence[str] = DIAGNOSTIC_NAMES,
) -> bytes:
    """PNG of the PPO health figures (approx KL, clip fraction, explained variance, entropy).

    Each name matches a key equal to it or ending in "/<name>" (e.g. "train/approx_kl").
    """
    found = {name: find_key(records, name) for name in names}
    if not any(found.values()):
        raise KeyError(
            f"none of {list(names)} was logged (as a key or a '<prefix>/<name>' key); "
            f"available: {_present_keys(records)}"
        )
    ncols = 2 if len(names) > 1 else 1
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(_PANEL_W * ncols, _PANEL_H * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        key = found[name]
        if key is None or not _plot_key(ax, records, x, key, None):
            _empty_panel(ax, f"{name} not logged")
        if name == "explained_variance":
            ax.axhline(0.0, color="0.6", linewidth=0.8, linestyle="--")
        ax.set_title(key or name, fontsize=10)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return _finish(fig, path)


def compare_runs(
    runs: Mapping[str, Records],
    key: str,
    x: str = "update",
    path: str | os.PathLike[str] | None = None,
    *,
    count_key: str | None = None,
) -> bytes:
    """PNG of one metric across runs ({name: records}, e.g. from `load_runs`), one line each."""
    if not runs:
        raise ValueError("compare_runs needs at least one run; got an empty mapping")
    fig = Figure(figsize=(_PANEL_W * 1.6, _PANEL_H * 1.4), layout="constrained")
    ax = fig.subplots()
    plotted = []
    for name, records in runs.items():
        if _plot_key(ax, records, x, key, count_key, label=name):
            plotted.append(name)
    if not plotted:
        raise KeyError(f"no run holds numbers for both {key!r} and {x!r}; runs: {list(runs)}")
    absent = [n for n in runs if n not in plotted]
    ax.legend(fontsize=8, title=f"no data: {', '.join(absent)}" if absent else None)
    ax.set_xlabel(x)
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    return _finish(fig, path)
