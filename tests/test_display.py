"""Display helpers: valid images, in-place live updates, honest saved notebook output."""

from __future__ import annotations

import io
import json
import re
import sys

import imageio.v2 as iio2
import numpy as np
import pytest
from PIL import Image

from vla_rl_lib.display import (
    LivePlot,
    compare_runs,
    filmstrip,
    frame_browser,
    gif_bytes,
    in_notebook,
    media,
    plot_diagnostics,
    plot_learning_curves,
    plots,
    progress,
    save_gif,
    save_video,
    show_frames,
    show_table,
    summary_table,
    tables,
)
from vla_rl_lib.display.progress_bars import HandleProgress


def _records(n: int = 12) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for u in range(n):
        out.append(
            {
                "update": u,
                "env_steps": 512 * (u + 1),
                "train/success_rate": min(1.0, u / n + 0.05 * rng.random()),
                "train/episode_return": float(u),
                "train/approx_kl": 0.01 * rng.random(),
                "train/clip_fraction": 0.1 * rng.random(),
                "train/explained_variance": u / n - 0.5,
                "train/entropy": 2.0 - u / n,
            }
        )
        if u % 4 == 3:
            out.append({"update": u, "val/success": u / n, "val/episodes": 10,
                        "test/success": u / (n + 1), "test/episodes": 10})
    return out


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def _frames(t: int = 20, h: int = 32, w: int = 48) -> np.ndarray:
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, :, : (i + 1) * w // t] = (255, 40 + 10 * i, 0)  # a bar that grows: all distinct
    return frames


