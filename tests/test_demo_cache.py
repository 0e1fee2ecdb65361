"""The warm start's demonstration cache: reused only when every setting that shapes the
demonstrations matches what meta.json records; otherwise a new folder, or a refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla_rl_lib.config import apply_overrides
from vla_rl_lib.sft import DemoDatasetError, collect_demonstrations
from vla_rl_lib.sft import trainer as sft_trainer
from vla_rl_lib.sft.demos import (
    META_FILE,
    RECIPE_EXCLUDED,
    demo_dataset_dir,
    demo_recipe,
    ensure_demonstrations,
)
from vla_rl_lib.training.policy_factory import run_warm_start

SETTINGS = {"num_envs": 2, "image_size": 32, "max_episode_steps": 60, "progress": False}


class StopAtSFT(Exception):
    """Raised by the patched run_sft once it has seen the dataset."""


def test_a_cached_dataset_for_another_control_mode_is_not_reused(tiny_config, monkeypatch):
    """The old cache folder name knew only count, seed, camera and size: a dataset collected
    with pd_joint_pos sat where a pd_joint_delta_pos run looked, and was trained on."""
    outputs = Path(tiny_config.output_dir)
    cfg = apply_overrides(
        tiny_config, {"sft.num_demos": 1, "sft.dataset_dir": str(outputs / "demos"),
                      "rollout.max_steps": 60}
    )
    r = cfg.rollout
    stale_name = f"demos_1_seed{cfg.sft.demo_seed}_{r.camera}_{r.image_size}px"  # the old name
    collect_demonstrations(
        1, cfg.sft.demo_seed, f"{cfg.sft.dataset_dir}/{stale_name}", num_envs=2,
        image_size=r.image_size, camera=r.camera, control_mode="pd_joint_pos",
        max_episode_steps=r.max_steps, instruction=cfg.language_instruction, progress=False,
    )
    seen = []

    def capture(policy, dataset, **kwargs):
        seen.append(dataset)
        raise StopAtSFT

    monkeypatch.setattr(sft_trainer, "run_sft", capture)
    with pytest.raises(StopAtSFT):
        run_warm_start(cfg, outputs / "sft", progress=False)
    (dataset,) = seen
    assert dataset.meta["env"]["control_mode"] == r.control_mode == "pd_joint_delta_pos"
    assert dataset.meta["env"]["max_episode_steps"] == r.max_steps


def test_every_recipe_setting_gets_its_own_folder():
    base = demo_recipe(3, 0, **SETTINGS)
    changes = {
        "simulator": "genesis", "env_id": "Other-Task", "image_size": 64, "camera": "hand_camera",
        "control_mode": "pd_joint_pos", "max_episode_steps": 61, "instruction": "lift it",
        "max_attempts": 50,
    }
    recipe_args = set(base["arguments"]) - {"num_demos", "seed"}
    assert recipe_args == set(changes), "a new collect_demonstrations parameter: add a change"
    folders = {demo_dataset_dir("root", base)}
    for key, value in changes.items():
        folders.add(demo_dataset_dir("root", demo_recipe(3, 0, **{**SETTINGS, key: value})))
    folders.add(demo_dataset_dir("root", demo_recipe(4, 0, **SETTINGS)))
    folders.add(demo_dataset_dir("root", demo_recipe(3, 1, **SETTINGS)))
    assert len(folders) == len(changes) + 3
    # Settings that do not change the data keep the folder.
    same = demo_recipe(3, 0, **{**SETTINGS, "num_envs": 7, "progress": True})
    assert demo_dataset_dir("root", same) == demo_dataset_dir("root", base)
    assert set(RECIPE_EXCLUDED) == {"out_dir", "num_envs", "overwrite", "progress"}


def test_a_changed_scene_file_is_another_dataset(tmp_path, monkeypatch):
    """A camera moved in the scene's XML used to keep the cache folder (only the camera's
    name was in it), so demos rendered from the old pose were trained on."""
    import shutil

    from lift import task

    base = demo_recipe(3, 0, **SETTINGS)
    copy = tmp_path / "crane_x7"
    shutil.copytree(task.ASSETS_DIR, copy)
    monkeypatch.setattr(task, "ASSETS_DIR", copy)
    assert demo_recipe(3, 0, **SETTINGS) == base  # the same bytes: the same dataset
    scene = copy / "scene_pickplace.xml"
    text = scene.read_text()
    camera = next(line for line in text.splitlines() if 'camera name="third_person"' in line)
    x = camera.split(' pos="')[1].split()[0]
    scene.write_text(text.replace(camera, camera.replace(f' pos="{x} ', f' pos="{float(x) + 0.01:.2f} ')))
    moved = demo_recipe(3, 0, **SETTINGS)
    assert moved["scene"] != base["scene"] and moved["arguments"] == base["arguments"]
    assert demo_dataset_dir("root", moved) != demo_dataset_dir("root", base)


def test_reuse_when_the_recipe_matches_and_refuse_when_meta_disagrees(tmp_path):
    first = ensure_demonstrations(tmp_path, 1, 0, **SETTINGS)
    meta = json.loads((first / META_FILE).read_text())
    assert meta["recipe"] == demo_recipe(1, 0, **SETTINGS)
    stamp = (first / META_FILE).stat().st_mtime_ns
    assert ensure_demonstrations(tmp_path, 1, 0, **{**SETTINGS, "num_envs": 1}) == first
    assert (first / META_FILE).stat().st_mtime_ns == stamp  # reused, not collected again

    # A folder whose meta.json records another recipe (edited, copied in, or older) is refused.
    meta["recipe"]["arguments"]["control_mode"] = "pd_joint_pos"
    (first / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(DemoDatasetError) as info:
        ensure_demonstrations(tmp_path, 1, 0, **SETTINGS)
    message = str(info.value)
    assert "recipe.arguments.control_mode='pd_joint_pos'" in message
    assert "'pd_joint_delta_pos'" in message and "\n" not in message

    del meta["recipe"]
    (first / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(DemoDatasetError, match="recipe=.*written before recipes were recorded"):
        ensure_demonstrations(tmp_path, 1, 0, **SETTINGS)
