"""Which policy a run starts from, and how a run checkpoint is turned back into a policy.

A run starts from exactly one base, recorded in ``trainer_state.json`` as
``base = {"kind": ..., "path": ...}``:

* ``sft``        — ``sft_checkpoint`` (a directory ``HFVLAPolicy.from_checkpoint`` reads);
* ``pretrained`` — ``pretrained_checkpoint`` (an HF model directory, or OpenVLA
  whose own ``norm_stats`` already describe the robot's 8-D actions);
* ``warm_start`` — no SFT checkpoint, ``sft.num_demos > 0``, and either no
  ``pretrained_checkpoint`` or an OpenVLA one without statistics for the robot
  (base OpenVLA has only 7-D end-effector ones): scripted demos are collected
  and the pretrained model (else a fresh tiny VLA) is behaviour-cloned into
  ``<run>/sft`` first, its action statistics saved under ``model.unnorm_key``;
* ``tiny``       — the tiny VLA's random initialization, saved to ``<run>/base_model``.

Training checkpoints hold only the trainable weights, so evaluating one means
rebuilding that base and loading them on top (``policy_from_run_checkpoint``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from vla_rl_lib.config import VLARLConfig, config_from_dict, load_config, load_template, save_config
from vla_rl_lib.policy.action_tokenizer import ActionStatistics
from vla_rl_lib.policy.hf_policy import HFVLAPolicy
from vla_rl_lib.policy.loading import DTYPES as DTYPES  # notebook.py reads the dtype names here
from vla_rl_lib.policy.loading import (
    PolicySettings,
    fresh_openvla_policy,
    fresh_tiny_policy,
    load_base_policy,
)
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import TinyVLAConfig
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.runs import SHARED_SFT_DIRNAME
from vla_rl_lib.utils import write_json_atomic

# in a resumable warm start's folder until it finishes: how long the first call's demos took
WARM_START_DEMO_FILE = "warm_start_demos.json"


def policy_settings(cfg: VLARLConfig) -> PolicySettings:
    """The run config's policy settings: the one place it enters the policy package."""
    return PolicySettings(
        model=cfg.model.name,
        decoding=cfg.model.decoding,
        unnorm_key=cfg.model.unnorm_key,
        lora=lora_settings(cfg),
        dtype=cfg.model.dtype,
        seed=cfg.seed,
        trust_remote_code=tuple(cfg.trust_remote_code),
        tiny_sizes=tiny_vla_config(cfg),
        action_dim=action_dim(cfg),
    )


def action_dim(cfg: VLARLConfig) -> int:
    """The width of the run's actions: 4 in ``pd_ee_delta_pos``, 8 in the joint modes."""
    from lift import task

    return task.action_dim(cfg.rollout.control_mode)


def tiny_vla_config(cfg: VLARLConfig) -> TinyVLAConfig:
    return TinyVLAConfig(**cfg.model.tiny_vla_sizes())


def lora_settings(cfg: VLARLConfig) -> LoRAConfig:
    """``cfg.lora`` as the policy package's ``LoRAConfig`` (the section is made from its fields)."""
    return cfg.lora.adapter()


def _resolve(run_dir: Path, path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else run_dir / p)


def build_training_policy(
    cfg: VLARLConfig, run_dir: Path, progress: bool = True
) -> tuple[HFVLAPolicy, dict[str, Any]]:
    """The policy a new (or resumed) run trains, and the record of its base."""
    check_model_source(cfg)
    settings = policy_settings(cfg)
    if cfg.sft_checkpoint:
        base = {"kind": "sft", "path": str(Path(cfg.sft_checkpoint).absolute())}
    elif cfg.pretrained_checkpoint and not pretrained_needs_sft(cfg):
        path = cfg.pretrained_checkpoint
        base = {"kind": "pretrained", "path": str(Path(path).absolute()) if Path(path).exists() else path}
    elif cfg.sft.num_demos > 0:
        sft_dir = run_dir / "sft"
        if not (sft_dir / "policy_config.json").is_file():  # a resumed run reuses its warm start
            run_warm_start(cfg, sft_dir, progress=progress)
        base = {"kind": "warm_start", "path": "sft"}
    elif cfg.pretrained_checkpoint:
        raise ValueError(_sft_first_message(cfg))
    else:
        base_dir = run_dir / "base_model"
        if not (base_dir / "policy_config.json").is_file():
            fresh_tiny_policy(settings, train_all=True).save_pretrained(str(base_dir))
        base = {"kind": "tiny", "path": "base_model"}
    policy = load_base_policy(settings, base["kind"], _resolve(run_dir, base["path"]))
    if cfg.model.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    return policy, base