class FakeDisplay:
    """Stands in for IPython.display.display(obj, display_id=True) and its handle."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def __call__(self, obj, display_id=False, **kwargs):
        assert display_id is True
        self.calls.append(("display", obj))
        return self

    def update(self, obj, **kwargs):
        self.calls.append(("update", obj))


class FakeClock:
    def __init__(self, times):
        self.times = iter(times)
        self.now = 0.0

    def __call__(self) -> float:
        self.now = next(self.times, self.now)
        return self.now


def test_not_a_notebook_under_pytest():
    assert in_notebook() is False


# -- static plots ------------------------------------------------------------------------


def test_learning_curves_png_and_atomic_save(tmp_path):
    records = _records()
    png = plot_learning_curves(records, x="update", path=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == png
    one = _png(png)
    both = _png(plot_learning_curves(records, x=("update", "env_steps")))
    assert 300 < one.width < both.width <= 1000
    assert 600 < one.height < 1000  # three default keys, one row each
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_learning_curves_wilson_band_and_key_errors():
    records = _records()
    _png(
        plot_learning_curves(
            records, keys=["val/success"], ci_counts={"val/success": "val/episodes"}
        )
    )
    with pytest.raises(KeyError, match="train/sucess"):
        plot_learning_curves(records, keys=["train/sucess"])
    with pytest.raises(ValueError, match="pass keys="):
        plot_learning_curves([{"update": 0, "loss": 1.0}])


def test_diagnostics_and_compare_runs(tmp_path):
    records = _records()
    diag = _png(plot_diagnostics(records))
    assert diag.width > 600 and diag.height > 400
    partial = [{"update": 0, "approx_kl": 0.01}, {"update": 1, "approx_kl": None}]
    _png(plot_diagnostics(partial))  # missing panels say "not logged"
    with pytest.raises(KeyError, match="approx_kl"):
        plot_diagnostics([{"update": 0}])

    runs = {"lr3e-4": records, "lr1e-4": records[::2], "empty": [{"update": 0}]}
    cmp = _png(compare_runs(runs, "train/success_rate", x="env_steps", path=tmp_path / "c.png"))
    assert cmp.width > 500
    with pytest.raises(KeyError, match="eval/nothing"):
        compare_runs(runs, "eval/nothing")


# -- live plot ---------------------------------------------------------------------------


def test_liveplot_terminal_prints_compact_line():
    out = io.StringIO()
    with LivePlot(("train/success_rate",), mode="terminal", throttle_s=0.0, stream=out) as live:
        live.update({"update": 0, "env_steps": 2048, "train/success_rate": 0.25})
        live.update({"update": 1, "env_steps": 4096, "train/success_rate": 0.5})
    lines = out.getvalue().splitlines()
    assert lines == [
        "update 0 | env_steps 2,048 | train/success_rate 0.25",
        "update 1 | env_steps 4,096 | train/success_rate 0.5",
    ]


def test_liveplot_updates_in_place_once_per_throttle_and_on_close():
    display = FakeDisplay()
    clock = FakeClock([0.0, 0.5, 1.0, 1.9, 2.1, 2.5, 3.0, 4.0])
    live = LivePlot(
        mode="notebook", throttle_s=2.0, display_fn=display, image_fn=lambda png: png, clock=clock
    )
    for record in _records(8):
        live.update(record)
    assert [kind for kind, _ in display.calls] == ["display", "update"]  # t=0.0 and t=2.1
    live.close()
    assert [kind for kind, _ in display.calls] == ["display", "update", "update"]
    final = _png(display.calls[-1][1])
    assert final.width > 600  # update and env_steps columns
    live.close()  # idempotent: nothing new to draw
    assert len(display.calls) == 3
    with pytest.raises(RuntimeError, match="closed"):
        live.update({"update": 9})


def test_liveplot_close_skips_redraw_when_nothing_changed():
    display = FakeDisplay()
    live = LivePlot(mode="notebook", throttle_s=2.0, display_fn=display, image_fn=bytes)
    live.update({"update": 0, "train/success_rate": 0.0})  # before any eval: "no data yet"
    live.close()
    assert [kind for kind, _ in display.calls] == ["display"]
    _png(display.calls[0][1])


# -- frames ------------------------------------------------------------------------------


def test_filmstrip_size_and_sampling(tmp_path):
    frames = _frames(20, 32, 48)
    strip = _png(filmstrip(frames, n=8, path=tmp_path / "strip.png"))
    assert strip.size == (8 * 48 + 7 * 2, 32 + 12)
    assert _png(filmstrip(frames[:3], n=8)).size == (3 * 48 + 2 * 2, 44)
    assert media.sample_indices(20, 8) == [0, 3, 5, 8, 11, 14, 16, 19]


def test_frames_are_validated_with_a_fix():
    with pytest.raises(TypeError, match="astype"):
        filmstrip(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        gif_bytes(np.zeros((2, 8, 8, 4), np.uint8))


def test_gif_round_trip(tmp_path):
    frames = _frames(15)
    path = save_gif(frames, tmp_path / "ep.gif", fps=5)
    back = iio2.mimread(path)
    assert len(back) == 15 and back[0].shape[:2] == (32, 48)
    np.testing.assert_array_equal(np.asarray(back[-1])[..., :3], frames[-1])

    still = np.repeat(frames[:1], 6, axis=0)  # Pillow merges repeats, keeping total duration
    gif = Image.open(io.BytesIO(gif_bytes(still, fps=10)))
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert sum(durations) == pytest.approx(600)


def test_save_video_mp4_when_ffmpeg_available(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    frames = _frames(12, 33, 47)  # odd sides are padded for H.264
    path = save_video(frames, tmp_path / "ep.mp4", fps=10)
    assert path == tmp_path / "ep.mp4"
    reader = iio2.get_reader(path, format="FFMPEG")
    assert reader.count_frames() == 12
    assert reader.get_meta_data()["size"] == (48, 34)


def test_save_video_falls_back_to_gif(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "ffmpeg_available", lambda: False)
    with pytest.warns(UserWarning, match="imageio-ffmpeg"):
        path = save_video(_frames(5), tmp_path / "ep.mp4")
    assert path == tmp_path / "ep.gif" and len(iio2.mimread(path)) == 5
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        save_video(_frames(5), tmp_path / "ep.avi")


def test_show_frames_and_frame_browser_in_terminal(capsys):
    show_frames(_frames(4))
    assert "4 frames of 32x48" in capsys.readouterr().out
    assert frame_browser(_frames(4), interactive=False) is None
    assert "save_gif" in capsys.readouterr().out


def test_frame_browser_widget_follows_slider():
    pytest.importorskip("ipywidgets")
    frames = _frames(6)
    box = frame_browser(frames, fps=5)
    (play, slider), image = box.children[0].children, box.children[1]
    assert (play.max, slider.max, play.interval) == (5, 5, 200)
    first = image.value
    slider.value = 4
    assert image.value != first
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.value))), frames[4])


# -- tables and progress -----------------------------------------------------------------


def test_summary_table_aligns_and_marks_missing():
    rows = [
        {"run": "base", "success": 0.25, "episodes": 1200},
        {"run": "ppo-lora", "success": 0.8125, "ci95": (0.71, 0.89)},
    ]
    assert summary_table(rows).splitlines() == [
        "run       success  episodes  ci95",
        "--------  -------  --------  ------------",
        "base         0.25     1,200  -",
        "ppo-lora   0.8125         -  [0.71, 0.89]",
    ]
    assert summary_table([]) == "(empty table)"


def test_show_table_terminal_and_notebook(capsys, monkeypatch):
    rows = [{"run": "<b>x</b>", "success": 0.5}]
    show_table(rows)
    assert "success" in capsys.readouterr().out
    shown = []
    monkeypatch.setattr(tables, "ipython_display", lambda: lambda obj, raw: shown.append(obj))
    show_table(rows, mode="notebook")
    (bundle,) = shown
    assert "&lt;b&gt;x&lt;/b&gt;" in bundle["text/html"] and "0.5" in bundle["text/plain"]


def test_progress_terminal_is_tqdm():
    from tqdm import tqdm

    bar = progress(range(3), desc="rollout", mode="terminal")
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]


def test_handle_progress_saves_final_state_not_zero():
    display = FakeDisplay()
    clock = FakeClock([float(t) for t in range(200)])
    bar = HandleProgress(
        range(100), desc="updates", throttle_s=10.0, display_fn=display, text_fn=str, clock=clock
    )
    for i in bar:
        if i == 50:
            bar.set_postfix(success=0.75)
    assert display.calls[0] == ("display", display.calls[0][1])
    assert re.search(r"updates:\s+0%.*0/100", display.calls[0][1])
    kind, final = display.calls[-1]
    assert kind == "update" and re.search(r"100%.*100/100.*success=0.75", final)
    assert len(display.calls) <= 2 + 100 // 10  # throttled: about once per 10 "seconds"


def test_progress_notebook_non_interactive_is_handle_line(monkeypatch):
    display = FakeDisplay()
    monkeypatch.setattr("vla_rl_lib.display.progress_bars.ipython_display", lambda: display)
    pytest.importorskip("IPython")
    bar = progress(total=4, desc="eval", mode="notebook")
    assert isinstance(bar, HandleProgress)
    bar.update(4)
    bar.close()
    assert "4/4" in str(display.calls[-1][1].data)


# -- a real kernel -----------------------------------------------------------------------

NOTEBOOK_CODE = """
import numpy as np
from vla_rl_lib.display import LivePlot, progress, show_table, show_frames
with LivePlot(("train/success_rate",), throttle_s=0.0) as live:
    for u in range(5):
        live.update({"update": u, "env_steps": 100 * u, "train/success_rate": u / 4})
