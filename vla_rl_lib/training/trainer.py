"""The training loop: collect -> advantages -> PPO/GRPO update, with held-out evaluation.

Reproducibility: every source of randomness inside an update (episode start
seeds, action sampling, minibatch order) is derived from ``(seed, update)``,
and the checkpoint holds the trainable weights and the optimizer. A run
resumed from update k therefore continues the exact metric curve of an
uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import yaml

from vla_rl_lib.algorithms.ppo import PPOSettings, ppo_update
from vla_rl_lib.config import VLARLConfig, apply_overrides, config_to_dict
from vla_rl_lib.metrics import MetricsWriter
from vla_rl_lib.rollout.ahead import Weights, frozen_weights
from vla_rl_lib.rollout.batch import rollout_to_batch
from vla_rl_lib.rollout.collector import (
    Rollout,
    evaluation_seeds,
    policy_prompts,
    reset_episodes,
    training_episode_seeds,
)
from vla_rl_lib.rollout.executor import make_rollout_env
from vla_rl_lib.rollout.factory import make_executor
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training import distributed, runs
from vla_rl_lib.training.cpu_threads import phase_threads, update_threads
from vla_rl_lib.training.errors import TrainingError
from vla_rl_lib.training.evaluate import (
    SELECTION_SPLIT,
    SplitCollectors,
    SplitResults,
    available_splits,
    evaluate_splits,
    reported_only_splits,
)
from vla_rl_lib.training.policy_factory import build_training_policy, check_training_start
from vla_rl_lib.training.progress_log import ProgressLog
from vla_rl_lib.wandb_setup import check_wandb_ready

log = logging.getLogger(__name__)
MIN_FREE_BYTES = 200 * 1024**2
# Shown where a summary is printed in place of best_eval_success = None.
NO_EVALUATION = "no evaluation ran"


class PreflightError(TrainingError):
    """A check before the first update failed."""


def derive_seed(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(0, 2**63 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_output_dir(run_dir: Path) -> None:
    """Fail before any training if the run directory cannot take our files."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(
            f"output directory {run_dir} is not writable ({exc.strerror}); "
            "pass --output-dir with a writable path"
        ) from exc
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise PreflightError(
            f"output directory {run_dir} has only {free / 1024**2:.0f} MiB free; "
            f"need at least {MIN_FREE_BYTES / 1024**2:.0f} MiB for checkpoints and logs"
        )