def check_training_start(cfg: VLARLConfig) -> None:
    """What ``build_training_policy`` would refuse, checked before anything is built or planned:
    the model source, and an OpenVLA base that needs SFT first when no demos are asked for."""
    check_model_source(cfg)
    if (not cfg.sft_checkpoint and cfg.pretrained_checkpoint and cfg.sft.num_demos == 0
            and pretrained_needs_sft(cfg)):  # fmt: skip
        raise ValueError(_sft_first_message(cfg))


def check_model_source(cfg: VLARLConfig) -> None:
    """Refuse a model source the config cannot use, before anything is loaded or collected.

    An OpenVLA ``pretrained_checkpoint`` under the tiny model's settings is
    refused with the template that fits it; for ``model.name: openvla`` the
    checkpoint's folder, allowlist and remote-code imports are checked
    (``check_openvla_checkpoint``: one line naming what is missing).
    """
    from vla_rl_lib.policy.openvla import check_openvla_checkpoint, names_openvla

    path = cfg.pretrained_checkpoint
    if cfg.model.name == "openvla":
        if path:
            check_openvla_checkpoint(path, cfg.trust_remote_code)
    elif path and names_openvla(path):
        raise ValueError(
            f"pretrained_checkpoint {path!r} is an OpenVLA checkpoint but model.name is "
            f"{cfg.model.name!r}; use the OpenVLA settings, which fine-tune it on CRANE-X7 demonstrations "
            "before RL: add `--template full` to the command (or start from params/full.yaml: "
            "model.name: openvla, decoding: autoregressive, LoRA, bf16)"
        )


def check_sft_start(cfg: VLARLConfig) -> None:
    """What ``run_warm_start`` needs from the config, checked before demonstrations are collected."""
    from vla_rl_lib.policy.openvla import OPENVLA_7B

    check_model_source(cfg)
    if cfg.model.name == "openvla" and not cfg.pretrained_checkpoint:
        raise ValueError(
            "SFT of model.name 'openvla' starts from pretrained_checkpoint, which is not set; "
            f"set pretrained_checkpoint: {OPENVLA_7B} (a local copy; see the README's OpenVLA section)"
        )


def pretrained_needs_sft(cfg: VLARLConfig) -> bool:
    """True for an OpenVLA checkpoint without statistics for the robot's actions (e.g. base OpenVLA).

    Its ``norm_stats`` must hold ``model.unnorm_key`` (or, with no key, a
    single entry) of the run's action width (``action_dim(cfg)``); otherwise its action tokens
    cannot be un-normalized for this robot until SFT computes them.
    """
    if cfg.model.name != "openvla" or not cfg.pretrained_checkpoint:
        return False
    from vla_rl_lib.policy.openvla import check_openvla_checkpoint, checkpoint_action_statistics

    directory = check_openvla_checkpoint(cfg.pretrained_checkpoint, cfg.trust_remote_code)
    _, statistics = checkpoint_action_statistics(directory, cfg.model.unnorm_key, action_dim(cfg))
    return statistics is None


def _sft_first_message(cfg: VLARLConfig) -> str:
    sft_dir = shared_sft_dir(cfg)
    return (
        f"pretrained_checkpoint {cfg.pretrained_checkpoint!r} has no {action_dim(cfg)}-D CRANE-X7 action "
        f"statistics for rollout.control_mode {cfg.rollout.control_mode!r} "
        f"(unnorm_key {sft_unnorm_key(cfg)!r}; base OpenVLA has only 7-D end-effector ones), so it must be "
        "fine-tuned on CRANE-X7 demonstrations before RL, and sft.num_demos is 0. Either set "
        "sft.num_demos > 0 (`--num-demos 200`: train runs SFT first), or run "
        "`python -m vla_rl_lib sft --config <your config> --num-demos 200` and then "
        f"`python -m vla_rl_lib train --config <your config> --sft-checkpoint {sft_dir}`"
    )


def sft_unnorm_key(cfg: VLARLConfig) -> str:
    """The dataset key SFT saves the robot's action statistics under: ``model.unnorm_key``, else the demos' own."""
    from vla_rl_lib.sft.demos import STATISTICS_KEY

    return cfg.model.unnorm_key or STATISTICS_KEY


