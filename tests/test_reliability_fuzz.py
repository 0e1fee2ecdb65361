"""Bad input, fuzzed: config dicts and YAML, command-line flags, notebook parameters.

Whatever comes in, the answer is a valid config or a ``ConfigError`` (the CLI:
exit 2 and a one-line message), never another exception or a traceback.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_rl_lib.config import (
    ConfigError,
    VLARLConfig,
    all_keys,
    config_from_dict,
    config_to_dict,
    load_config,
    load_template,
)
from vla_rl_lib.notebook import config_from_notebook_parameters, parameter_names
from vla_rl_lib.training import trainer as trainer_module
from vla_rl_lib.training.cli import build_parser, main

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["cpu", "cuda", "ppo", "grpo", "mujoco", "tiny", "all-linear", "1e-4", ""]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=8), scalars, max_size=3))
DOTTED = all_keys()
keys = st.one_of(st.sampled_from(DOTTED), st.text(max_size=15))


@st.composite
def config_dicts(draw) -> dict:
    """A nested config dict: some real keys (dotted ones nested), some junk, values of any type."""
    out: dict = {}
    for key, value in draw(st.dictionaries(keys, values, max_size=6)).items():
        section, _, leaf = key.partition(".")
        if leaf and draw(st.booleans()):
            if not isinstance(out.get(section), dict):
                out[section] = {}
            out[section][leaf] = value
        else:
            out[key] = value
    return out


def _assert_valid(cfg: VLARLConfig) -> None:
    assert isinstance(cfg, VLARLConfig)
    assert config_from_dict(config_to_dict(cfg)) == cfg  # what loads, saves and reloads the same


def _assert_config_error(exc: ConfigError) -> None:
    message = str(exc)
    assert message and "\n" not in message, message


@FUZZ
@given(config_dicts())
def test_config_dicts(d):
    try:
        cfg = config_from_dict(d)
    except ConfigError as exc:
        _assert_config_error(exc)
    else:
        _assert_valid(cfg)


@FUZZ
@given(config_dicts().map(lambda d: {**config_to_dict(load_template("fast")), **d}))
def test_config_dicts_near_a_valid_one(d):
    """Mostly-valid configs with a few wrong keys: deeper into the value checks."""
    try:
        cfg = config_from_dict(d)
    except ConfigError as exc:
        _assert_config_error(exc)
    else:
        _assert_valid(cfg)


@FUZZ
@given(st.one_of(st.text(max_size=200), config_dicts().map(lambda d: yaml.safe_dump(d))))
def test_yaml_files(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _assert_config_error(exc)
    else:
        _assert_valid(cfg)


def test_non_finite_numbers_are_refused():
    """inf/nan pass a `> 0` check; a learning rate of inf must not reach the optimizer."""
    for key in ("ppo.learning_rate", "rollout.temperature", "ppo.max_grad_norm", "sft.learning_rate"):
        section, leaf = key.split(".")
        for bad in (math.inf, -math.inf, math.nan, 10**400):  # the last overflows float()
            with pytest.raises(ConfigError, match=leaf):
                config_from_dict({section: {leaf: bad}})


# ------------------------------------------------------------------ command line


class ReachedTraining(Exception):
    """Raised by the stand-in Trainer: the flags made a valid config (nothing is trained)."""


class StandInTrainer:
    def __init__(self, cfg, **kwargs):
        assert isinstance(cfg, VLARLConfig)
        raise ReachedTraining


def _flag_strategy():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    train_flags = [
        option
        for action in subparsers["train"]._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--config", "--template")
    ]
    flag_values = st.one_of(
        st.integers(-5, 10**6).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
        st.sampled_from(["cpu", "ray", "grpo", "mujoco", "--", "-1", "1e-4", "nan", "x/y"]),
    )
    pair = st.tuples(st.sampled_from(train_flags), flag_values)
    return st.lists(pair, min_size=1, max_size=4)


def _names_the_error(err: str) -> bool:
    """A line ``python -m vla_rl_lib <command>: error: ...`` (argparse echoes raw values after it)."""
    return any(line.startswith("python -m vla_rl_lib") and ": error: " in line for line in err.split("\n"))


def _run_cli(argv: list[str]) -> tuple[int | str, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code: int | str = main(argv)
        except SystemExit as exc:  # argparse: bad flag or a value of the wrong type
            code = exc.code
        except ReachedTraining:
            code = "trained"
    return code, err.getvalue()


@settings(FUZZ, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_flag_strategy())
def test_cli_train_flags(monkeypatch, flags):
    monkeypatch.setattr(trainer_module, "Trainer", StandInTrainer)
    argv = ["train", "--template", "fast"]
    for flag, value in flags:
        argv += [flag] if flag in ("--resume", "--render", "--use-wandb") else [flag, value]
    code, err = _run_cli(argv)
    if code == "trained":
        return
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err
    assert _names_the_error(err), (argv, err)
    if "usage:" not in err:  # our own errors are one line; argparse's add a usage line above
        assert err.strip().count("\n") == 0, (argv, err)


@FUZZ
@given(st.text(max_size=30), st.lists(st.text(max_size=8), max_size=3))
def test_cli_evaluate_bad_checkpoints(tmp_path_factory, checkpoint, extra):
    missing = tmp_path_factory.mktemp("eval") / f"no_such_checkpoint{checkpoint.replace('/', '_')}"
    code, err = _run_cli(["evaluate", "--checkpoint", str(missing), "--num-episodes", "1", *extra])
    assert code == 2 and "Traceback" not in err, err
    assert _names_the_error(err), err


# ------------------------------------------------------------------ notebook parameters

NOTEBOOK_NAMES = [name for name in parameter_names() if name not in ("template", "config")]


@FUZZ
@given(
    st.dictionaries(st.one_of(st.sampled_from(NOTEBOOK_NAMES), st.text(max_size=10)), values, max_size=5),
    st.one_of(st.none(), st.sampled_from(["fast", "default", "full", "fastt", ""])),
)
def test_notebook_parameters(params, template):
    params = {k: v for k, v in params.items() if k not in ("template", "config")}
    try:
        cfg = config_from_notebook_parameters(template=template, **params)
    except ConfigError as exc:
        _assert_config_error(exc)
    else:
        _assert_valid(cfg)