class Trainer:
    """Owns the policy, optimizer, simulator and run directory of one experiment."""

    def __init__(
        self,
        config: VLARLConfig,
        *,
        resume: bool | str | os.PathLike[str] = False,
        progress: bool = True,
        progress_lines: TextIO | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        on_eval: Callable[[SplitResults], None] | None = None,
        render: bool = False,
    ) -> None:
        """``resume``: False starts a new run folder (see ``runs``); True continues the newest
        run of the experiment; a path continues from that checkpoint directory, in its run
        folder. ``progress_lines``: a stream that gets one plain line every ``log_interval``
        updates (the CLI passes stderr when it is not a terminal)."""
        experiment_dir = Path(config.output_dir) / config.experiment_name
        if config.use_wandb:  # before anything is built or written
            check_wandb_ready()
        latest = self._resume_checkpoint(experiment_dir, resume) if resume else None
        # Read the whole checkpoint before building anything, so a damaged file fails fast.
        resume_state = ckpt.load_checkpoint(latest) if latest is not None else None
        self.config = with_shared_sft(config, experiment_dir, resume_state)
        self.progress = progress
        self.progress_lines = progress_lines
        self.on_update = on_update
        self.on_eval = on_eval
        self.render = render
        self._launch_and_check()
        self._open_run_dir(experiment_dir, latest)
        self._reset_counters()
        self._build_learner(latest, resume_state)
        self._build_collection()
        self._open_metrics(resumed=bool(resume))

    def _launch_and_check(self) -> None:
        """Join the launch (torchrun or one process), seed, choose the device, and refuse a run
        that cannot start or does not fit it before anything is built."""
        config = self.config
        # Under torchrun: rank 0 collects, writes and evaluates; every rank updates (distributed.py).
        self.launch = distributed.Launch.from_environment()
        if self.launch.world_size > 1:
            distributed.check_launch(self.launch.world_size, config.ppo.minibatch_size,
                                     config.distributed_strategy, config.rollout.executor)
        seed_everything(config.seed)
        self.device = torch.device(distributed.resolve_device(config.device, self.launch.local_rank))
        configure_cpu_threads(self.device)
        from vla_rl_lib.planner import check_fits_device

        check_training_start(config)  # a wrong or missing checkpoint is named before the plan
        refusal = check_fits_device(config, self.device.type, self.launch.world_size)
        if refusal is not None:
            raise PreflightError(f"preflight: {refusal}")
        r = config.rollout
        local_on_gpu = r.executor == "local" and self.device.type != "cpu"
        if r.collect_ahead and (self.launch.world_size > 1 or local_on_gpu):
            raise PreflightError(
                f"preflight: rollout.collect_ahead needs one learner process, on CPU with the local "
                f"executor (here: {self.launch.world_size} ranks on {self.device.type}, executor "
                f"{r.executor}); set rollout.collect_ahead: false, or device: cpu without torchrun"
            )
        distributed.init_process_group(self.launch, self.device)

    def _open_run_dir(self, experiment_dir: Path, latest: Path | None) -> None:
        """One run folder for all ranks: rank 0 makes it (or finds the resumed one), the rest
        follow it."""
        if latest is not None:
            self.run_dir = latest.parent
        else:
            if self.launch.is_main:
                check_output_dir(experiment_dir)
            self.run_dir = distributed.broadcast_object(
                runs.create_run_dir(experiment_dir) if self.launch.is_main else None, self.launch
            )
        if self.launch.is_main:
            check_output_dir(self.run_dir)

    def _reset_counters(self) -> None:
        """The progress of a new run; ``_restore`` overwrites them from a checkpoint."""
        self.start_update = 0
        self.env_steps = 0
        self.best_eval: float | None = None  # None until an evaluation has run
        self.elapsed_s = 0.0
        self.cpu_s = {"rollout": 0.0, "update": 0.0}  # process CPU seconds of the last update's phases
        self.skipped_updates = 0
        self.consecutive_skips = 0
        self.wall_before_s = 0.0  # wall-clock of train() in earlier (resumed) processes
        self.train_started: float | None = None
        self.stopped_by = "num_updates"
        self.final_update = self.config.num_updates
        self._progress_log: ProgressLog | None = None
        # rollout.collect_ahead: the weights the next update's rollout is played with (None: the
        # current ones), and whether max_minutes was spent when that rollout would have started.
        self.behaviour_weights: Weights | None = None
        self._time_up_before_update = False

    def _build_learner(self, latest: Path | None, resume_state: dict[str, Any] | None) -> None:
        """The policy on its device, wrapped for the launch, and its optimizer; a resumed run
        restores both (and the counters) from ``resume_state``."""
        config = self.config
        with distributed.main_rank_first(self.launch):  # a warm start or base model is written once
            self.policy, self.base_info = build_training_policy(config, self.run_dir, progress=self.progress)
        self.policy.to(self.device)
        if resume_state is not None:  # before FSDP shards the weights
            self._restore_policy(latest, resume_state)
        self.learner = distributed.wrap_policy(
            self.policy, self.launch, config.distributed_strategy, self.device
        )
        self.optimizer = torch.optim.AdamW(
            self.policy.optimizer_param_groups(
                config.ppo.learning_rate, config.ppo.value_learning_rate
            ),
            eps=1e-5,
            weight_decay=0.0,
        )
        if resume_state is not None:
            self._restore(latest, resume_state)

    def _build_collection(self) -> None:
        """The simulators, the rollout executor and the held-out evaluation splits."""
        config = self.config
        # DDP: rank 0 collects and broadcasts the batch. FSDP: the sharded policy can only act
        # with every rank taking part, so every rank plays the same (seeded) episodes.
        self.collects = self.launch.is_main or config.distributed_strategy == "fsdp"
        self.env = make_rollout_env(config) if self.collects else None
        # rollout.executor: local (this process) or ray (workers); both play the same episodes.
        self.executor = (
            make_executor(config, self.env, self.policy, self.base_info, self.run_dir)
            if self.collects else None
        )
        self.eval_seeds = evaluation_seeds(config.eval_seed, config.num_eval_episodes)
        # Held-out evaluation plays each split on its own simulator (evaluate.SplitCollectors).
        # val chooses checkpoint_best; a task without named splits falls back to train's held-out seeds.
        env_id = config.rollout.env_id
        self.eval_splits = config.eval_splits if "val" in available_splits(env_id) else ["train"]
        self.selection_split = SELECTION_SPLIT if SELECTION_SPLIT in self.eval_splits else "train"
        self.final_splits = self.eval_splits + reported_only_splits(env_id, self.eval_splits)
        self.eval_collectors = (
            SplitCollectors(config, self.policy, min(config.rollout.num_parallel_envs,
                                                     max(config.num_eval_episodes, 1)))
            if self.collects else None
        )  # fmt: skip

    def _open_metrics(self, resumed: bool) -> None:
        """The metrics writer (rank 0 only) and the run's config.yaml."""
        config = self.config
        self.metrics = MetricsWriter(
            self.run_dir,
            resume_from_update=self.start_update if resumed else None,
            use_wandb=config.use_wandb,
            wandb_project=config.wandb_project,
            wandb_config=config_to_dict(config),
            wandb_run_name=f"{config.experiment_name}/{self.run_dir.name}",
        ) if self.launch.is_main else distributed.NoMetrics()
        if self.launch.is_main:
            (self.run_dir / "config.yaml").write_text(config_to_yaml(config))

    @staticmethod
    def _resume_checkpoint(experiment_dir: Path, resume: bool | str | os.PathLike[str]) -> Path:
        """The checkpoint directory a resumed run continues from (see ``__init__``)."""
        if resume is True:
            found = runs.newest_resumable(experiment_dir)
            if found is None:
                raise TrainingError(
                    f"--resume was given but no run under {experiment_dir} holds a "
                    "checkpoint_latest; drop --resume to start a new run, or pass --resume PATH "
                    "with a checkpoint directory"
                )
            return found
        # Through the links (outputs/<experiment>/checkpoint_latest) to the run folder itself.
        path = Path(os.path.realpath(resume))
        found = ckpt.recover_checkpoint(path)
        if found is None or not (found / ckpt.TRAINER_STATE_FILE).is_file():
            raise TrainingError(
                f"--resume {resume}: {path} is not a checkpoint directory (it needs a "
                f"{ckpt.TRAINER_STATE_FILE}); pass <run folder>/checkpoint_latest, or bare "
                "--resume for the newest run of the experiment"
            )
        newest = ckpt.recover_checkpoint(path.parent / "checkpoint_latest")
        update, later = runs.checkpoint_update(found), newest and runs.checkpoint_update(newest)
        if newest is not None and update is not None and later is not None and later > update:
            raise TrainingError(
                f"--resume {resume}: that checkpoint is at update {update} but its run "
                f"{path.parent} went on to update {later}; continuing from it would overwrite "
                f"that run's later checkpoints and metrics. Resume {newest} instead, or copy "
                "the run folder and resume the copy"
            )
        return found

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self, update: int) -> dict[str, Any]:
        return {
            "update": update,
            "env_steps": self.env_steps,
            "best_eval_success": self.best_eval,
            "elapsed_s": self.elapsed_s,
            "wall_s": self.wall_s(),
            "skipped_updates": self.skipped_updates,
            "base": self.base_info,
            # Every update re-derives its RNG streams from (seed, update): restoring the
            # update counter restores them exactly.
            "rng": {"scheme": "derive_seed(seed, update, stream)", "seed": self.config.seed},
        }

    def save(self, name: str, update: int) -> Path:
        # The one-process format on every world size: FSDP shards are gathered (on all ranks).
        policy_state = self.learner.full_trainable_state()
        optimizer_state = distributed.full_optimizer_state(self.optimizer)
        path = self.run_dir / name
        if self.launch.is_main:
            ckpt.save_checkpoint(
                path,
                config_yaml=config_to_yaml(self.config),
                policy_state=policy_state,
                optimizer_state=optimizer_state,
                trainer_state=self._trainer_state(update),
                behaviour_state=self.behaviour_weights if self.config.rollout.collect_ahead else None,
            )
        return path

    def _restore_policy(self, path: Path, state: dict[str, Any]) -> None:
        try:
            self.policy.load_trainable_state_dict(state["policy_state"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ckpt.CheckpointError(
                f"{path / ckpt.POLICY_FILE} does not fit this model ({exc}); "
                "was the config changed since the checkpoint was written?"
            ) from exc

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        try:
            distributed.load_full_optimizer_state(self.optimizer, state["optimizer_state"])
        except (ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(
                f"{path / ckpt.OPTIMIZER_FILE} does not match this model's parameters ({exc}); "
                "was the config changed since the checkpoint was written?"
            ) from exc
        ts = state["trainer_state"]
        try:
            self.start_update = int(ts["update"])
            self.env_steps = int(ts["env_steps"])
            best = ts["best_eval_success"]
            self.best_eval = None if best is None or best == -1.0 else float(best)  # -1.0: old runs
            self.elapsed_s = float(ts["elapsed_s"])
            self.wall_before_s = float(ts.get("wall_s", 0.0))
            self.skipped_updates = int(ts.get("skipped_updates", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ckpt.CheckpointError(
                f"{path / ckpt.TRAINER_STATE_FILE} lacks a valid {exc} entry; "
                "resume from another checkpoint"
            ) from exc
        if self.config.rollout.collect_ahead:
            self.behaviour_weights = state.get("behaviour_state")
            if self.behaviour_weights is None and self.start_update > 0:
                log.warning("%s holds no behaviour weights (saved without rollout.collect_ahead): "
                            "update %d's rollout is played with the checkpoint's own weights",
                            path, self.start_update + 1)  # fmt: skip

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> dict[str, float]:
        """Log-probs finite, PPO ratio ~1, non-zero gradient on the trainable weights."""
        sharded = self.config.distributed_strategy == "fsdp" and self.launch.world_size > 1
        if not self.collects or sharded:
            return {}  # rank 0 checks the (identical) DDP model; FSDP's checks are the update's own
        r = self.config.rollout
        n = self.env.num_envs
        obs = reset_episodes(self.env, range(n), evaluation_seeds(0, n))
        instructions = policy_prompts(obs, self.env, self.config.language_instruction)
        with torch.no_grad():
            out = self.policy.act(obs.image, instructions, r.temperature, False)
        if not torch.isfinite(out.log_probs).all():
            raise PreflightError(
                "preflight: rollout log-probs are not finite; the model produces NaN/inf logits "
                "(check the checkpoint and dtype)"
            )
        ev = self.policy.evaluate_actions(obs.image, instructions, out.token_ids, r.temperature)
        ratio = torch.exp(ev.log_probs - out.log_probs.to(ev.log_probs.device))
        max_dev = float((ratio.detach() - 1).abs().max())
        if not math.isfinite(max_dev) or max_dev > 1e-3:
            raise PreflightError(
                f"preflight: PPO ratio on the first batch deviates from 1 by {max_dev:.3g}; "
                "act() and evaluate_actions() disagree (temperature, dropout or decoding mismatch)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        probe = -(ev.log_probs.mean()) + ev.values.pow(2).mean() - 0.01 * ev.entropy.mean()
        if probe.requires_grad:
            probe.backward()
        norms = {group.get("name", str(i)): _grad_norm(group["params"])
                 for i, group in enumerate(self.optimizer.param_groups)}
        self.optimizer.zero_grad(set_to_none=True)
        # The policy's own weights must learn: a trainable value head alone would pass a pooled norm.
        policy_norm = norms.get("policy", 0.0)
        if policy_norm == 0.0 or not math.isfinite(policy_norm):
            raise PreflightError(
                f"preflight: gradient norm of the policy's trainable weights is {policy_norm} "
                f"(per parameter group: {norms}); the policy would not learn (are its LoRA or "
                "model weights frozen?)"
            )
        grad_norm = math.sqrt(sum(n**2 for n in norms.values()))
        if not math.isfinite(grad_norm):
            raise PreflightError(
                f"preflight: gradient norm is not finite (per parameter group: {norms}); "
                "check the value head and the dtype"
            )
        return {"preflight_ratio_dev": max_dev, "preflight_grad_norm": grad_norm,
                "preflight_policy_grad_norm": policy_norm}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, update: int, final: bool = False) -> SplitResults:
        """Greedy episodes on ``eval_splits`` (with ``final``, on the OOD splits too), the same
        seeds on each; the selection split's first episode is filmed."""
        result = evaluate_splits(
            self.eval_collectors, self.final_splits if final else self.eval_splits, self.eval_seeds,
            update, self.config.rollout.temperature, {self.selection_split: 1},
            frame_size=self.config.rollout.media_size,
        )
        record = {"update": update, "env_steps": self.env_steps, **result.record()}
        self.metrics.log(record)
        if self._progress_log is not None:
            self._progress_log.evaluated(record)
        if self.render and result.frames:
            from vla_rl_lib.display import save_gif

            save_gif(np.stack(result.frames), self.run_dir / "videos" / f"eval_update_{update:05d}.gif", fps=10)
        if self.on_eval is not None:
            self.on_eval(result)
        return result

    # ------------------------------------------------------------------ training loop
    def wall_s(self) -> float:
        """Wall-clock spent in train(), evaluations included, across resumes."""
        running = 0.0 if self.train_started is None else time.perf_counter() - self.train_started
        return self.wall_before_s + running

    def train(self) -> dict[str, Any]:
        cfg = self.config
        self.train_started = time.perf_counter()
        self._open_progress_log()
        preflight = self.preflight()
        update_settings = PPOSettings.from_section(cfg.ppo)
        last_eval: SplitResults | None = None
        evaluating = cfg.eval_interval > 0  # 0 means never (num_eval_episodes may then be 0)
        if self.start_update == 0 and evaluating and self.collects:
            last_eval = self.evaluate(0)
            self.best_eval = last_eval[self.selection_split].success_rate
            self.save("checkpoint_best", 0)  # so that a checkpoint_best always exists
        for update in self._updates():
            started = time.perf_counter()
            rollout, stats, update_s = self._collect_and_learn(update, update_settings)
            if rollout is None:  # a DDP rank > 0: it only learns
                if distributed.broadcast_object(None, self.launch):
                    self.final_update = update + 1
                    break
                continue
            record = self._log_update(update, rollout, stats, started, update_s, preflight)
            # collect_ahead decides before the update, so that no rollout is played for nothing
            out_of_time = self._time_up_before_update if cfg.rollout.collect_ahead else self._out_of_time()
            done = update + 1 == cfg.num_updates or out_of_time
            if evaluating and ((update + 1) % cfg.eval_interval == 0 or done):
                last_eval = self._evaluate_and_select(update + 1, final=done)
            if done or (cfg.save_interval > 0 and (update + 1) % cfg.save_interval == 0):
                self.save("checkpoint_latest", update + 1)
            if self._progress_log is not None:
                self._progress_log.update(record, last=done)
            if done:
                self.stopped_by = "max_minutes" if out_of_time else "num_updates"
                self.final_update = update + 1
                break
        self.metrics.close()
        return self._finish(last_eval)

    def _open_progress_log(self) -> None:
        """Plain progress lines on ``progress_lines``, when the caller gave a stream."""
        cfg = self.config
        if self.progress_lines is not None:
            self._progress_log = ProgressLog(
                self.progress_lines, cfg.num_updates, cfg.log_interval,
                first_update=self.start_update, first_env_steps=self.env_steps,
                max_minutes=cfg.max_minutes, elapsed_before_s=self.wall_before_s,
            )  # fmt: skip

    def _updates(self) -> Iterable[int]:
        """The updates this process still runs, behind a progress bar on rank 0 when asked."""
        from vla_rl_lib.display import progress as progress_bar

        updates = range(self.start_update, self.config.num_updates)
        if self.progress and self.launch.is_main:
            updates = progress_bar(updates, total=len(updates), desc="updates", interactive=True)
        return updates

    def _collect_and_learn(
        self, update: int, settings: PPOSettings
    ) -> tuple[Rollout | None, dict[str, Any], float]:
        """One update: the collecting ranks play its episodes, every rank takes the PPO/GRPO
        step, each random stream derived from ``(seed, update)``. Returns the rollout (None on
        a rank that only learns), the update's statistics and its seconds."""
        cfg, r, p = self.config, self.config.rollout, self.config.ppo
        cpu_rollout = time.process_time()
        torch.manual_seed(derive_seed(cfg.seed, update, 1))
        group_size = p.group_size if p.algorithm == "grpo" else 1
        seeds = training_episode_seeds(cfg.seed, update, r.num_rollouts_per_update, group_size)
        rollout = batch = None
        if self.collects:
            rollout = (
                self._collect_ahead(update) if r.collect_ahead
                else self.executor.collect(seeds, temperature=r.temperature)
            )  # fmt: skip
            batch = rollout_to_batch(rollout, p.algorithm, p.gamma, p.gae_lambda, group_size)
        if cfg.distributed_strategy == "ddp":
            batch = distributed.broadcast_object(batch, self.launch)
        batch, dropped = distributed.trim_batch(batch, self.launch.world_size)
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, update, 2))
        t_update, cpu_update = time.perf_counter(), time.process_time()
        with phase_threads(update_threads(p.update_threads, self.device)):
            stats = ppo_update(
                self.learner.trainer_view, self.optimizer, batch, settings, r.temperature, generator,
                shard=self.learner.shard,
            )  # fmt: skip
        update_s = time.perf_counter() - t_update
        self.cpu_s = {"rollout": cpu_update - cpu_rollout, "update": time.process_time() - cpu_update}
        if r.collect_ahead:  # the rollout's own CPU seconds were the local worker process's
            self.cpu_s["rollout"] += self.executor.metrics.get("perf/rollout_worker_cpu_s", 0.0)
        self._count_skips(stats, update)
        if self.launch.world_size > 1:
            stats["dropped_samples"] = dropped
        return rollout, stats, update_s

    def _collect_ahead(self, update: int) -> Rollout:
        """``rollout.collect_ahead``: this update's rollout from the worker process, played with
        the weights from before the previous update (a run's first update: the current ones);
        then the next update's rollout is started there with the weights from before this
        update, to play while this update runs. Which weights play which rollout does not
        depend on timing, and the checkpoint keeps the next rollout's (``save``), so a resumed
        run plays it again exactly."""
        cfg = self.config
        if self.executor.pending != update:  # the first update of this process
            behaviour = self.behaviour_weights  # from the checkpoint when resumed
            self._submit_rollout(update, frozen_weights(self.policy) if behaviour is None else behaviour)
        rollout = self.executor.result(update)
        self.behaviour_weights = frozen_weights(self.policy)
        self._time_up_before_update = self._out_of_time()
        if update + 1 < cfg.num_updates and not self._time_up_before_update:
            self._submit_rollout(update + 1, self.behaviour_weights)
        return rollout

    def _submit_rollout(self, update: int, weights: Weights) -> None:
        """Start ``update``'s rollout in the collect-ahead worker, its start and sampling seeds
        drawn from ``(seed, update)`` as the synchronous path draws them."""
        cfg, r, p = self.config, self.config.rollout, self.config.ppo
        group_size = p.group_size if p.algorithm == "grpo" else 1
        seeds = training_episode_seeds(cfg.seed, update, r.num_rollouts_per_update, group_size)
        with torch.random.fork_rng(devices=[]):  # the driver's own stream stays as it was
            torch.manual_seed(derive_seed(cfg.seed, update, 1))
            self.executor.submit(update, seeds, weights, temperature=r.temperature)

    def _log_update(
        self,
        update: int,
        rollout: Rollout,
        stats: dict[str, Any],
        started: float,
        update_s: float,
        preflight: dict[str, float],
    ) -> dict[str, Any]:
        """Count the update's steps and time (from ``started``), then log its record (with the
        preflight figures on update 0) and hand it to ``on_update``."""
        self.env_steps += rollout.env_steps
        step_s = time.perf_counter() - started
        self.elapsed_s += step_s
        record = self._train_record(update + 1, rollout, stats, step_s, update_s)
        record.update(self.executor.metrics)  # executor figures: weight broadcast, restarts
        if update == 0:  # a resumed run checks itself again but keeps the curve unchanged
            record.update(preflight)
        self.metrics.log(record)
        if self.on_update is not None:
            self.on_update(record)
        return record

    def _out_of_time(self) -> bool:
        """Whether ``max_minutes`` is spent, as rank 0 sees it (every rank stops together)."""
        max_minutes = self.config.max_minutes
        out_of_time = max_minutes is not None and self.wall_s() > 60 * max_minutes
        return distributed.broadcast_object(out_of_time, self.launch)

    def _evaluate_and_select(self, update: int, final: bool) -> SplitResults:
        """Evaluate after ``update``; a new best on the selection split becomes checkpoint_best."""
        result = self.evaluate(update, final=final)
        selected = result[self.selection_split].success_rate
        if self.best_eval is None or selected > self.best_eval:
            self.best_eval = selected
            self.save("checkpoint_best", update)
        return result

    def _count_skips(self, stats: dict[str, Any], update: int) -> None:
        if stats.get("skipped_steps", 0) and stats.get("num_minibatch_steps", 1) == 0:
            self.skipped_updates += 1
            self.consecutive_skips += 1
        else:
            self.consecutive_skips = 0
        if self.consecutive_skips >= self.config.max_consecutive_skips:
            raise TrainingError(
                f"{self.consecutive_skips} consecutive updates had non-finite losses or gradients "
                f"(last at update {update + 1}); lower ppo.learning_rate or check the rewards. "
                f"The last good checkpoint is {self.run_dir / 'checkpoint_latest'}"
            )

    def _train_record(
        self, update: int, rollout: Rollout, stats: dict[str, Any], step_s: float, update_s: float
    ) -> dict[str, Any]:
        eps = rollout.episodes
        return {
            "update": update,
            "env_steps": self.env_steps,
            "train/success_rate": rollout.success_rate,
            "train/episode_return": float(np.mean([e.reward_sum for e in eps])),
            "train/episode_length": float(np.mean([e.length for e in eps])),
            "train/episodes": len(eps),
            # episodes dropped after a simulator fault and replayed from their seed
            "rollout/sim_faults": rollout.sim_faults,
            **{f"ppo/{k}": v for k, v in stats.items()},
            "perf/env_steps_per_s": rollout.env_steps / max(rollout.seconds_total, 1e-9),
            "perf/ppo_samples_per_s": rollout.env_steps * self.config.ppo.num_epochs / max(update_s, 1e-9),
            "perf/rollout_s": rollout.seconds_total,
            "perf/sim_s": rollout.seconds_sim,
            "perf/policy_s": rollout.seconds_policy,
            "perf/update_s": update_s,
            # CPU seconds of the process (all its threads) in each phase: the cores' ceiling
            "perf/rollout_cpu_s": self.cpu_s["rollout"],
            "perf/update_cpu_s": self.cpu_s["update"],
            "perf/skipped_updates": self.skipped_updates,
            "time_s": self.elapsed_s,
        }

    def _finish(self, last_eval: SplitResults | None) -> dict[str, Any]:
        if not self.launch.is_main:
            return {"rank": self.launch.rank, "updates": self.final_update}
        from vla_rl_lib.display import save_gif
        from vla_rl_lib.display.plots import plot_training
        from vla_rl_lib.metrics import load_metrics

        plot_training(load_metrics(self.run_dir), path=self.run_dir / "learning_curve.png")
        summary: dict[str, Any] = {
            "experiment": self.config.experiment_name,
            "run_dir": str(self.run_dir),
            "updates": self.final_update,
            "stopped_by": self.stopped_by,
            "wall_minutes": self.wall_s() / 60,
            "env_steps": self.env_steps,
            "best_eval_success": self.best_eval,  # on the selection split (val)
            "selection_split": self.selection_split,
            "minutes": self.elapsed_s / 60,
        }
        if last_eval is not None:
            summary.update(last_eval.record())
            if last_eval.frames:
                save_gif(np.stack(last_eval.frames), self.run_dir / "eval_episode.gif", fps=10)
        return summary

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()
            self.env.close()
        if self.eval_collectors is not None:
            self.eval_collectors.close()
        self.metrics.close()
        if getattr(self, "learner", None) is not None:
            self.learner.release()  # before the group goes, or a gloo rank can hang at exit
        distributed.destroy_process_group(self.launch)


def before_after_rl(records: list[dict[str, Any]]) -> str | None:
    """The end-of-run line: held-out success before RL (update 0) and after (the last
    evaluation), on ``test`` (a task without it: held-out ``train`` seeds), with Wilson
    intervals; None when the run has no evaluation at update 0."""
    split = "test" if any("test/success" in r for r in records) else "train"
    evals = [r for r in records if f"{split}/success" in r]
    if not evals or evals[0]["update"] != 0:
        return None

    def one(r: dict[str, Any]) -> str:
        return (f"{r[f'{split}/success']:.3f} [{r[f'{split}/success_low']:.3f}, "
                f"{r[f'{split}/success_high']:.3f}] (update {r['update']})")

    episodes = evals[-1].get(f"{split}/episodes", "?")
    return (f"{split} success ({episodes} greedy episodes): before RL {one(evals[0])} -> "
            f"after RL {one(evals[-1])}")


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    """L2 norm of the gradients of ``params`` (0.0 when none has a gradient)."""
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.norm(torch.stack(grads))) if grads else 0.0


def with_shared_sft(
    config: VLARLConfig, experiment_dir: Path, resume_state: dict[str, Any] | None
) -> VLARLConfig:
    """Start from the experiment's SFT result (``sft`` command, 01_setup) when the config asks
    for a warm start and one is there; a resumed run keeps the base its checkpoint records."""
    if config.sft_checkpoint or config.pretrained_checkpoint or config.sft.num_demos == 0:
        return config
    if resume_state is not None:
        base = resume_state["trainer_state"].get("base") or {}
        if base.get("kind") != "sft":
            return config
        return apply_overrides(config, {"sft_checkpoint": base["path"]})
    shared = runs.shared_sft_dir(experiment_dir)
    if shared is None:
        return config
    differs = runs.sft_recipe_difference(shared, config)
    if differs is not None:  # trained for other settings: this run makes its own warm start
        log.warning("not reusing %s: %s; this run makes its own warm start", shared, differs)
        return config
    return apply_overrides(config, {"sft_checkpoint": str(shared.absolute())})


def configure_cpu_threads(device: torch.device) -> None:
    """One intra-op thread on CPU unless OMP_NUM_THREADS says otherwise.

    The tiny VLA's matrices are too small to split, and torch's spinning OpenMP
    workers starve the simulator's software renderer (llvmpipe): measured on a
    2-core machine, a policy step took 445 ms with 2 threads against 17 ms with 1.
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def config_to_yaml(config: VLARLConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
