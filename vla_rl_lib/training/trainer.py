"""The training loop: collect -> advantages -> PPO/GRPO update, with held-out evaluation.

Reproducibility: every source of randomness inside an update (episode start
seeds, action sampling, minibatch order) is derived from ``(seed, update)``,
and the checkpoint holds the trainable weights and the optimizer. A run
resumed from update k therefore continues the exact metric curve of an
uninterrupted run.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vla_rl_lib.algorithms.ppo import ppo_update
from vla_rl_lib.config import VLARLConfig, config_to_dict
from vla_rl_lib.metrics import MetricsWriter
from vla_rl_lib.rollout.batch import rollout_to_batch
from vla_rl_lib.rollout.collector import (
    Rollout,
    evaluation_seeds,
    reset_episodes,
    training_episode_seeds,
)
from vla_rl_lib.rollout.executor import make_executor, make_rollout_env
from vla_rl_lib.training import checkpoint as ckpt
from vla_rl_lib.training.cpu_threads import phase_threads, update_threads
from vla_rl_lib.training.evaluate import EvalResult, evaluate_policy
from vla_rl_lib.training.policy_factory import build_training_policy

MIN_FREE_BYTES = 200 * 1024**2


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


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
        resume: bool = False,
        progress: bool = True,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        on_eval: Callable[[EvalResult], None] | None = None,
        render: bool = False,
    ) -> None:
        self.config = config
        self.run_dir = Path(config.output_dir) / config.experiment_name
        self.progress = progress
        self.on_update = on_update
        self.on_eval = on_eval
        self.render = render
        check_output_dir(self.run_dir)
        seed_everything(config.seed)
        self.device = torch.device(resolve_device(config.device))
        configure_cpu_threads(self.device)

        self.start_update = 0
        self.env_steps = 0
        self.best_eval = -1.0
        self.elapsed_s = 0.0
        self.cpu_s = {"rollout": 0.0, "update": 0.0}  # process CPU seconds of the last update's phases
        self.skipped_updates = 0
        self.consecutive_skips = 0
        self.wall_before_s = 0.0  # wall-clock of train() in earlier (resumed) processes
        self.train_started: float | None = None
        self.stopped_by = "num_updates"
        self.final_update = config.num_updates
        latest = ckpt.recover_checkpoint(self.run_dir / "checkpoint_latest")
        if resume and latest is None:
            raise TrainingError(
                f"--resume was given but {self.run_dir / 'checkpoint_latest'} does not exist; "
                "drop --resume to start a new run"
            )
        if not resume and latest is not None:
            raise TrainingError(
                f"{self.run_dir} already holds a checkpoint; pass --resume to continue it, "
                "or choose another --experiment-name"
            )
        # Read the whole checkpoint before building the model, so a damaged file fails fast.
        resume_state = ckpt.load_checkpoint(latest) if resume else None

        self.policy, self.base_info = build_training_policy(config, self.run_dir, progress=progress)
        self.policy.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.policy.optimizer_param_groups(
                config.ppo.learning_rate, config.ppo.value_learning_rate
            ),
            eps=1e-5,
            weight_decay=0.0,
        )
        if resume_state is not None:
            self._restore(latest, resume_state)

        self.env = make_rollout_env(config)
        # rollout.executor: local (this process) or ray (workers); both play the same episodes.
        self.collector = make_executor(config, self.env, self.policy, self.base_info, self.run_dir)
        self.eval_seeds = evaluation_seeds(config.eval_seed, config.num_eval_episodes)
        self.metrics = MetricsWriter(
            self.run_dir,
            resume_from_update=self.start_update if resume else None,
            use_wandb=config.use_wandb,
            wandb_project=config.wandb_project,
            wandb_config=config_to_dict(config),
            wandb_run_name=config.experiment_name,
        )
        (self.run_dir / "config.yaml").write_text(config_to_yaml(config))

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
        return ckpt.save_checkpoint(
            self.run_dir / name,
            config_yaml=config_to_yaml(self.config),
            policy_state=self.policy.trainable_state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            trainer_state=self._trainer_state(update),
        )

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        try:
            self.policy.load_trainable_state_dict(state["policy_state"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ckpt.CheckpointError(
                f"{path / ckpt.POLICY_FILE} does not fit this model ({exc}); "
                "was the config changed since the checkpoint was written?"
            ) from exc
        try:
            self.optimizer.load_state_dict(state["optimizer_state"])
        except (ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(
                f"{path / ckpt.OPTIMIZER_FILE} does not match this model's parameters ({exc}); "
                "was the config changed since the checkpoint was written?"
            ) from exc
        ts = state["trainer_state"]
        try:
            self.start_update = int(ts["update"])
            self.env_steps = int(ts["env_steps"])
            self.best_eval = float(ts["best_eval_success"])
            self.elapsed_s = float(ts["elapsed_s"])
            self.wall_before_s = float(ts.get("wall_s", 0.0))
            self.skipped_updates = int(ts.get("skipped_updates", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ckpt.CheckpointError(
                f"{path / ckpt.TRAINER_STATE_FILE} lacks a valid {exc} entry; "
                "resume from another checkpoint"
            ) from exc

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> dict[str, float]:
        """Log-probs finite, PPO ratio ~1, non-zero gradient on the trainable weights."""
        r = self.config.rollout
        n = self.env.num_envs
        obs = reset_episodes(self.env, range(n), evaluation_seeds(0, n))
        instructions = [self.config.language_instruction] * self.env.num_envs
        with torch.no_grad():
            out = self.policy.act(obs.image, instructions, r.temperature, False)
        if not torch.isfinite(out.log_probs).all():
            raise PreflightError(
                "preflight: rollout log-probs are not finite; the model produces NaN/inf logits "
                "(check the checkpoint and dtype)"
            )
        ev = self.policy.evaluate(obs.image, instructions, out.token_ids, r.temperature)
        ratio = torch.exp(ev.log_probs - out.log_probs.to(ev.log_probs.device))
        max_dev = float((ratio.detach() - 1).abs().max())
        if not math.isfinite(max_dev) or max_dev > 1e-3:
            raise PreflightError(
                f"preflight: PPO ratio on the first batch deviates from 1 by {max_dev:.3g}; "
                "act() and evaluate() disagree (temperature, dropout or decoding mismatch)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        probe = -(ev.log_probs.mean()) + ev.values.pow(2).mean() - 0.01 * ev.entropy.mean()
        if probe.requires_grad:
            probe.backward()
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = float(torch.norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
        self.optimizer.zero_grad(set_to_none=True)
        if not grads or grad_norm == 0.0 or not math.isfinite(grad_norm):
            raise PreflightError(
                f"preflight: gradient norm of the trainable weights is {grad_norm}; nothing would "
                "learn (are the LoRA/value-head parameters frozen?)"
            )
        return {"preflight_ratio_dev": max_dev, "preflight_grad_norm": grad_norm}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, update: int, record_frames: bool = True) -> EvalResult:
        result = evaluate_policy(
            self.collector, self.eval_seeds, update, self.config.rollout.temperature, record_frames
        )
        record = {"update": update, "env_steps": self.env_steps, **result.record()}
        self.metrics.log(record)
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
        cfg, r, p = self.config, self.config.rollout, self.config.ppo
        self.train_started = time.perf_counter()
        preflight = self.preflight()
        group_size = p.group_size if p.algorithm == "grpo" else 1
        last_eval: EvalResult | None = None
        evaluating = cfg.eval_interval > 0  # 0 means never (num_eval_episodes may then be 0)
        if self.start_update == 0 and evaluating:
            last_eval = self.evaluate(0)
            self.best_eval = last_eval.success_rate
        from vla_rl_lib.display import progress as progress_bar

        updates = range(self.start_update, cfg.num_updates)
        if self.progress:
            updates = progress_bar(updates, total=len(updates), desc="updates", interactive=True)
        for update in updates:
            t0, cpu_rollout = time.perf_counter(), time.process_time()
            torch.manual_seed(derive_seed(cfg.seed, update, 1))
            seeds = training_episode_seeds(cfg.seed, update, r.num_rollouts_per_update, group_size)
            rollout = self.collector.collect(seeds, temperature=r.temperature)
            batch = rollout_to_batch(rollout, p.algorithm, p.gamma, p.gae_lambda, group_size)
            generator = torch.Generator().manual_seed(derive_seed(cfg.seed, update, 2))
            t_update, cpu_update = time.perf_counter(), time.process_time()
            with phase_threads(update_threads(p.update_threads, self.device)):
                stats = ppo_update(self.policy, self.optimizer, batch, p, r.temperature, generator)
            update_s = time.perf_counter() - t_update
            self.cpu_s = {"rollout": cpu_update - cpu_rollout, "update": time.process_time() - cpu_update}
            self._count_skips(stats, update)
            self.env_steps += rollout.env_steps
            step_s = time.perf_counter() - t0
            self.elapsed_s += step_s
            record = self._train_record(update + 1, rollout, stats, step_s, update_s)
            record.update(self.collector.metrics)  # executor figures: weight broadcast, restarts
            if update == 0:  # a resumed run checks itself again but keeps the curve unchanged
                record.update(preflight)
            self.metrics.log(record)
            if self.on_update is not None:
                self.on_update(record)

            out_of_time = cfg.max_minutes is not None and self.wall_s() > 60 * cfg.max_minutes
            done = update + 1 == cfg.num_updates or out_of_time
            if evaluating and ((update + 1) % cfg.eval_interval == 0 or done):
                last_eval = self.evaluate(update + 1)
                if last_eval.success_rate > self.best_eval:
                    self.best_eval = last_eval.success_rate
                    self.save("checkpoint_best", update + 1)
            if done or (cfg.save_interval > 0 and (update + 1) % cfg.save_interval == 0):
                self.save("checkpoint_latest", update + 1)
            if done:
                self.stopped_by = "max_minutes" if out_of_time else "num_updates"
                self.final_update = update + 1
                break
        self.metrics.close()
        return self._finish(last_eval)

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

    def _finish(self, last_eval: EvalResult | None) -> dict[str, Any]:
        from vla_rl_lib.display import plot_learning_curves, save_gif
        from vla_rl_lib.metrics import load_metrics

        records = load_metrics(self.run_dir)
        plot_learning_curves(
            records, x=("update", "env_steps"), path=self.run_dir / "learning_curve.png",
            ci_counts={"eval_success": "eval_episodes"},
        )
        summary: dict[str, Any] = {
            "experiment": self.config.experiment_name,
            "run_dir": str(self.run_dir),
            "updates": self.final_update,
            "stopped_by": self.stopped_by,
            "wall_minutes": self.wall_s() / 60,
            "env_steps": self.env_steps,
            "best_eval_success": self.best_eval,
            "minutes": self.elapsed_s / 60,
        }
        if last_eval is not None:
            summary.update(last_eval.record())
            if last_eval.frames:
                save_gif(np.stack(last_eval.frames), self.run_dir / "eval_episode.gif", fps=10)
        return summary

    def close(self) -> None:
        self.collector.close()
        self.env.close()
        self.metrics.close()


def configure_cpu_threads(device: torch.device) -> None:
    """One intra-op thread on CPU unless OMP_NUM_THREADS says otherwise.

    The tiny VLA's matrices are too small to split, and torch's spinning OpenMP
    workers starve the simulator's software renderer (llvmpipe): measured on a
    2-core machine, a policy step took 445 ms with 2 threads against 17 ms with 1.
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was requested but no CUDA GPU is visible; use device: cpu")
    return device


def config_to_yaml(config: VLARLConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
