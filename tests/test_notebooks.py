"""Execute the notebooks with a tiny configuration and check what their saved copies hold.

papermill runs each notebook and the assertions read the saved notebook (no error output,
parameters recorded, the final live-plot PNG, frames); `test_nbval_lax` runs all four under
`pytest --nbval-lax`. The configuration is a few seconds of training: every test here is
about the front end, not about learning.

Slow (a kernel each, 15-80 s): everything except the bad-parameter and OpenVLA tests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from vla_rl_lib.training.runs import latest_run

papermill = pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PAPERMILL = Path(sys.executable).with_name("papermill")

# A run of seconds: two updates of a 0.1M-parameter VLA on 32x32 images, 6-step episodes.
TINY: dict[str, Any] = {
    "template": "fast",
    "num_updates": 2,
    "eval_interval": 1,
    "save_interval": 1,
    "num_eval_episodes": 2,
    "rollout": {"num_parallel_envs": 2, "num_rollouts_per_update": 2, "max_steps": 6,
                "image_size": 32},
    "model": {"image_size": 32, "num_layers": 1, "hidden_size": 32, "intermediate_size": 64,
              "vision_hidden_size": 32, "vision_intermediate_size": 64, "vision_layers": 1},
    "ppo": {"minibatch_size": 6, "micro_batch_size": 3, "num_epochs": 2, "group_size": 2},
    "sft": {"num_demos": 0},
    "plot_every_s": 0.0,
}  # fmt: skip
# The scripted expert needs about 40 steps to lift the cube: demos get 60.
TINY_SETUP: dict[str, Any] = {
    "template": "fast",
    "experiment_name": "nb_setup",
    "rollout": {"num_parallel_envs": 2, "max_steps": 60, "image_size": 32},
    "model": TINY["model"],
    "sft": {"num_demos": 2, "epochs": 1, "batch_size": 16},
}


def execute(name: str, out_dir: Path, parameters: dict[str, Any]) -> Any:
    """Run notebooks/<name> with papermill; returns the saved notebook."""
    output = out_dir / f"executed_{parameters.get('experiment_name', 'run')}_{name}"
    papermill.execute_notebook(
        str(NOTEBOOKS / name), str(output), parameters=parameters, kernel_name="python3",
        cwd=str(ROOT), progress_bar=False,
    )  # fmt: skip
    return nbformat.read(output, as_version=4)


def cell_with(nb: Any, text: str) -> Any:
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    return cell


def outputs_of(cell: Any, mime: str) -> list[Any]:
    return [o for o in cell.outputs if mime in o.get("data", {})]


def assert_no_errors(nb: Any) -> None:
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]


def assert_png(output: Any) -> None:
    assert base64.b64decode(output.data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebook_outputs")


def train_parameters(outputs: Path, **extra: Any) -> dict[str, Any]:
    return {**TINY, "output_dir": str(outputs), **extra}


@pytest.fixture(scope="module")
def ppo_run(outputs: Path) -> tuple[Any, Path]:
    params = train_parameters(outputs, experiment_name="nb_ppo")
    return execute("02_train.ipynb", outputs, params), latest_run(outputs / "nb_ppo")


@pytest.fixture(scope="module")
def grpo_interactive_run(outputs: Path) -> tuple[Any, Path]:
    params = train_parameters(outputs, experiment_name="nb_grpo", algorithm="grpo", interactive=True)
    return execute("02_train.ipynb", outputs, params), latest_run(outputs / "nb_grpo")


# ---------------------------------------------------------------- 02_train


@pytest.mark.slow
def test_train_notebook_resumes_a_checkpoint_with_its_own_config(outputs: Path) -> None:
    """``-p resume <checkpoint>`` continues that run with its config.yaml, as ``train --resume
    PATH``: the notebook's template (the fast template's larger model) does not replace it."""
    execute("02_train.ipynb", outputs, train_parameters(outputs, experiment_name="nb_resume", num_updates=1))
    run_dir = latest_run(outputs / "nb_resume")
    checkpoint = run_dir / "checkpoint_latest"
    nb = execute("02_train.ipynb", outputs, {"num_updates": 2, "resume": str(checkpoint), "plot_every_s": 0.0})
    assert_no_errors(nb)
    assert [p.name for p in (outputs / "nb_resume").iterdir() if p.is_dir() and not p.is_symlink()] == [
        run_dir.name
    ]  # continued in its own folder
    updates = [json.loads(line).get("update") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(u for u in updates if u is not None) == 2
    resumed = yaml.safe_load((checkpoint / "config.yaml").read_text())
    assert resumed["num_updates"] == 2  # a parameter set still overrides the checkpoint's
    assert resumed["model"]["hidden_size"] == TINY["model"]["hidden_size"]
    assert resumed["experiment_name"] == "nb_resume"


@pytest.mark.slow
def test_train_notebook_keeps_plot_frames_and_summary(ppo_run: tuple[Any, Path], outputs: Path) -> None:
    nb, run_dir = ppo_run
    assert_no_errors(nb)
    assert nb.metadata.papermill.parameters == train_parameters(outputs, experiment_name="nb_ppo")

    live = outputs_of(cell_with(nb, "train_with_live_plot("), "image/png")
    assert len(live) == 1  # one display handle, updated in place: the final state only
    assert_png(live[0])
    frames = cell_with(nb, "show_frames(")
    assert len(outputs_of(frames, "image/png")) == 1  # filmstrip
    assert len(outputs_of(frames, "image/gif")) == 1  # animated episode
    assert not outputs_of(frames, "application/vnd.jupyter.widget-view+json")
    summary = outputs_of(cell_with(nb, "summary_rows("), "text/html")
    assert "best_eval_success" in summary[0].data["text/plain"]

    for name in ("metrics.jsonl", "config.yaml", "learning_curve.png", "eval_episode.gif"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoint_latest" / "trainer_state.json").is_file()
    printed = "".join(o.get("text", "") for o in cell_with(nb, "train_with_live_plot(").outputs)
    assert f"run folder: {run_dir.resolve()}" in printed
    (filmstrip,) = outputs_of(frames, "image/png")
    assert Image.open(io.BytesIO(base64.b64decode(filmstrip.data["image/png"]))).height >= 256


@pytest.mark.slow
def test_interactive_run_saves_the_same_record_plus_widgets(
    grpo_interactive_run: tuple[Any, Path],
) -> None:
    nb, run_dir = grpo_interactive_run
    assert_no_errors(nb)
    assert len(outputs_of(cell_with(nb, "train_with_live_plot("), "image/png")) == 1
    frames = cell_with(nb, "show_frames(")
    assert outputs_of(frames, "image/png") and outputs_of(frames, "image/gif")
    assert outputs_of(frames, "application/vnd.jupyter.widget-view+json")  # the frame browser
    assert "grpo" in (run_dir / "config.yaml").read_text()


def test_bad_parameter_fails_with_the_config_error(tmp_path: Path) -> None:
    """The exact command line of the issue, with -f injecting every key of params/fast.yaml."""
    out = tmp_path / "bad.ipynb"
    result = subprocess.run(
        [str(PAPERMILL), str(NOTEBOOKS / "02_train.ipynb"), str(out), "-f", "params/fast.yaml",
         "-p", "learning_rate", "-0.001", "-p", "output_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "egl"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "ConfigError: ppo.learning_rate=-0.001 is invalid: must be > 0" in result.stderr
    nb = nbformat.read(out, as_version=4)
    (error,) = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]  # fmt: skip
    assert error.ename == "ConfigError"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ipynb"]  # no run folder made


# ---------------------------------------------------------------- 01_setup


@pytest.mark.slow
def test_setup_notebook_checks_the_simulator_and_saves_an_sft_checkpoint(outputs: Path) -> None:
    params = {**TINY_SETUP, "output_dir": str(outputs),
              "sft": {**TINY_SETUP["sft"], "dataset_dir": str(outputs / "demos")}}  # fmt: skip
    nb = execute("01_setup.ipynb", outputs, params)
    assert_no_errors(nb)
    report = outputs_of(cell_with(nb, "environment_report()"), "text/plain")[0].data["text/plain"]
    assert "MUJOCO_GL" in report and "OpenGL" in report
    (cameras,) = outputs_of(cell_with(nb, "camera_views(cfg)"), "image/png")
    assert_png(cameras)
    assert outputs_of(cell_with(nb, "save_shared_sft("), "image/png")  # SFT loss per epoch
    assert (outputs / "nb_setup" / "sft" / "policy_config.json").is_file()


def test_setup_notebook_with_openvla_stops_with_the_weights_error(tmp_path: Path) -> None:
    params = {"template": "full", "output_dir": str(tmp_path),
              "rollout": {"image_size": 64}}  # fmt: skip
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        execute("01_setup.ipynb", tmp_path, params)
    assert raised.value.ename == "FileNotFoundError"
    assert "OpenVLA weights for 'openvla/openvla-7b' are not available offline" in raised.value.evalue
    nb = nbformat.read(tmp_path / "executed_run_01_setup.ipynb", as_version=4)
    assert outputs_of(cell_with(nb, "camera_views(cfg)"), "image/png")  # the checks before ran


# ---------------------------------------------------------------- 03_evaluate, 04_analyze


@pytest.mark.slow
def test_evaluate_notebook_reports_interval_episodes_and_videos(
    ppo_run: tuple[Any, Path], outputs: Path
) -> None:
    _, run_dir = ppo_run
    params = {"output_dir": str(outputs), "experiment_name": "nb_ppo", "num_episodes": 3,
              "record_episodes": 3}  # fmt: skip
    nb = execute("03_evaluate.ipynb", outputs, params)
    assert_no_errors(nb)
    (rate,) = outputs_of(cell_with(nb, "eval_rows(result)"), "text/plain")
    assert "wilson95_low" in rate.data["text/plain"]
    (episodes,) = outputs_of(cell_with(nb, "result.per_episode"), "text/plain")
    assert len(episodes.data["text/plain"].splitlines()) == 2 + 3  # header, rule, 3 episodes
    videos = cell_with(nb, "success_and_failure(")
    assert outputs_of(videos, "image/gif")  # a success or a failure, filmed
    assert len(list((run_dir / "videos").iterdir())) == 3
    (gif,) = outputs_of(videos, "image/gif")[:1]
    assert Image.open(io.BytesIO(base64.b64decode(gif.data["image/gif"]))).size == (256, 256)


@pytest.mark.slow
def test_analyze_notebook_compares_runs(
    ppo_run: tuple[Any, Path], grpo_interactive_run: tuple[Any, Path], outputs: Path
) -> None:
    runs = [str(ppo_run[1]), str(grpo_interactive_run[1])]
    nb = execute("04_analyze.ipynb", outputs, {"runs": runs, "output_dir": str(outputs)})
    assert_no_errors(nb)
    (table,) = outputs_of(cell_with(nb, "final_rows(records)"), "text/plain")
    assert "nb_ppo/" in table.data["text/plain"] and "nb_grpo/" in table.data["text/plain"]
    assert len(outputs_of(cell_with(nb, "plot_training("), "image/png")) == 2  # one per run
    overlay = cell_with(nb, "plot_seed_groups(")
    assert len(outputs_of(overlay, "image/png")) == 1  # PPO and GRPO differ: two groups
    assert "nb_grpo" in outputs_of(overlay, "text/plain")[0].data["text/plain"]


@pytest.mark.slow
def test_cli_run_then_the_design_card_papermill_command_twice(tmp_path: Path) -> None:
    """Issue 17: the README's papermill command re-run after a CLI run of the same experiment
    (same output folder): all three succeed, into three different run folders."""
    from vla_rl_lib.config import apply_overrides, load_template, save_config

    tiny = {k: v for k, v in TINY.items() if k not in ("template", "plot_every_s")}
    cfg = apply_overrides(load_template("fast"), {**tiny, "output_dir": str(tmp_path / "outputs")})
    save_config(cfg, tmp_path / "tiny.yaml")
    env = {**os.environ, "MUJOCO_GL": "egl", "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT / 'sim'}{os.pathsep}{ROOT}"}
    cli = subprocess.run(
        [sys.executable, "-m", "vla_rl_lib", "train", "--config", str(tmp_path / "tiny.yaml")],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    folders = [line.removeprefix("run folder: ") for line in cli.stderr.splitlines()
               if line.startswith("run folder: ")]  # fmt: skip
    for _ in range(2):  # `papermill notebooks/02_train.ipynb out.ipynb -f <params> -p num_updates 3`
        out = tmp_path / "out.ipynb"
        run = subprocess.run(
            [str(PAPERMILL), str(NOTEBOOKS / "02_train.ipynb"), str(out), "-f", str(tmp_path / "tiny.yaml"),
             "-p", "num_updates", "3", "-p", "plot_every_s", "0"],
            cwd=ROOT, capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        printed = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells
                          if c.cell_type == "code" for o in c.outputs)  # fmt: skip
        folders += [line.removeprefix("run folder: ") for line in printed.splitlines()
                    if line.startswith("run folder: ")]  # fmt: skip
    experiment = tmp_path / "outputs" / cfg.experiment_name
    assert len(set(folders)) == 3 and {Path(f).parent for f in folders} == {experiment}
    for folder in map(Path, folders):
        assert (folder / "checkpoint_latest" / "trainer_state.json").is_file()
    assert latest_run(experiment) == Path(folders[-1])
    assert (experiment / "checkpoint_latest").resolve() == Path(folders[-1]) / "checkpoint_latest"


# ---------------------------------------------------------------- nbval


@pytest.mark.slow
def test_nbval_lax(tmp_path: Path) -> None:
    """All four notebooks under `pytest --nbval-lax`, parameterized like papermill would."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    out = tmp_path / "outputs"
    parameters = {
        "01_setup.ipynb": {**TINY_SETUP, "output_dir": str(out), "experiment_name": "nbval",
                           "sft": {**TINY_SETUP["sft"], "dataset_dir": str(out / "demos")}},
        "02_train.ipynb": {**TINY, "output_dir": str(out), "experiment_name": "nbval_train"},
        "03_evaluate.ipynb": {"output_dir": str(out), "experiment_name": "nbval_train",
                              "num_episodes": 2, "record_episodes": 2},
        "04_analyze.ipynb": {"output_dir": str(out)},
    }  # fmt: skip
    copies = []
    for name, params in parameters.items():
        nb = parameterize_notebook(load_notebook_node(str(NOTEBOOKS / name)), params)
        copies.append(tmp_path / name)
        nbformat.write(nb, copies[-1])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         "--rootdir", str(tmp_path), *map(str, copies)],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "egl"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]
