"""Command line: ``python -m vla_rl_lib train|evaluate|config|sft|plan``.

Flags override the YAML only when the user actually passes them (argparse
defaults are suppressed), so ``--config params/fast.yaml --seed 3`` changes the
seed and nothing else. Bad input exits with code 2 and a one-line error; set
``VLA_RL_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from vla_rl_lib.config import (
    TEMPLATE_NAMES,
    ConfigError,
    VLARLConfig,
    all_keys,
    apply_overrides,
    choices,
    field_info,
    load_config,
    load_template,
    read_yaml,
    shortcuts,
    template_text,
)
from vla_rl_lib.utils import write_text_atomic

START_KEYS = ("pretrained_checkpoint", "sft_checkpoint")  # the two starts exclude each other


class UsageError(Exception):
    """Bad input from the command line."""


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("null", "none") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in errors
    return parse


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a schema type; the schema itself checks the value afterwards."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float):
        return {"type": annotation, "metavar": annotation.__name__.upper()}
    if annotation is str or origin is Annotated:
        return {"type": str, "metavar": "STR"}
    if origin is Literal:
        return {"type": str, "metavar": "{" + ",".join(map(str, args)) + "}"}
    if origin is list:
        return {"nargs": "+", "metavar": "STR"}
    arms = [a for a in args if a is not type(None)]
    if len(arms) == 1 and len(args) == 2:  # X | None: "null" (or "none") gives None
        plain = str if typing.get_origin(arms[0]) is Annotated else arms[0]
        return {"type": _optional(plain), "metavar": f"{plain.__name__.upper()}|null"}
    return {"type": read_yaml, "metavar": "YAML"}


def add_config_flags(parser: argparse.ArgumentParser, retarget: dict[str, str] | None = None) -> None:
    """A flag per config key (``--seed``, ``--ppo.clip-ratio``), from the schema, plus the
    short names marked ``shortcut=`` there (``--num-rollouts``) as aliases. Defaults are
    suppressed, so only flags the user passes override the file. ``retarget``: shortcut ->
    another key for this command (``sft --learning-rate`` is ``sft.learning_rate``)."""
    names: dict[str, list[str]] = {key: [f"--{key.replace('_', '-')}"] for key in all_keys()}
    for short, key in {**shortcuts(), **(retarget or {})}.items():
        flag = f"--{short.replace('_', '-')}"
        if all(flag not in flags for flags in names.values()):
            names[key].append(flag)
    starts = parser.add_mutually_exclusive_group()
    for key, flags in names.items():
        info = field_info(key)
        target = starts if key in START_KEYS else parser
        target.add_argument(*flags, dest=key, default=argparse.SUPPRESS, help=info.description,
                            **_flag_type(info.annotation))  # fmt: skip


def _add_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config over the defaults (e.g. params/fast.yaml)")
    p.add_argument("--template", choices=TEMPLATE_NAMES, help="start from params/<template>.yaml")


def build_parser() -> argparse.ArgumentParser:
    S = argparse.SUPPRESS
    parser = argparse.ArgumentParser(
        prog="python -m vla_rl_lib",
        description="Fine-tune VLA robot policies with reinforcement learning (CRANE-X7).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="RL fine-tuning (PPO or GRPO)")
    _add_sources(train)
    add_config_flags(train)
    train.add_argument("--render", action="store_true", help="save a GIF of every evaluation")
    train.add_argument(
        "--resume", nargs="?", const=True, default=False, metavar="PATH",
        help="continue a run: bare, the newest run of the experiment; PATH, that checkpoint "
        "directory (without --config/--template its own config.yaml is the base)",
    )  # fmt: skip

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on held-out seeds")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint directory")
    ev.add_argument(
        "--num-episodes", default=S, metavar="N[,SPLIT=N...]",
        help="episodes per split; SPLIT=N sets one split's count (with --splits), e.g. "
        "--splits all --num-episodes 100,test=200",
    )  # fmt: skip
    ev.add_argument("--simulator", default=S)
    ev.add_argument("--env-id", default=S)
    ev.add_argument("--seed", type=int, default=S, help="first held-out seed")
    ev.add_argument("--render", action="store_true", help="write videos of the episodes")
    ev.add_argument("--output-dir", default=S, help="where videos go (default: the run folder)")
    ev.add_argument("--config", help="simulator settings for a policy directory (e.g. an SFT result)")
    ev.add_argument(
        "--splits", default=S, metavar="all|NAME,NAME",
        help="evaluate on these splits of the task, the same seeds on each, and print one row per "
        "split (all: every split; e.g. val,test). Default: the held-out seeds of train",
    )  # fmt: skip

    cfg = sub.add_parser("config", help="write a config template (every key, with its description)")
    cfg.add_argument("--template", choices=TEMPLATE_NAMES, default="default")
    cfg.add_argument("--output", "-o", help="file to write (default: print)")

    sft = sub.add_parser("sft", help="collect scripted demos and behaviour-clone the VLA")
    _add_sources(sft)
    sft.add_argument("--resume", action="store_true",
                     help="continue an interrupted SFT of the experiment from its last finished epoch")
    add_config_flags(sft, retarget={"learning_rate": "sft.learning_rate"})

    plan = sub.add_parser("plan", help="memory and time a config needs, before anything loads")
    _add_sources(plan)
    plan.add_argument("--gpus", type=int, help="learner GPUs (default: those visible, or the CPU)")
    plan.add_argument("--gpu-memory-gb", type=float, help="memory per GPU (default: detected)")
    plan.add_argument("--verbose", action="store_true", help="show the formula of every term")
    return parser


def resolve_config(args: argparse.Namespace, base: str | Path | None = None) -> VLARLConfig:
    """Template or YAML file (else ``base``), then only the flags the user passed."""
    if getattr(args, "config", None) and getattr(args, "template", None):
        raise UsageError("give --config or --template, not both")
    if base is not None and not (getattr(args, "config", None) or getattr(args, "template", None)):
        cfg = load_config(base)
    elif getattr(args, "config", None):
        cfg = load_config(args.config)
    else:
        cfg = load_template(getattr(args, "template", None) or "default")
    overrides = {key: getattr(args, key) for key in all_keys() if hasattr(args, key)}
    # The two starts exclude each other: the one given on the command line replaces the file's.
    if "sft_checkpoint" in overrides:
        overrides.setdefault("pretrained_checkpoint", None)
    elif "pretrained_checkpoint" in overrides:
        overrides["sft_checkpoint"] = None
    if overrides.get("rollout.ray_address") is not None and "rollout.executor" not in overrides:
        overrides["rollout.executor"] = "ray"
    return apply_overrides(cfg, overrides) if overrides else cfg


def train_config(args: argparse.Namespace) -> VLARLConfig:
    """``train``'s config: ``--resume PATH`` without ``--config``/``--template`` takes the
    checkpoint's own ``config.yaml`` as the base; the flags passed change it."""
    return resolve_config(
        args, base=resume_config_path(args.resume) if isinstance(args.resume, str) else None
    )


