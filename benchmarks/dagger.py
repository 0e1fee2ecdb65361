"""Pilot for DAgger: greedy ``val`` success of an SFT policy after each round of DAgger.

    python benchmarks/dagger.py --sft-checkpoint outputs/sft_budget/demos1000_epochs8 \\
        --demos outputs/demos/<folder> --rounds 4 --dagger-episodes 200 --epochs 2 --episodes 30 \\
        --set rollout.control_mode=pd_ee_delta_pos

Starts from ``--sft-checkpoint`` (behaviour-cloned on ``--demos``, e.g. by
``sft_budget.py``). Each round: play ``--dagger-episodes`` episodes of the current
policy on ``train`` (greedy; sampled with ``--dagger-temperature``; the expert drives
an episode instead with probability ``--beta``, times ``--beta-decay`` per round),
labelled by the scripted expert stepping from where the arm is (``--expert-from``;
``vla_rl_lib.sft.dagger``) -> add them to the
demonstrations and the earlier rounds -> continue SFT for ``--epochs`` epochs on the
union, normalizing actions with the demonstrations' statistics (the optimizer's
moments restart each round) -> greedy ``val`` success on ``--episodes`` episodes
(the seeds and evaluation path of ``sft_budget.py``). Round r's data and policy go
to ``<out-dir>/round<r>/{dagger_data,policy}``; ``--resume-after K`` continues a
pilot from round K's folders. DAgger start seeds are ``--dagger-seed`` onwards,
checked clear of the demonstrations' and the evaluation's. Tunes on ``val`` only.
Last line: ``round=... aggregated=... val_success=...`` per round.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from vla_rl_lib.config import VLARLConfig, apply_overrides, load_config  # noqa: E402
from vla_rl_lib.policy.loading import load_base_policy  # noqa: E402
from vla_rl_lib.rollout.collector import evaluation_seeds  # noqa: E402
from vla_rl_lib.rollout.executor import make_collector, make_rollout_env  # noqa: E402
from vla_rl_lib.seed_ranges import (  # noqa: E402
    SEED_CEILING,
    TRAIN_SEED_FLOOR,
    SeedStream,
    check_disjoint,
)
from vla_rl_lib.sft.dagger import collect_dagger, concatenate_demonstrations  # noqa: E402
from vla_rl_lib.sft.demos import DemoDataset, load_demonstrations  # noqa: E402
from vla_rl_lib.sft.trainer import run_sft  # noqa: E402
from vla_rl_lib.training.evaluate import SplitCollectors, evaluate_splits  # noqa: E402
from vla_rl_lib.training.policy_factory import policy_settings, sft_unnorm_key  # noqa: E402
from vla_rl_lib.training.trainer import configure_cpu_threads  # noqa: E402

# The demo settings that must match the run's, and the key that sets each.
ENV_KEYS = {
    "env_id": "rollout.env_id",
    "control_mode": "rollout.control_mode",
    "camera": "rollout.camera",
    "image_size": "rollout.image_size",
    "max_episode_steps": "rollout.max_steps",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="params/default.yaml")
    parser.add_argument("--sft-checkpoint", type=Path, required=True, help="the policy of round 0")
    parser.add_argument("--demos", type=Path, required=True, help="the demonstrations it was cloned on")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dagger-episodes", type=int, default=200, help="episodes collected per round")
    parser.add_argument("--epochs", type=int, default=2, help="SFT epochs on the union per round")
    parser.add_argument("--episodes", type=int, default=30, help="val episodes per evaluation")
    parser.add_argument("--beta", type=float, default=0.0,
                        help="probability that the expert drives an episode of round 1")
    parser.add_argument("--beta-decay", type=float, default=1.0, help="beta of round r: beta * decay^(r-1)")
    parser.add_argument("--dagger-temperature", type=float,
                        help="sample the policy at this temperature (default: greedy)")
    parser.add_argument("--expert-from", choices=["target", "script"], default="target",
                        help="the expert steps from the arm's target (target) or from its script's "
                        "own waypoint, cut to [-1, 1] per axis (script)")
    parser.add_argument("--dagger-seed", type=int, default=2_000_000, help="first DAgger start seed")
    parser.add_argument("--eval-start", action="store_true", help="evaluate the start policy first")
    parser.add_argument("--resume-after", type=int, default=0, metavar="K",
                        help="continue from <out-dir>/round<K>: its policy, rounds 1..K's data")
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/dagger"))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override, dotted key and YAML value (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    for name in ("rounds", "dagger_episodes", "epochs", "episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    if not 0 <= args.resume_after < args.rounds:
        parser.error(f"--resume-after {args.resume_after}: give 0..{args.rounds - 1} (--rounds {args.rounds})")
    return args


def check_demos_match(cfg: VLARLConfig, demos: DemoDataset) -> None:
    """Refuse a run whose env settings differ from the demonstrations', naming the --set fix."""
    r = cfg.rollout
    wanted = {"env_id": r.env_id, "control_mode": r.control_mode, "camera": r.camera,
              "image_size": [r.image_size, r.image_size], "max_episode_steps": r.max_steps}  # fmt: skip
    for name, key in ENV_KEYS.items():
        recorded = demos.meta["env"][name]
        if recorded != wanted[name]:
            value = recorded[0] if name == "image_size" else recorded
            raise SystemExit(
                f"{demos.path} was recorded with {name}={recorded!r} but this run has "
                f"{key}={wanted[name]!r}; add --set {key}={value}"
            )


