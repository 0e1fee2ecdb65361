"""vla_rl_lib.notebook: notebook parameters build the CLI's config; committed notebooks are clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_rl_lib.config import (
    ConfigError,
    apply_overrides,
    config_to_dict,
    load_template,
    save_config,
)
from vla_rl_lib.notebook import (
    NOTEBOOK_OWN,
    SHORTCUTS,
    config_from_notebook_parameters,
    config_parameter_lines,
    discover_runs,
    environment_report,
    final_rows,
    find_checkpoint,
    labelled_row,
    notebook_parameters,
    parameter_cell_source,
    parameter_names,
    seed_groups,
    success_and_failure,
    top_level_keys,
)
from vla_rl_lib.training.cli import UsageError, build_parser, resolve_config, train_config
from vla_rl_lib.training.runs import create_run_dir

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG_NOTEBOOKS = [ROOT / "notebooks" / "01_setup.ipynb", ROOT / "notebooks" / "02_train.ipynb"]


def cli_config(*argv: str):
    return resolve_config(build_parser().parse_args(["train", *argv]))


def unset() -> dict:
    """A parameters cell left at its defaults: every config key None, every section {}."""
    params = {name: None for name in parameter_names()}
    params.update({section: {} for section in ("rollout", "ppo", "lora", "model", "sft")})
    return params


# ---------------------------------------------------------------- parameters -> config


def test_defaults_give_the_template() -> None:
    params = {**unset(), "template": "fast"}
    assert config_from_notebook_parameters(**params) == load_template("fast")


def test_same_config_as_the_cli_flags(tmp_path: Path) -> None:
    params = {
        **unset(), "config": str(ROOT / "params" / "fast.yaml"), "num_updates": 3,
        "learning_rate": 1e-3, "simulator": "mujoco", "num_parallel_envs": 1, "seed": 7,
        "experiment_name": "nb", "output_dir": str(tmp_path), "sft_checkpoint": "outputs/x/sft",
        "algorithm": "grpo",
    }  # fmt: skip
    cli = cli_config(
        "--config", str(ROOT / "params" / "fast.yaml"), "--num-updates", "3",
        "--learning-rate", "1e-3", "--simulator", "mujoco", "--num-parallel-envs", "1",
        "--seed", "7", "--experiment-name", "nb", "--output-dir", str(tmp_path),
        "--sft-checkpoint", "outputs/x/sft", "--algorithm", "grpo",
    )  # fmt: skip
    assert config_from_notebook_parameters(**params) == cli


def test_resuming_a_checkpoint_takes_its_config_like_the_cli(tmp_path: Path) -> None:
    """``resume`` a checkpoint directory: its config.yaml is the base, not the template, and
    only the parameters set change it, as ``train --resume PATH --num-updates 9``."""
    run = apply_overrides(load_template("fast"), {"seed": 7, "experiment_name": "earlier",
                                                  "rollout": {"max_steps": 33}, "output_dir": str(tmp_path)})  # fmt: skip
    checkpoint = tmp_path / "earlier" / "20261130-114502" / "checkpoint_latest"
    checkpoint.mkdir(parents=True)
    save_config(run, checkpoint / "config.yaml")
    params = {**unset(), "template": "fast", "num_updates": 9}

    resumed = config_from_notebook_parameters(**params, resume=str(checkpoint))
    assert resumed == apply_overrides(run, {"num_updates": 9})
    cli = train_config(build_parser().parse_args(["train", "--resume", str(checkpoint), "--num-updates", "9"]))
    assert resumed == cli
    # resume=True names no checkpoint: the template is the base, as for bare --resume
    newest = config_from_notebook_parameters(**params, resume=True)
    assert newest == train_config(build_parser().parse_args(["train", "--template", "fast", "--resume",
                                                             "--num-updates", "9"]))  # fmt: skip
    # a config file given with the checkpoint is the base, as --config with --resume PATH
    chosen = config_from_notebook_parameters(**{**params, "config": str(ROOT / "params" / "fast.yaml")},
                                             resume=str(checkpoint))  # fmt: skip
    assert chosen == apply_overrides(load_template("fast"), {"num_updates": 9})
    with pytest.raises(UsageError, match=r"^resume .*missing: no checkpoint directory there .* or resume=True"):
        config_from_notebook_parameters(**params, resume=str(tmp_path / "missing"))


def test_shortcuts_map_like_the_cli() -> None:
    assert SHORTCUTS == {
        "simulator": "rollout.simulator",
        "num_parallel_envs": "rollout.num_parallel_envs",
        "learning_rate": "ppo.learning_rate",
        "algorithm": "ppo.algorithm",
    }


def test_papermill_f_yaml_injects_every_key_and_p_wins() -> None:
    """`-f params/fast.yaml -p num_updates 3 -p learning_rate 1e-3`: sections come as whole dicts.

    The file's nulls (max_minutes, sft_checkpoint, ...) read as "unset" and keep the value of
    the notebook's default template, fast, whose nullable top-level keys are all null too.
    """
    injected = yaml.safe_load((ROOT / "params" / "fast.yaml").read_text())
    params = {**unset(), "template": "fast", **injected, "num_updates": 3, "learning_rate": 1e-3}
    cfg = config_from_notebook_parameters(**params)
    expected = config_to_dict(load_template("fast"))
    expected["num_updates"] = 3
    expected["ppo"]["learning_rate"] = 1e-3
    assert config_to_dict(cfg) == expected


def test_none_keeps_the_file_value_and_sections_change_only_their_keys() -> None:
    params = {**unset(), "template": "default", "ppo": {"num_epochs": 3}, "seed": None}
    cfg = config_from_notebook_parameters(**params)
    base = load_template("default")
    assert cfg.ppo.num_epochs == 3
    assert cfg.ppo.learning_rate == base.ppo.learning_rate
    assert cfg.seed == base.seed


def test_top_level_alias_wins_over_the_section_copy() -> None:
    params = {**unset(), "template": "fast", "lora_rank": 16, "lora": {"rank": 8, "alpha": 32.0}}
    cfg = config_from_notebook_parameters(**params)
    assert (cfg.lora_rank, cfg.lora.rank, cfg.lora_alpha, cfg.lora.alpha) == (16, 16, 32.0, 32.0)


def test_config_file_is_the_base_when_given(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("num_updates: 9\nexperiment_name: mine\n")
    params = {**unset(), "template": "fast", "config": str(path)}
    assert config_from_notebook_parameters(**params) == cli_config("--config", str(path))


def test_negative_learning_rate_is_a_clear_config_error() -> None:
    params = {**unset(), "template": "fast", "learning_rate": -0.001}
    with pytest.raises(ConfigError, match=r"ppo.learning_rate=-0.001 is invalid: must be > 0"):
        config_from_notebook_parameters(**params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_update": 3}, r"unknown notebook parameter\(s\) \['num_update'\]"),
        ({"ppo": [1, 2]}, r"notebook parameter 'ppo' must be a dict"),
        ({"ppo": {"learnin_rate": 1e-4}}, r"unknown config key 'ppo.learnin_rate'"),
        ({"num_updates": "many"}, r"'num_updates' expects int"),
        ({"template": "fastest"}, r"unknown config template 'fastest'; did you mean 'fast'"),
    ],
)
def test_bad_parameters_name_the_key(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_notebook_parameters(**{**unset(), **params})


def test_notebook_parameters_reads_globals_and_names_what_is_missing() -> None:
    namespace = {**unset(), "template": "fast", "other": 1}
    assert set(notebook_parameters(namespace)) == set(parameter_names())
    del namespace["seed"]
    with pytest.raises(NameError, match=r"does not define \['seed'\]"):
        notebook_parameters(namespace)


# ---------------------------------------------------------------- committed notebooks


def test_all_four_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_setup.ipynb", "02_train.ipynb", "03_evaluate.ipynb", "04_analyze.ipynb",
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_stripped_with_one_parameters_cell(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1


def test_nbstripout_verify_passes() -> None:
    nbstripout = Path(sys.executable).with_name("nbstripout")
    result = subprocess.run(
        [str(nbstripout), "--verify", *map(str, NOTEBOOKS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", CONFIG_NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_declares_every_config_key_with_type_and_help(path: Path) -> None:
    import papermill

    params = papermill.inspect_notebook(str(path))
    for name in [*parameter_names(), "interactive"]:
        assert name in params, f"{path.name} does not declare {name}"
        assert params[name]["inferred_type_name"] != "None", name
        assert params[name]["help"], name
    for name in top_level_keys():
        assert params[name]["default"] == "None", name


@pytest.mark.parametrize("name", ["03_evaluate.ipynb", "04_analyze.ipynb"])
def test_other_notebooks_document_their_parameters(name: str) -> None:
    import papermill

    params = papermill.inspect_notebook(str(ROOT / "notebooks" / name))
    assert params
    assert all(p["help"] and p["inferred_type_name"] != "None" for p in params.values())


# ---------------------------------------------------------------- reports and helpers


def test_environment_report_names_versions_gl_and_hardware() -> None:
    rows = {row["item"]: row["value"] for row in environment_report()}
    for item in ("python", "torch", "mujoco", "MUJOCO_GL", "OpenGL", "CPU"):
        assert item in rows
    assert "GPU" in rows or "GPU 0" in rows
    assert rows["torch"] != "not installed"


def test_labelled_row_puts_images_side_by_side() -> None:
    from io import BytesIO

    from PIL import Image

    images = {"a": np.zeros((20, 30, 3), np.uint8), "b": np.full((20, 30, 3), 255, np.uint8)}
    png = Image.open(BytesIO(labelled_row(images)))
    assert png.size == (2 * 30 + 4, 20 + 14)
    with pytest.raises(ValueError, match="share one size"):
        labelled_row({"a": np.zeros((20, 30, 3), np.uint8), "b": np.zeros((8, 8, 3), np.uint8)})


def test_find_checkpoint_prefers_best_then_latest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        find_checkpoint(tmp_path)
    for name in ("checkpoint_latest", "checkpoint_best"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text("{}")
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint_best"
    assert find_checkpoint(tmp_path / "checkpoint_latest") == tmp_path / "checkpoint_latest"


def test_find_checkpoint_in_an_experiment_folder_means_its_latest_run(tmp_path: Path) -> None:
    older, newer = (create_run_dir(tmp_path, clock=lambda t=t: t) for t in (1.7e9, 1.8e9))
    for run in (older, newer):
        (run / "checkpoint_latest").mkdir()
        (run / "checkpoint_latest" / "trainer_state.json").write_text("{}")
    assert find_checkpoint(tmp_path).resolve() == newer / "checkpoint_latest"
    for name in ("checkpoint_best", "checkpoint_latest"):  # no links: by folder name
        (tmp_path / name).unlink()
    assert find_checkpoint(tmp_path) == newer / "checkpoint_latest"


def test_seed_groups_gather_runs_that_differ_only_in_seed(tmp_path: Path) -> None:
    from vla_rl_lib.config import apply_overrides, load_template, save_config

    base = load_template("fast")
    settings = {"s1": {"seed": 1, "experiment_name": "ppo"}, "s2": {"seed": 2, "experiment_name": "ppo"},
                "g1": {"seed": 1, "experiment_name": "grpo", "ppo.algorithm": "grpo"}}  # fmt: skip
    for name, overrides in settings.items():
        (tmp_path / name).mkdir()
        save_config(apply_overrides(base, overrides), tmp_path / name / "config.yaml")
    groups = seed_groups({name: tmp_path / name for name in settings})
    assert groups == {"ppo": ["s1", "s2"], "grpo": ["g1"]}


def test_success_and_failure_pick_the_first_of_each() -> None:
    from vla_rl_lib.rollout.collector import Episode

    episodes = [Episode(0, 1, 0, success=False), Episode(1, 2, 0, success=True),
                Episode(2, 3, 0, success=True)]  # fmt: skip
    picked = success_and_failure(episodes)
    assert picked["success"].index == 1 and picked["failure"].index == 0
    assert "failure" not in success_and_failure(episodes[1:])


def test_discover_runs_and_final_rows(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds a metrics.jsonl"):
        discover_runs(tmp_path)
    for name in ("b_run", "a_run"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            '{"update": 0, "env_steps": 0, "eval_success": 0.5, "eval_success_low": 0.1, '
            '"eval_success_high": 0.9, "eval_episodes": 2}\n'
            '{"update": 1, "env_steps": 12, "train/success_rate": 0.25}\n'
        )
    assert list(discover_runs(tmp_path)) == ["a_run", "b_run"]  # from before run folders
    # run folders: <experiment>/<run>, the `latest` link not counted twice
    run = create_run_dir(tmp_path / "exp")
    (run / "metrics.jsonl").write_text((tmp_path / "a_run" / "metrics.jsonl").read_text())
    assert discover_runs(tmp_path) == {"a_run": tmp_path / "a_run", "b_run": tmp_path / "b_run",
                                       f"exp/{run.name}": run}  # fmt: skip
    (row,) = final_rows({"a": [json.loads(line) for line in
                              (tmp_path / "a_run" / "metrics.jsonl").read_text().splitlines()]})  # fmt: skip
    assert row == {"run": "a", "updates": 1, "env_steps": 12, "train/success_rate": 0.25,
                   "val/success": 0.5, "test/success": None, "test_low": None, "test_high": None,
                   "best_val": 0.5, "test_at_best_val": None}  # an old run's eval_* read as val  # fmt: skip


def test_fast_template_has_null_wherever_a_top_level_key_may_be_null() -> None:
    """Why None can mean "unset": the notebooks' default template holds null for those keys."""
    import types
    import typing

    from vla_rl_lib.config import VLARLConfig

    hints = typing.get_type_hints(VLARLConfig)
    fast = load_template("fast")
    nullable = [name for name in VLARLConfig.model_fields if name in top_level_keys()
                and typing.get_origin(hints[name]) in (typing.Union, types.UnionType)
                and type(None) in typing.get_args(hints[name])]  # fmt: skip
    assert nullable
    assert {name: getattr(fast, name) for name in nullable} == dict.fromkeys(nullable)


@pytest.mark.parametrize("path", CONFIG_NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_generated_from_the_schema(path: Path) -> None:
    assert parameter_cell_source(path).startswith(config_parameter_lines() + NOTEBOOK_OWN), (
        f"{path.name}'s parameters cell is out of date with the config schema; run "
        "python -c 'from vla_rl_lib.notebook import write_parameter_cells; write_parameter_cells()'"
    )


def test_help_notebook_shows_the_schema_descriptions() -> None:
    import papermill

    from vla_rl_lib.config import field_info

    params = papermill.inspect_notebook(str(CONFIG_NOTEBOOKS[1]))
    assert params["num_updates"]["help"] == field_info("num_updates").description
    assert params["eval_interval"]["help"] == "updates between held-out evaluations; 0: never"  # papermill: no '='
    assert params["learning_rate"]["help"].startswith("shortcut for ppo.learning_rate: ")