def cmd_train(args: argparse.Namespace) -> int:
    from vla_rl_lib.training.trainer import Trainer

    cfg = train_config(args)
    terminal = sys.stderr.isatty()
    if not terminal:  # transformers' own bars would write \r-redrawn fragments into the log
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        disable_progress_bars()
    trainer = Trainer(
        cfg, resume=args.resume, progress=terminal, render=args.render,
        progress_lines=None if terminal else sys.stderr,
    )  # fmt: skip
    print(f"run folder: {trainer.run_dir}", file=sys.stderr, flush=True)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    print(json.dumps(summary, indent=1))
    if summary.get("run_dir"):  # rank 0: the test success before and after RL, last
        from vla_rl_lib.metrics import load_metrics
        from vla_rl_lib.training.trainer import before_after_rl

        line = before_after_rl(load_metrics(summary["run_dir"]))
        if line is not None:
            print(line)
    if summary.get("best_eval_success") is None:
        from vla_rl_lib.training.trainer import NO_EVALUATION

        print(f"best_eval_success is null: {NO_EVALUATION} (eval_interval is 0)", file=sys.stderr)
    return 0


def check_evaluate_args(args: argparse.Namespace) -> None:
    """Every ``evaluate`` argument, checked before any model is loaded."""
    from vla_rl_lib.seed_ranges import TRAIN_SEED_FLOOR

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise UsageError(
            f"--checkpoint {args.checkpoint} does not exist as a folder; give a checkpoint folder "
            "(e.g. outputs/<experiment>/checkpoint_latest) or a policy folder"
        )
    spec = getattr(args, "num_episodes", None)
    args.num_episodes, args.split_episodes = (None, {}) if spec is None else parse_episode_counts(spec)
    if args.split_episodes and getattr(args, "splits", None) is None:
        raise UsageError(f"--num-episodes {spec} names splits: add --splits (e.g. --splits all)")
    episodes = max([args.num_episodes or 1, *args.split_episodes.values()])
    seed = getattr(args, "seed", None)
    if seed is not None and not (seed >= 0 and seed + episodes <= TRAIN_SEED_FLOOR):
        raise UsageError(
            f"--seed={seed} is invalid: held-out seeds live in [0, {TRAIN_SEED_FLOOR}); "
            "training draws the seeds above"
        )
    simulators = choices("rollout.simulator")
    simulator = getattr(args, "simulator", None)
    if simulator is not None and simulator not in simulators:
        raise UsageError(f"--simulator={simulator!r} is invalid: choose one of {list(simulators)}")
    env_id = getattr(args, "env_id", None)
    if env_id is not None and not env_id.strip():
        raise UsageError("--env-id is empty: give an environment id, e.g. PickPlace-CRANE-X7")
    output_dir = getattr(args, "output_dir", None)
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file; give a folder for the videos")
    splits = getattr(args, "splits", None)
    if splits is not None:
        from vla_rl_lib.training.evaluate import resolve_splits

        try:
            args.splits = resolve_splits(evaluated_env_id(args), splits)
        except ValueError as error:
            raise UsageError(f"--splits {splits}: {error}") from None
        stray = sorted(set(args.split_episodes) - set(args.splits))
        if stray:
            raise UsageError(
                f"--num-episodes {spec}: {', '.join(stray)} is not among --splits "
                f"({', '.join(args.splits)})"
            )