for _ in progress(range(7), desc="work"):
    pass
show_table([{"run": "a", "success": 0.5}])
show_frames(np.zeros((3, 8, 8, 3), np.uint8))
"""


def test_saved_notebook_keeps_one_final_png_and_final_progress(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CODE)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(
        str(src),
        str(out),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
        stdout_file=sys.stdout,
    )
    outputs = json.loads(out.read_text())["cells"][0]["outputs"]
    mimes = [sorted(o.get("data", {})) for o in outputs]
    assert mimes == [
        ["image/png", "text/plain"],  # the live plot: one PNG, in its final state
        ["text/plain"],  # the progress line
        ["text/html", "text/plain"],  # the table
        ["image/png", "text/plain"],  # filmstrip
        ["image/gif", "text/plain"],  # animation
    ]
    assert "7/7" in "".join(outputs[1]["data"]["text/plain"])
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_eval_records_borrow_the_last_env_steps():
    from vla_rl_lib.display.plots import series

    records = [
        {"update": 0, "env_steps": 512, "train/success_rate": 0.1},
        {"update": 0, "eval_success": 0.2},
        {"update": 1, "env_steps": 1024, "train/success_rate": float("nan")},
        {"update": 1, "eval_success": 0.4},
    ]
    assert series(records, "env_steps", "eval_success") == ([512.0, 1024.0], [0.2, 0.4])
    assert series(records, "update", "train/success_rate") == ([0.0], [0.1])


# -- the training figure (issue 17) --------------------------------------------------------


def test_rolling_mean_matches_a_slow_reference():
    values = list(np.random.default_rng(1).random(25))
    for window in (1, 3, 10, 40):
        slow = [float(np.mean(values[max(0, i - window + 1) : i + 1])) for i in range(len(values))]
        assert plots.rolling_mean(values, window) == pytest.approx(slow)
    with pytest.raises(ValueError, match="window"):
        plots.rolling_mean(values, 0)


def test_training_figure_has_no_duplicate_panels_and_draws_against_env_steps(tmp_path):
    from matplotlib.figure import Figure

    records = _records()
    fig = Figure()
    plots.draw_training(fig, records, window=4)
    main = [ax for ax in fig.axes if ax.get_xlabel() == "env steps"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == len(set(titles)) == 6  # 2 success panels + 4 diagnostics, each once
    train_ax, heldout_ax = main
    raw, smooth = train_ax.get_lines()
    xs, ys = plots.series(records, "env_steps", "train/success_rate")
    assert list(raw.get_xdata()) == xs and raw.get_alpha() < 0.5  # faint raw values behind
    assert list(smooth.get_ydata()) == pytest.approx(plots.rolling_mean(ys, 4))
    assert len(heldout_ax.collections) == 2  # the Wilson bands of val and test
    assert [line.get_label() for line in heldout_ax.get_lines()][:2] == [
        "val (greedy, 95% Wilson)", "test (greedy, 95% Wilson)"]
    for ax in main:  # updates on a secondary axis on top
        assert [child.get_xlabel() for child in ax.child_axes] == ["update"]
    png = plots.plot_training(records, path=tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes() == png and _png(png).width >= 900
    with pytest.raises(ValueError, match="neither"):
        plots.plot_training([{"update": 0, "loss": 1.0}])


def test_seed_groups_overlay_draws_the_mean_across_seeds():
    a = [{"update": u, "env_steps": 100 * u, "train/success_rate": 0.0} for u in range(1, 11)]
    b = [{"update": u, "env_steps": 110 * u, "train/success_rate": 1.0} for u in range(1, 11)]
    png = plots.plot_seed_groups({"ppo": {"s1": a, "s2": b}, "grpo": {"g1": a}}, window=1)
    _png(png)
    grid, mean, std = plots._seed_band([([100.0, 1000.0], [0.0, 0.0]), ([110.0, 1100.0], [1.0, 1.0])])
    assert grid[0] == 110 and grid[-1] == 1000  # the env steps every seed reached
    assert mean == pytest.approx(np.full(len(grid), 0.5)) and std == pytest.approx(np.full(len(grid), 0.5))
