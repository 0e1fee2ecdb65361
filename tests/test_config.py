"""VLARLConfig: templates, YAML round trips, strict validation, override semantics."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from vla_rl_lib.config import (
    TEMPLATE_NAMES,
    ConfigError,
    LoRAConfig,
    PPOConfig,
    RolloutConfig,
    VLARLConfig,
    all_keys,
    apply_overrides,
    choices,
    config_from_dict,
    config_to_dict,
    field_info,
    load_config,
    load_template,
    read_yaml,
    save_config,
    shortcuts,
    template_dir,
    template_text,
    validate_config,
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
    raw = yaml.safe_load(template_text(name))  # the whole file `config --template` writes
    assert sorted(_flat(raw)) == sorted(all_keys())


def test_default_template_equals_dataclass_defaults():
    assert load_template("default") == VLARLConfig()


def test_template_sizes():
    fast, default, full = (load_template(n) for n in ("fast", "default", "full"))
    assert (fast.num_updates, fast.rollout.num_parallel_envs) == (100, 2)
    assert (default.num_updates, default.rollout.num_parallel_envs) == (1000, 4)
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
    assert cfg.model_copy(update={"seed": 0}) == VLARLConfig()


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
        ({"model": {"vision_stem": "cnn"}}, "model.vision_stem"),
        ({"model": {"vision_stem": "conv", "patch_size": 1}}, "model.patch_size"),  # not 2^k
        ({"lora": {"dropout": 1.0}}, "lora.dropout"),
        ({"lora": {"target_modules": "q_proj"}}, "lora.target_modules"),
        ({"eval_seed": 12300}, "sft.demo_seed"),  # demos [12345, 12395) inside evaluation
        ({"eval_seed": 2**31 - 50}, "eval_seed"),  # evaluation runs into the training range
        ({"max_consecutive_skips": 0}, "max_consecutive_skips"),
        ({"experiment_name": "a/b"}, "experiment_name"),
        ({"sft": {"num_demos": -1}}, "sft.num_demos"),
        ({"sft": {"augment_shift": -1}}, "sft.augment_shift"),
        ({"sft": {"augment_shift": 32}}, "sft.augment_shift"),  # half of the 64-pixel images
        ({"sft": {"demo_action_noise": -0.1}}, "sft.demo_action_noise"),
        ({"sft": {"demo_noise_correlation": 1.0}}, "sft.demo_noise_correlation"),
        ({"sft": {"demo_noise_correlation": -0.5}}, "sft.demo_noise_correlation"),
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


def test_demo_seeds_inside_the_evaluation_range_are_rejected_naming_both():
    """Demo attempt k plays demo_seed + k: a demo range that meets the evaluation range leaks
    held-out starts into SFT, even when the two bases differ."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({"eval_seed": 1000, "num_eval_episodes": 100, "sft": {"demo_seed": 1050}})
    message = str(info.value)
    assert message.startswith("sft.demo_seed=1050 is invalid")
    assert "demonstration seeds [1050, 1100)" in message  # 20 demos may use 2 * 20 + 10 attempts
    assert "evaluation seeds [1000, 1100) (eval_seed)" in message
    assert "\n" not in message


def test_adjacent_seed_ranges_and_an_eval_seed_equal_to_seed_are_accepted():
    """Half-open ranges: [1000, 1100) and [1100, 1150) share no seed. ``seed`` is not a start seed."""
    cfg = config_from_dict(
        {"seed": 1000, "eval_seed": 1000, "num_eval_episodes": 100, "sft": {"demo_seed": 1100}}
    )
    assert cfg.eval_seed == cfg.seed
    no_demos = config_from_dict({"eval_seed": 1000, "sft": {"demo_seed": 1000, "num_demos": 0}})
    assert no_demos.sft.num_demos == 0  # no demonstration stream, nothing to overlap


def test_a_new_seed_stream_joins_the_check_by_adding_an_entry():
    from vla_rl_lib.seed_ranges import SeedRangeError, SeedStream, check_disjoint

    streams = [
        SeedStream("training", "fixed", range(2**31, 2**32)),
        SeedStream("evaluation", "eval_seed", range(0, 100)),
    ]
    check_disjoint(streams)
    with pytest.raises(SeedRangeError, match=r"^split.ood_seed=99 is invalid: ood seeds \[99, 109\)"
                       r" \(split.ood_seed\) overlap evaluation seeds \[0, 100\) \(eval_seed\)"):
        check_disjoint([*streams, SeedStream("ood", "split.ood_seed", range(99, 109))])


# ---------------------------------------------------------------- one schema, everything derived


def test_default_yaml_is_generated_from_the_schema():
    assert (template_dir() / "default.yaml").read_text() == template_text("default"), (
        "params/default.yaml is out of date with the schema; run "
        "`python -m vla_rl_lib config --template default -o params/default.yaml`"
    )


@pytest.mark.parametrize("name", ["fast", "full"])
def test_overlays_list_only_what_differs_from_default(name):
    raw = _flat(read_yaml((template_dir() / f"{name}.yaml").read_text()))
    default = _flat(config_to_dict(load_template("default")))
    assert raw and set(raw) <= set(default)
    assert {key for key, value in raw.items() if value == default[key]} == set()


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_the_whole_template_text_loads_to_the_template(name):
    assert config_from_dict(read_yaml(template_text(name))) == load_template(name)


def test_every_key_is_declared_with_a_one_line_description():
    for key in all_keys():
        description = field_info(key).description
        assert description and "\n" not in description, key


