"""VLARLConfig: templates, YAML round trips, strict validation, override semantics."""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from vla_rl_lib.config import (
    TEMPLATE_NAMES,
    ConfigError,
    VLARLConfig,
    all_keys,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    load_template,
    save_config,
    template_dir,
)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_template_round_trips_exactly(name, tmp_path):
    cfg = load_template(name)
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["saved.yaml"]  # no temp file left


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_template_lists_every_key(name):
    raw = yaml.safe_load((template_dir() / f"{name}.yaml").read_text())
    assert sorted(_flat(raw)) == sorted(all_keys())


def test_default_template_equals_dataclass_defaults():
    assert load_template("default") == VLARLConfig()


def test_template_sizes():
    fast, default, full = (load_template(n) for n in ("fast", "default", "full"))
    assert (fast.num_updates, fast.rollout.num_parallel_envs) == (100, 2)
    assert (default.num_updates, default.rollout.num_parallel_envs) == (1000, 8)
    assert (full.num_updates, full.rollout.num_parallel_envs) == (5000, 8)
    assert fast.model.name == default.model.name == "tiny"
    assert fast.rollout.image_size == 64 and full.model.name == "openvla"


def test_unknown_template_suggests():
    with pytest.raises(ConfigError, match="did you mean 'fast'"):
        load_template("fats")


def test_float_in_exponent_notation_reads_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  learning_rate: 1e-4\n  value_learning_rate: 3E-5\n")
    cfg = load_config(path)
    assert cfg.ppo.learning_rate == 1e-4 and cfg.ppo.value_learning_rate == 3e-5


def test_partial_file_takes_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\n")
    cfg = load_config(path)
    assert cfg.seed == 7
    assert dataclasses.replace(cfg, seed=0) == VLARLConfig()


@pytest.mark.parametrize(
    ("d", "suggestion"),
    [
        ({"ppo": {"learnig_rate": 1e-4}}, "ppo.learning_rate"),
        ({"num_update": 3}, "num_updates"),
        ({"learning_rate": 1e-4}, "ppo.learning_rate"),  # right key, wrong section
        ({"rollout": {"num_paralel_envs": 2}}, "rollout.num_parallel_envs"),
    ],
)
def test_unknown_key_names_nearest_valid_key(d, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'") as info:
        config_from_dict(d)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("d", "key", "expected"),
    [
        ({"seed": True}, "seed", "int"),  # bool is not an int
        ({"seed": 1.5}, "seed", "int"),
        ({"ppo": {"learning_rate": "1e-4"}}, "ppo.learning_rate", "float"),  # str is not a number
        ({"ppo": {"num_epochs": "4"}}, "ppo.num_epochs", "int"),
        ({"use_wandb": "yes please"}, "use_wandb", "bool"),
        ({"ppo": {"target_kl": "off"}}, "ppo.target_kl", "float or None"),
        ({"trust_remote_code": "openvla/openvla-7b"}, "trust_remote_code", "list of str"),
        ({"lora": {"target_modules": 3}}, "lora.target_modules", "str or list of str"),
    ],
)
def test_wrong_type_names_key_expected_and_got(d, key, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    message = str(info.value)
    assert f"'{key}'" in message and f"expects {expected}," in message and "got" in message


def test_zero_demos_means_no_warm_start():
    assert config_from_dict({"sft": {"num_demos": 0}}).sft.num_demos == 0


def test_int_accepted_for_float():
    cfg = config_from_dict({"ppo": {"gamma": 1}})
    assert cfg.ppo.gamma == 1.0 and isinstance(cfg.ppo.gamma, float)


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"ppo": {"clip_ratio": 0}}, "ppo.clip_ratio"),
        ({"ppo": {"clip_ratio": -0.1}}, "ppo.clip_ratio"),
        ({"ppo": {"clip_ratio_high": 0.1}}, "ppo.clip_ratio_high"),
        ({"ppo": {"gamma": 0}}, "ppo.gamma"),
        ({"ppo": {"gamma": 1.01}}, "ppo.gamma"),
        ({"ppo": {"gae_lambda": 1.5}}, "ppo.gae_lambda"),
        ({"ppo": {"learning_rate": -1e-4}}, "ppo.learning_rate"),
        ({"ppo": {"value_learning_rate": -1e-4}}, "ppo.value_learning_rate"),
        ({"ppo": {"minibatch_size": 481}}, "ppo.minibatch_size"),  # default bound is 8 * 60
        ({"ppo": {"micro_batch_size": 65}}, "ppo.micro_batch_size"),
        ({"ppo": {"target_kl": 0}}, "ppo.target_kl"),
        ({"ppo": {"num_epochs": 0}}, "ppo.num_epochs"),
        ({"ppo": {"algorithm": "grpo", "group_size": 3}}, "ppo.group_size"),
        ({"ppo": {"algorithm": "a2c"}}, "ppo.algorithm"),
        ({"rollout": {"num_parallel_envs": 0}}, "rollout.num_parallel_envs"),
        ({"rollout": {"temperature": 0}}, "rollout.temperature"),
        ({"rollout": {"camera": "wrist"}}, "rollout.camera"),
        ({"rollout": {"ray_address": "auto"}}, "rollout.ray_address"),
        ({"rollout": {"image_size": 128}}, "rollout.image_size"),  # tiny model: must match
        ({"device": "tpu"}, "device"),
        ({"pretrained_checkpoint": "a", "sft_checkpoint": "b"}, "sft_checkpoint"),
        ({"model": {"name": "openvla"}}, "pretrained_checkpoint"),
        ({"model": {"patch_size": 12}}, "model.patch_size"),
        ({"lora": {"dropout": 1.0}}, "lora.dropout"),
        ({"lora": {"target_modules": "q_proj"}}, "lora.target_modules"),
        ({"eval_seed": 0}, "eval_seed"),
        ({"max_consecutive_skips": 0}, "max_consecutive_skips"),
        ({"experiment_name": "a/b"}, "experiment_name"),
        ({"sft": {"num_demos": -1}}, "sft.num_demos"),
    ],
)
def test_impossible_values_rejected(d, key):
    with pytest.raises(ConfigError, match=f"^{key}=") as info:
        config_from_dict(d)
    assert "\n" not in str(info.value)