def parse_episode_counts(spec: str) -> tuple[int | None, dict[str, int]]:
    """``--num-episodes``: ``N`` for every split, ``SPLIT=N`` for one, comma-separated
    (``100,test=200``); returns the common count (None: the config's) and the per-split ones."""
    common: int | None = None
    per_split: dict[str, int] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        name, sep, value = part.rpartition("=")
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1 or (sep and not name.strip()) or (not sep and common is not None):
            raise UsageError(
                f"--num-episodes={spec} is invalid: give N >= 1 episodes, then SPLIT=N for a split "
                "that plays another count (e.g. 100,test=200)"
            )
        if sep:
            per_split[name.strip()] = count
        else:
            common = count
    return common, per_split


def evaluated_env_id(args: argparse.Namespace) -> str:
    """The env ``evaluate`` plays, read before any model loads: --env-id, else --config's, else
    the checkpoint's config.yaml, else the default template's."""
    from vla_rl_lib.training.checkpoint import CONFIG_FILE

    if getattr(args, "env_id", None):
        return args.env_id
    for path in (args.config, Path(args.checkpoint) / CONFIG_FILE):
        if path and Path(path).is_file():
            return load_config(path).rollout.env_id
    return VLARLConfig().rollout.env_id


def resume_config_path(resume: str, flag: str = "--resume") -> Path:
    """``config.yaml`` of the checkpoint ``--resume PATH`` names (through links, after a crash).
    ``flag``: how the error names the setting (a notebook's is ``resume``)."""
    from vla_rl_lib.training.checkpoint import CONFIG_FILE, recover_checkpoint

    path = recover_checkpoint(os.path.realpath(resume))
    if path is None or not (path / CONFIG_FILE).is_file():
        newest = "bare --resume" if flag == "--resume" else f"{flag}=True"
        raise UsageError(
            f"{flag} {resume}: no checkpoint directory there (it needs a {CONFIG_FILE}); pass "
            f"<run folder>/checkpoint_latest, or {newest} for the newest run"
        )
    return path / CONFIG_FILE


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vla_rl_lib.training.evaluate import evaluate_checkpoint

    check_evaluate_args(args)
    config = load_config(args.config) if args.config else None
    splits = getattr(args, "splits", None)
    result = evaluate_checkpoint(
        args.checkpoint,
        num_episodes=getattr(args, "num_episodes", None),
        simulator=getattr(args, "simulator", None),
        env_id=getattr(args, "env_id", None),
        seed=getattr(args, "seed", None),
        render=args.render,
        output_dir=getattr(args, "output_dir", None),
        config=config,
        splits=splits,
        split_episodes=getattr(args, "split_episodes", None),
    )
    from vla_rl_lib.display import summary_table

    if splits is not None:
        print(summary_table(result.rows()))
        for video in result.videos:
            print(f"video: {video}")
        return 0
    print(summary_table(result.per_episode))
    low, high = result.interval
    for video in result.videos:
        print(f"video: {video}")
    print(
        f"success_rate={result.success_rate:.3f} successes={result.successes} "
        f"episodes={result.episodes} wilson95_low={low:.3f} wilson95_high={high:.3f}"
    )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Write the whole template, every key with its value and description (it validates first)."""
    text = template_text(args.template)
    if args.output:
        write_text_atomic(Path(args.output), text)
        print(f"wrote {args.output} (template {args.template})")
    else:
        print(text, end="")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from vla_rl_lib.training.policy_factory import save_shared_sft

    cfg = resolve_config(args)
    # refuses an existing sft folder (or an interrupted one without --resume) before any work
    out = save_shared_sft(cfg, progress=True, resume=args.resume)
    print(json.dumps(out, indent=1, default=str))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from vla_rl_lib.planner import build_plan, render

    cfg = resolve_config(args)
    plan = build_plan(cfg, gpus=args.gpus, gpu_memory_gb=args.gpu_memory_gb)
    print(render(plan, verbose=args.verbose, source=args.config or args.template or "default"))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "config": cmd_config, "sft": cmd_sft,
            "plan": cmd_plan}


def user_errors() -> tuple[type[BaseException], ...]:
    from vla_rl_lib.training.checkpoint import CheckpointError
    from vla_rl_lib.training.trainer import TrainingError

    return (UsageError, ConfigError, CheckpointError, TrainingError, FileNotFoundError,
            FileExistsError, ImportError, ValueError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on unknown flags
    try:
        return COMMANDS[args.command](args)
    except user_errors() as exc:
        if os.environ.get("VLA_RL_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint_latest is intact (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
