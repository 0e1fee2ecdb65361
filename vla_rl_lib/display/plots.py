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

CURVE_KEYS = ("train/success_rate", "train/episode_return", "val/success")
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

    An eval record logged as {"update": 7, "val/success": ...} then still has the env_steps
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
    key to the key holding its episode count, e.g. {"val/success": "val/episodes"}, to shade
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


# ---------------------------------------------------------------- the figure for a talk

TRAIN_SUCCESS_KEY = "train/success_rate"
EVAL_KEY, EVAL_COUNT_KEY = "val/success", "val/episodes"  # selection split (checkpoint_best)
TEST_KEY, TEST_COUNT_KEY = "test/success", "test/episodes"  # reported only
X_KEY = "env_steps"
DIAGNOSTIC_TITLES = {"approx_kl": "approx KL", "clip_fraction": "clip fraction",
                     "explained_variance": "explained variance", "entropy": "entropy"}  # fmt: skip


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    if window < 1:
        raise ValueError(f"window must be >= 1 update, got {window}")
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _updates_axis(ax: Axes, records: Records) -> None:
    """A secondary x axis on top giving the update for an env-step position."""
    import numpy as np

    steps, updates = series(records, X_KEY, "update")
    pairs = sorted(set(zip(steps, updates, strict=True)))
    if len(pairs) < 2:
        return
    s, u = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    top = ax.secondary_xaxis(
        "top", functions=(lambda x: np.interp(x, s, u), lambda x: np.interp(x, u, s))
    )
    top.set_xlabel("update", fontsize=8)
    top.tick_params(labelsize=7)


def _success_axes(ax: Axes, title: str) -> None:
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("env steps")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def draw_train_success(ax: Axes, records: Records, window: int = 10) -> bool:
    """Raw per-update train success, faint, under its rolling mean; False when none is logged."""
    xs, ys = series(records, X_KEY, TRAIN_SUCCESS_KEY)
    if not xs:
        return False
    ax.plot(xs, ys, color="C0", alpha=0.25, linewidth=0.8, label="per update")
    ax.plot(xs, rolling_mean(ys, window), color="C0", linewidth=2, label=f"mean of {window}")
    ax.legend(fontsize=7, loc="best")
    return True


def draw_heldout_success(ax: Axes, records: Records) -> bool:
    """Held-out success on val and test, each with its 95% Wilson band; False when nothing
    was evaluated."""
    drawn = False
    for key, count_key, color in ((EVAL_KEY, EVAL_COUNT_KEY, "C2"), (TEST_KEY, TEST_COUNT_KEY, "C3")):
        xs, ys = series(records, X_KEY, key)
        if not xs:
            continue
        split = key.split("/")[0]
        bx, lows, highs = _wilson_band(records, X_KEY, key, count_key)
        if bx:
            ax.fill_between(bx, lows, highs, color=color, alpha=0.15, linewidth=0)
        ax.plot(xs, ys, color=color, marker="o", markersize=3, linewidth=1.5,
                label=f"{split} (greedy, 95% Wilson)")  # fmt: skip
        drawn = True
    if drawn:
        ax.legend(fontsize=7, loc="best")
    return drawn