def test_minibatch_bound_is_rollouts_times_max_steps():
    cfg = config_from_dict(
        {"rollout": {"num_rollouts_per_update": 2, "max_steps": 10},
         "ppo": {"minibatch_size": 20, "micro_batch_size": 10}}
    )
    assert cfg.max_batch_steps() == 20
    with pytest.raises(ConfigError, match="= 20"):
        apply_overrides(cfg, {"ppo.minibatch_size": 21})


def test_overrides_change_only_given_keys():
    base = load_template("fast")
    cfg = apply_overrides(base, {"seed": 3, "ppo.clip_ratio": 0.1})
    before, after = _flat(config_to_dict(base)), _flat(config_to_dict(cfg))
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"seed", "ppo.clip_ratio"}
    assert apply_overrides(base, {}) == base
    assert base.seed == 0  # the input is not mutated


def test_nested_dotted_and_flat_overrides_agree():
    base = load_template("default")
    nested = apply_overrides(
        base, {"ppo": {"learning_rate": 3e-5}, "rollout": {"temperature": 0.5}}
    )
    dotted = apply_overrides(base, {"ppo.learning_rate": 3e-5, "rollout.temperature": 0.5})
    flat = apply_overrides(base, {"temperature": 0.5, "ppo.learning_rate": 3e-5})
    assert nested == dotted == flat
    assert nested.ppo.learning_rate == 3e-5 and nested.ppo.gamma == base.ppo.gamma


def test_override_to_none_and_back():
    cfg = apply_overrides(
        load_template("full"), {"ppo.target_kl": None, "ppo.clip_ratio_high": None}
    )
    assert cfg.ppo.target_kl is None and cfg.ppo.clip_ratio_high is None


def test_ambiguous_flat_override_names_both_sections():
    with pytest.raises(ConfigError, match="'ppo.learning_rate' or 'sft.learning_rate'"):
        apply_overrides(VLARLConfig(), {"learning_rate": 1e-4})


def test_override_errors():
    with pytest.raises(ConfigError, match="did you mean 'ppo.clip_ratio'"):
        apply_overrides(VLARLConfig(), {"ppo.clip_ratoi": 0.1})
    with pytest.raises(ConfigError, match="did you mean"):
        apply_overrides(VLARLConfig(), {"ppo.gamma.x": 0.1})
    with pytest.raises(ConfigError, match="must be a mapping"):
        apply_overrides(VLARLConfig(), {"ppo": 3})
    with pytest.raises(ConfigError, match="expects int"):
        apply_overrides(VLARLConfig(), {"rollout": {"max_steps": "10"}})


def test_lora_aliases():
    cfg = apply_overrides(VLARLConfig(), {"lora_rank": 16})
    assert cfg.lora.rank == cfg.lora_rank == 16
    cfg = apply_overrides(VLARLConfig(), {"lora": {"alpha": 32}})
    assert cfg.lora_alpha == cfg.lora.alpha == 32.0
    assert config_from_dict({"lora_rank": 4}).lora.rank == 4
    assert config_from_dict({"lora": {"rank": 4}}).lora_rank == 4
    with pytest.raises(ConfigError, match="alias"):
        config_from_dict({"lora_rank": 4, "lora": {"rank": 8}})
    with pytest.raises(ConfigError, match="alias"):
        apply_overrides(VLARLConfig(), {"lora_rank": 4, "lora.rank": 8})


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("ppo:\n  gama: 0.9\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: unknown config key 'ppo.gama'"):
        load_config(wrong)


def test_save_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "sub" / "c.yaml"
    save_config(VLARLConfig(), path)
    save_config(apply_overrides(VLARLConfig(), {"seed": 5}), path)
    assert load_config(path).seed == 5
    assert os.listdir(path.parent) == ["c.yaml"]


def test_model_sizes_map_onto_the_tiny_vla_config():
    from vla_rl_lib.policy.tiny_vla import TinyVLAConfig

    sizes = load_template("default").model.tiny_vla_sizes()
    assert (
        TinyVLAConfig(**sizes) == TinyVLAConfig()
    )  # the default template is the measured 1M model