def test_a_removed_key_says_so_in_one_line(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("rollout:\n  render_mode: depth\n")
    with pytest.raises(ConfigError, match=r"'rollout.render_mode' was removed: .*delete the line$") as info:
        load_config(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="was removed"):
        apply_overrides(VLARLConfig(), {"rollout.render_mode": "rgb_array"})


def test_a_run_folder_from_before_a_removal_still_loads(tmp_path):
    """Its config.yaml holds render_mode: rgb_array, the only value the key ever took; the
    checkpoint's recorded SHA-256 covers the file, so the line cannot be deleted by hand."""
    path = tmp_path / "config.yaml"
    old = config_to_dict(load_template("fast"))
    old["rollout"]["render_mode"] = "rgb_array"
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    assert load_config(path) == load_template("fast")


def test_bounds_and_rules_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"^rollout.max_steps=0 is invalid: must be >= 1 \(steps per episode"):
        config_from_dict({"rollout": {"max_steps": 0}})
    with pytest.raises(ConfigError, match=r"^output_dir=' ' is invalid: must not be empty"):
        config_from_dict({"output_dir": " "})
    with pytest.raises(ConfigError, match=r"^trust_remote_code=\['a', ''\] is invalid"):
        config_from_dict({"trust_remote_code": ["a", ""]})
    with pytest.raises(ConfigError, match=r"^rollout.camera='wrist' is invalid: choose one of \['third_person'"):
        config_from_dict({"rollout": {"camera": "wrist"}})


def test_building_in_python_gives_the_one_line_error_of_a_yaml_file():
    """A notebook or script building the config directly reads the same error as the CLI."""
    one_line = r"^rollout.num_parallel_envs=0 is invalid: must be >= 1 \(batched envs"
    with pytest.raises(ConfigError, match=one_line) as raised:
        VLARLConfig(rollout={"num_parallel_envs": 0})
    assert "\n" not in str(raised.value) and type(raised.value) is ConfigError
    with pytest.raises(ConfigError, match=one_line):
        VLARLConfig.model_validate({"rollout": {"num_parallel_envs": 0}})
    with pytest.raises(ConfigError, match=one_line):
        RolloutConfig(num_parallel_envs=0)  # a section alone still names its dotted key
    with pytest.raises(ConfigError, match=r"^unknown config key 'sedd'; did you mean 'seed'\?$"):
        VLARLConfig(sedd=3)
    with pytest.raises(ConfigError, match=r"^config key 'seed' expects int, got '3' \(str\)$"):
        VLARLConfig(seed="3")
    with pytest.raises(ConfigError, match=r"^ppo.micro_batch_size=128 is invalid"):
        VLARLConfig(ppo={"micro_batch_size": 128})  # a cross-field rule
    with pytest.raises(ValueError):  # ConfigError stays a ValueError
        VLARLConfig(rollout={"max_steps": 0})


def test_tuples_fill_list_fields_and_nothing_else_is_loosened():
    cfg = VLARLConfig(eval_splits=("val", "test"), trust_remote_code=("a/b",),
                      lora={"target_modules": ("q_proj", "v_proj"), "exclude_modules": ("head",)})  # fmt: skip
    assert cfg.eval_splits == ["val", "test"] and cfg.trust_remote_code == ["a/b"]
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.lora.exclude_modules == ["head"]
    assert LoRAConfig(target_modules=("q_proj",)).target_modules == ["q_proj"]
    assert config_to_dict(cfg) == config_to_dict(config_from_dict(config_to_dict(cfg)))
    assert apply_overrides(VLARLConfig(), {"eval_splits": ("val",)}).eval_splits == ["val"]
    with pytest.raises(ConfigError, match="^config key 'eval_splits' expects list of str, got 'val'"):
        VLARLConfig(eval_splits="val")  # a string stays a string
    with pytest.raises(ConfigError, match="^config key 'use_wandb' expects bool, got 1 \\(int\\)"):
        VLARLConfig(use_wandb=1)  # no int -> bool
    with pytest.raises(ConfigError, match="^config key 'lora.target_modules' expects str or list of str"):
        VLARLConfig(lora={"target_modules": ("q_proj", 1)})  # items keep their type
    with pytest.raises(ConfigError, match="^config key 'seed' expects int"):
        VLARLConfig(seed=(1,))  # a tuple fills only a list
    with pytest.raises(ConfigError, match="^config key 'eval_splits' expects list of str"):
        VLARLConfig(eval_splits={"val", "test"})  # a set has no order: still refused


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_templates_name_the_run_folder_after_the_task_they_train(name):
    cfg = load_template(name)
    task = cfg.rollout.env_id.removesuffix("-CRANE-X7").lower()  # Lift-CRANE-X7 -> lift
    assert cfg.experiment_name.startswith(f"crane_x7_{task}"), (cfg.experiment_name, cfg.rollout.env_id)


def test_evaluate_notebook_looks_in_the_default_experiment_folder():
    notebook = json.loads((template_dir().parent / "notebooks" / "03_evaluate.ipynb").read_text())
    (cell,) = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert f'experiment_name: str = "{VLARLConfig().experiment_name}"' in "".join(cell["source"])


def test_validate_config_catches_an_unvalidated_copy():
    validate_config(VLARLConfig())
    with pytest.raises(ConfigError, match="^ppo.gamma=2.0 is invalid"):
        validate_config(VLARLConfig().model_copy(update={"ppo": PPOConfig().model_copy(update={"gamma": 2.0})}))


def test_shortcuts_come_from_the_schema():
    assert shortcuts()["num_rollouts"] == "rollout.num_rollouts_per_update"
    assert shortcuts()["pretrained"] == "pretrained_checkpoint"
    assert shortcuts()["instruction"] == "language_instruction"
    assert choices("ppo.algorithm") == ["ppo", "grpo"] and choices("seed") is None