def draw_training(fig: Figure, records: Records, window: int = 10) -> None:
    """Train success (rolling mean over faint raw values) and held-out success (Wilson band)
    against env steps, updates on the top axis; below, one compact row of PPO diagnostics."""
    diagnostics = {name: find_key(records, name) for name in DIAGNOSTIC_NAMES}
    shown = [name for name, key in diagnostics.items() if key is not None]
    grid = fig.add_gridspec(2 if shown else 1, 4, height_ratios=[1.6, 1] if shown else [1])
    first = fig.add_subplot(grid[0, 0:2])  # every panel shares its env-step axis
    panels = (
        (first, draw_train_success, f"train success (mean of {window})"),
        (fig.add_subplot(grid[0, 2:4], sharex=first), draw_heldout_success, "held-out success (val, test)"),
    )
    for ax, draw, title in panels:
        args = (records, window) if draw is draw_train_success else (records,)
        if not draw(ax, *args):
            _empty_panel(ax, "no data yet")
        _success_axes(ax, title)
        _updates_axis(ax, records)
    for col, name in enumerate(shown):
        ax = fig.add_subplot(grid[1, col], sharex=first)
        xs, ys = series(records, X_KEY, diagnostics[name])
        ax.plot(xs, ys, color="0.3", linewidth=0.9)
        if name == "explained_variance":
            ax.axhline(0.0, color="0.6", linewidth=0.8, linestyle="--")
        ax.set_title(DIAGNOSTIC_TITLES[name], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_offset_text().set_fontsize(7)
        ax.grid(alpha=0.3)


def plot_training(
    records: Records, path: str | os.PathLike[str] | None = None, *, window: int = 10
) -> bytes:
    """PNG of ``draw_training``: the learning-curve figure of one run."""
    if not any(_number(r.get(k)) is not None for r in records for k in (TRAIN_SUCCESS_KEY, EVAL_KEY)):
        raise ValueError(
            f"the records hold neither {TRAIN_SUCCESS_KEY!r} nor {EVAL_KEY!r}; pass a run's "
            "metrics (vla_rl_lib.metrics.load_metrics(<run folder>))"
        )
    fig = Figure(figsize=(10, 5.6), layout="constrained")
    draw_training(fig, records, window)
    return _finish(fig, path)


def _seed_band(
    curves: Sequence[tuple[list[float], list[float]]], points: int = 100
) -> tuple[Any, Any, Any] | None:
    """Mean and ±1 std across seeds, each curve interpolated onto a shared env-step grid
    (seeds' episodes differ in length, so their env steps never line up)."""
    import numpy as np

    curves = [(x, y) for x, y in curves if len(x) >= 2]
    if not curves:
        return None
    end = min(x[-1] for x, _ in curves)
    start = max(x[0] for x, _ in curves)
    if end <= start:
        return None
    grid = np.linspace(start, end, points)
    stacked = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, stacked.mean(axis=0), stacked.std(axis=0)


def plot_seed_groups(
    groups: Mapping[str, Mapping[str, Records]],
    path: str | os.PathLike[str] | None = None,
    *,
    window: int = 10,
) -> bytes:
    """Runs overlaid, grouped by setting: ``{group: {run: records}}``.

    Each run is a thin line; each group with two or more runs adds its mean across runs
    (seeds) and a ±1 std band. Left: train success (rolling mean); right: val success.
    """
    if not groups:
        raise ValueError("plot_seed_groups needs at least one group of runs")
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for color, (label, runs) in enumerate(groups.items()):
        c = f"C{color % 10}"
        for ax, key, smooth in ((left, TRAIN_SUCCESS_KEY, True), (right, EVAL_KEY, False)):
            curves = []
            for records in runs.values():
                xs, ys = series(records, X_KEY, key)
                if not xs:
                    continue
                ys = rolling_mean(ys, window) if smooth else ys
                curves.append((xs, ys))
                alone = len(runs) == 1  # a group of one is drawn as its own mean
                ax.plot(xs, ys, color=c, alpha=1.0 if alone else 0.35, linewidth=1.5 if alone else 0.8)
            band = _seed_band(curves) if len(curves) > 1 else None
            if band is not None:
                grid, mean, std = band
                ax.fill_between(grid, mean - std, mean + std, color=c, alpha=0.15, linewidth=0)
                ax.plot(grid, mean, color=c, linewidth=2, label=f"{label} (mean of {len(curves)})")
            elif curves:
                ax.plot([], [], color=c, label=f"{label} ({len(curves)} run)")
    for ax, title in ((left, f"train success (mean of {window} updates)"), (right, "val success")):
        _success_axes(ax, title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    return _finish(fig, path)