def build_sft_policy(
    cfg: VLARLConfig, statistics: ActionStatistics, unnorm_key: str
) -> HFVLAPolicy:
    """The policy SFT trains: ``pretrained_checkpoint`` when given, else a fresh tiny VLA.

    OpenVLA is loaded in ``model.dtype`` on the run's device with a fresh
    LoRA adapter (``lora.rank``/``alpha``) when ``lora.enabled``; the
    demonstrations' ``statistics`` replace its own
    under ``unnorm_key``.
    """
    settings = policy_settings(cfg)
    if cfg.model.name == "openvla":
        from vla_rl_lib.training.distributed import resolve_device

        return fresh_openvla_policy(
            settings, cfg.pretrained_checkpoint, statistics=statistics, unnorm_key=unnorm_key,
            device=resolve_device(cfg.device),
        )
    if cfg.pretrained_checkpoint:
        return load_base_policy(settings, "pretrained", cfg.pretrained_checkpoint)
    return fresh_tiny_policy(settings)


def demonstrations_for(cfg: VLARLConfig, progress: bool = True) -> Path:
    """The folder of the run's scripted demonstrations (``sft`` section), recorded if absent.

    A folder on disk is reused only when every setting that shapes the demos matches
    (its ``meta.json`` recipe).
    """
    from vla_rl_lib.sft.demos import ensure_demonstrations

    s, r = cfg.sft, cfg.rollout
    return ensure_demonstrations(
        s.dataset_dir, s.num_demos, s.demo_seed, simulator=r.simulator, env_id=r.env_id,
        num_envs=r.num_parallel_envs, image_size=r.image_size, camera=r.camera,
        control_mode=r.control_mode, max_episode_steps=r.max_steps,
        instruction=cfg.language_instruction, action_noise=s.demo_action_noise,
        noise_correlation=s.demo_noise_correlation, progress=progress,
    )  # fmt: skip