def check_seeds(cfg: VLARLConfig, demos: DemoDataset, args: argparse.Namespace) -> None:
    """DAgger starts stay clear of training, the demonstrations and the evaluation seeds."""
    attempted = demos.meta.get("num_episodes_attempted", demos.num_episodes)
    check_disjoint([
        SeedStream("training", "fixed", range(TRAIN_SEED_FLOOR, SEED_CEILING)),
        SeedStream("demonstration", f"{demos.path}/meta.json seed",
                   range(demos.meta["seed"], demos.meta["seed"] + attempted)),
        SeedStream("evaluation", "eval_seed", range(cfg.eval_seed, cfg.eval_seed + args.episodes)),
        SeedStream("DAgger", "--dagger-seed",
                   range(args.dagger_seed, args.dagger_seed + args.rounds * args.dagger_episodes)),
    ])  # fmt: skip


def main() -> None:
    args = parse_args()
    overrides = {"rollout.env_id": "PickPlace-CRANE-X7", "rollout.max_steps": 100}
    overrides.update({k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)})
    cfg = apply_overrides(load_config(args.config), overrides)
    configure_cpu_threads(torch.device("cpu"))
    s, r = cfg.sft, cfg.rollout
    demos = load_demonstrations(args.demos)
    check_demos_match(cfg, demos)
    check_seeds(cfg, demos, args)
    print(f"demos: {demos.num_episodes} episodes, {len(demos)} steps", flush=True)
    parts = [demos]
    for k in range(1, args.resume_after + 1):
        parts.append(load_demonstrations(args.out_dir / f"round{k}" / "dagger_data"))
    checkpoint = args.out_dir / f"round{args.resume_after}" / "policy" if args.resume_after else args.sft_checkpoint
    policy = load_base_policy(policy_settings(cfg), "sft", str(checkpoint))
    unnorm_key = sft_unnorm_key(cfg)
    player = make_collector(cfg, make_rollout_env(apply_overrides(cfg, {"rollout.env_groups": 1}), "train"), policy)
    evaluators = SplitCollectors(cfg, policy, num_envs=r.num_parallel_envs)
    seeds = evaluation_seeds(cfg.eval_seed, args.episodes)

    def val_success() -> tuple[float, str]:
        val = evaluate_splits(evaluators, ["val"], seeds, temperature=r.temperature, record_frames=0)["val"]
        return val.success_rate, f"[{val.interval[0]:.2f}, {val.interval[1]:.2f}] ({val.episodes} episodes)"

    if args.eval_start:
        t0 = time.perf_counter()
        rate, interval = val_success()
        print(f"round={args.resume_after} start={checkpoint} val_success={rate:.3f} {interval} "
              f"eval_s={time.perf_counter() - t0:.0f}", flush=True)  # fmt: skip
    results = []
    for round_ in range(args.resume_after + 1, args.rounds + 1):
        beta = args.beta * args.beta_decay ** (round_ - 1)
        round_dir = args.out_dir / f"round{round_}"
        t0 = time.perf_counter()
        collect_dagger(
            player, args.dagger_episodes, args.dagger_seed + (round_ - 1) * args.dagger_episodes,
            round_dir / "dagger_data", beta=beta, greedy=args.dagger_temperature is None,
            temperature=args.dagger_temperature or 1.0, follow_target=args.expert_from == "target",
            policy_checkpoint=str(checkpoint), progress=False,
        )  # fmt: skip
        added = load_demonstrations(round_dir / "dagger_data")
        parts.append(added)
        union = concatenate_demonstrations(parts)
        collect_s = time.perf_counter() - t0
        played = added.meta["dagger"]
        saturated = float(np.mean(np.abs(added.actions[:, :-1]) >= 1.0))
        out = run_sft(policy, union, epochs=args.epochs, batch_size=s.batch_size,
                      learning_rate=s.learning_rate, seed=cfg.seed + round_, out_dir=round_dir / "policy",
                      statistics=demos.statistics, unnorm_key=unnorm_key,
                      augment_shift=s.augment_shift, lr_schedule=s.lr_schedule,
                      progress=False)  # fmt: skip
        checkpoint = round_dir / "policy"
        sft_s = time.perf_counter() - t0 - collect_s
        rate, interval = val_success()
        results.append((round_, len(union), rate))
        losses = "/".join(f"{h['loss']:.3f}" for h in out["history"])
        print(
            f"round={round_} beta={beta:.2f} frames_added={len(added)} "
            f"train_success={np.mean(played['episode_success']):.3f} "
            f"policy_abs_error={played['policy_abs_error']} label_saturated={saturated:.3f} "
            f"aggregated={len(union)} loss={losses} val_success={rate:.3f} {interval} "
            f"collect_s={collect_s:.0f} sft_s={sft_s:.0f} eval_s={time.perf_counter() - t0 - collect_s - sft_s:.0f}",
            flush=True,
        )
    player.env.close()
    evaluators.close()
    print(" ".join(f"round={k} aggregated={n} val_success={v:.3f}" for k, n, v in results))


if __name__ == "__main__":
    main()