def run_warm_start(
    cfg: VLARLConfig, out_dir: Path, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Scripted demonstrations -> behaviour cloning of ``build_sft_policy(cfg)``, saved to ``out_dir``.

    ``resume``: SFT writes its state to ``out_dir`` after every epoch, and a call on the same
    ``out_dir`` after a kill continues from the last finished epoch (``run_sft``'s
    ``state_file``); the demonstrations come from their cache. ``seconds`` (SFT) and
    ``demo_seconds`` then count the interrupted calls too.
    """
    from vla_rl_lib.sft.demos import load_demonstrations
    from vla_rl_lib.sft.trainer import SFT_STATE_FILE, run_sft

    check_sft_start(cfg)
    s = cfg.sft
    t0 = time.perf_counter()
    dataset_dir = demonstrations_for(cfg, progress)
    demo_s = time.perf_counter() - t0
    demo_record = Path(out_dir) / WARM_START_DEMO_FILE
    if resume:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if demo_record.is_file():  # the first call's collection time, not this call's cache hit
            demo_s = float(json.loads(demo_record.read_text())["demo_seconds"])
        else:
            write_json_atomic(demo_record, {"demo_seconds": demo_s})
    dataset = load_demonstrations(dataset_dir)
    unnorm_key = sft_unnorm_key(cfg)
    policy = build_sft_policy(cfg, dataset.statistics, unnorm_key)
    result = run_sft(
        policy, dataset, unnorm_key=unnorm_key, epochs=s.epochs, batch_size=s.batch_size,
        learning_rate=s.learning_rate, seed=cfg.seed, out_dir=out_dir,
        augment_shift=s.augment_shift, lr_schedule=s.lr_schedule, progress=progress,
        state_file=Path(out_dir) / SFT_STATE_FILE if resume else None,
    )  # fmt: skip
    save_config(cfg, out_dir / ckpt.CONFIG_FILE)  # lets `evaluate --checkpoint <sft dir>` rebuild the env
    demo_record.unlink(missing_ok=True)
    return {"dataset": str(dataset_dir), "sft_checkpoint": str(out_dir), "demo_seconds": demo_s,
            **result}  # result's seconds: SFT alone


def shared_sft_dir(cfg: VLARLConfig) -> Path:
    """``<output_dir>/<experiment_name>/sft``: the experiment's SFT result, which ``train``
    starts from (``sft`` command, notebook 01_setup)."""
    return Path(cfg.output_dir) / cfg.experiment_name / SHARED_SFT_DIRNAME


def check_sft_destination(out_dir: Path) -> None:
    """Refuse a folder that already holds something: runs of the experiment start from an SFT
    result there, so it is never overwritten."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return  # an empty folder takes the result
    if out_dir.exists() or out_dir.is_symlink():
        raise FileExistsError(
            f"{out_dir} already exists and is kept (runs of experiment {out_dir.parent.name!r} start "
            "from the SFT result there): choose another experiment_name (--experiment-name), or "
            "delete that folder to train it again"
        )


def save_shared_sft(cfg: VLARLConfig, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """``run_warm_start`` into the experiment's ``sft`` folder, which must not exist yet.

    It is written into a hidden sibling folder (``.sft.partial``) and renamed into place when
    complete, so a crash never leaves a half-written result that ``train`` would start from.
    SFT saves its state there after every epoch: a killed SFT is kept, and ``resume`` continues
    it from its last finished epoch (without ``resume`` it is refused, so nothing is lost). A
    failure before the first epoch leaves nothing behind.
    """
    import fcntl

    from vla_rl_lib.sft.trainer import SFT_METRICS_FILE, SFT_STATE_FILE

    out_dir = shared_sft_dir(cfg)
    check_sft_destination(out_dir)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    if partial.exists() and not resume:
        raise FileExistsError(
            f"an interrupted SFT of experiment {out_dir.parent.name!r} is kept in {partial}: pass "
            "--resume (Python: save_shared_sft(cfg, resume=True)) to continue it from its last "
            "finished epoch, or "
            "delete that folder to start again"
        )
    partial.mkdir(parents=True, exist_ok=True)
    fd = os.open(partial, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(
                f"another process is training this SFT in {partial}; wait for it to finish"
            ) from None
        try:
            result = run_warm_start(cfg, partial, progress=progress, resume=True)
            metrics_file = partial / SFT_METRICS_FILE
            metrics = json.loads(metrics_file.read_text())
            write_json_atomic(metrics_file, {**metrics, "checkpoint": str(out_dir)})
        except BaseException:
            if not (partial / SFT_STATE_FILE).is_file():  # no finished epoch: nothing to keep
                shutil.rmtree(partial, ignore_errors=True)
            raise
        try:
            os.rename(partial, out_dir)  # fails on a non-empty folder: a result written meanwhile
        except OSError as exc:
            raise FileExistsError(
                f"{out_dir} was written by another process during this SFT ({exc.strerror}); this "
                f"result is kept in {partial}: rename it to use it"
            ) from exc
    finally:
        os.close(fd)
    return {**result, "sft_checkpoint": str(out_dir), "checkpoint": str(out_dir)}


def policy_from_run_checkpoint(path: Path) -> tuple[HFVLAPolicy, VLARLConfig, dict[str, Any]]:
    """Rebuild the policy a training checkpoint was taken from: its base, then its weights."""
    path = Path(path)
    state = ckpt.load_checkpoint(path)
    cfg = config_from_dict(yaml.safe_load(state["config_yaml"]))
    trainer_state = state["trainer_state"]
    base = trainer_state.get("base")
    if not base:
        raise ckpt.CheckpointError(
            f"{path / ckpt.TRAINER_STATE_FILE} does not record the base model ('base'); "
            "it was not written by this version of vla_rl_lib"
        )
    run_dir = path.resolve().parent  # a base path is relative to the run folder, not a link's
    policy = load_base_policy(policy_settings(cfg), base["kind"], _resolve(run_dir, base["path"]))
    try:
        policy.load_trainable_state_dict(state["policy_state"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ckpt.CheckpointError(
            f"{path / ckpt.POLICY_FILE} does not fit the base model {base['path']}: {exc}"
        ) from exc
    policy.eval()
    return policy, cfg, trainer_state


def load_any_checkpoint(
    path: Path, config: VLARLConfig | None = None
) -> tuple[HFVLAPolicy, VLARLConfig]:
    """A training checkpoint, or a policy directory (SFT result, saved or merged model)."""
    path = Path(path)
    if (path / ckpt.TRAINER_STATE_FILE).is_file() or not (path / "policy_config.json").is_file():
        policy, cfg, _ = policy_from_run_checkpoint(path)
        return policy, config or cfg
    if config is None:
        saved = path / ckpt.CONFIG_FILE
        config = load_config(saved) if saved.is_file() else load_template("default")
    policy = load_base_policy(policy_settings(config), "sft", str(path))
    policy.eval()
    return policy, config
