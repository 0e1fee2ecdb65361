"""Where should the next rollout play while the PPO update runs: a thread or a worker process?

    python benchmarks/collect_ahead_modes.py [--repeats 3] [--template default] [--envs 8]

The default template's rollout (``--envs`` envs, one update's episodes) and one
PPO update on a batch from it, timed four ways, each one thread of torch:

- ``rollout`` and ``update`` alone;
- ``sequential``: one after the other (what the trainer does without collect-ahead);
- ``thread``: the rollout on a second thread of this process, with its own copy of
  the policy, while this thread updates;
- ``process``: the rollout in ``rollout.collect_ahead``'s spawned worker process
  (``AheadExecutor``) while this process updates.

Reported: the median wall-clock of each over ``--repeats`` rounds, and the load
average. On two idle cores a mode that overlaps perfectly takes
max(rollout, update). Last line: ``rollout_s=... update_s=... sequential_s=...
thread_s=... process_s=... load=...``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vla_rl_lib.algorithms.ppo import PPOSettings, ppo_update  # noqa: E402
from vla_rl_lib.config import apply_overrides, load_template  # noqa: E402
from vla_rl_lib.rollout.ahead import frozen_weights  # noqa: E402
from vla_rl_lib.rollout.batch import rollout_to_batch  # noqa: E402
from vla_rl_lib.rollout.collector import training_episode_seeds  # noqa: E402
from vla_rl_lib.rollout.executor import make_collector, make_rollout_env  # noqa: E402
from vla_rl_lib.training.trainer import Trainer  # noqa: E402


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="default")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    out = tempfile.mkdtemp(prefix="collect_ahead_modes_")
    cfg = apply_overrides(
        load_template(args.template),
        {"output_dir": out, "experiment_name": "modes", "sft": {"num_demos": 0}, "device": "cpu",
         "rollout": {"num_parallel_envs": args.envs, "collect_ahead": True}},
    )  # fmt: skip
    load_before = os.getloadavg()[0]
    trainer = Trainer(cfg, progress=False)  # the policy, optimizer and the worker process
    try:
        r, p = cfg.rollout, cfg.ppo
        seeds = training_episode_seeds(cfg.seed, 0, r.num_rollouts_per_update)
        rollout = trainer.executor.collect(seeds, temperature=r.temperature)
        batch = rollout_to_batch(rollout, p.algorithm, p.gamma, p.gae_lambda)
        settings = PPOSettings.from_section(p)
        generator = torch.Generator().manual_seed(0)
        # The thread's own policy and simulator, built on that thread (a GL context belongs to
        # the thread that made it current), as a thread-based collect-ahead would need.
        side = ThreadPoolExecutor(1, "rollout")
        collector = side.submit(
            lambda: make_collector(cfg, make_rollout_env(cfg), copy.deepcopy(trainer.policy))
        ).result()

        def update() -> None:
            ppo_update(trainer.learner.trainer_view, trainer.optimizer, batch, settings,
                       r.temperature, generator)  # fmt: skip

        def local_rollout() -> None:
            collector.collect(seeds, temperature=r.temperature)

        def beside_thread() -> None:
            played = side.submit(local_rollout)
            update()
            played.result()

        def beside_process() -> None:
            trainer.executor.submit(0, seeds, frozen_weights(trainer.policy), temperature=r.temperature)
            update()
            trainer.executor.result(0)

        modes = {"rollout": lambda: side.submit(local_rollout).result(), "update": update,
                 "sequential": lambda: (side.submit(local_rollout).result(), update()),
                 "thread": beside_thread, "process": beside_process}  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.repeats):  # interleaved, so that a change of load hits every mode
            for name, work in modes.items():
                times[name].append(timed(work))
        side.submit(collector.env.close).result()
        side.shutdown()
    finally:
        trainer.close()
    load = (load_before + os.getloadavg()[0]) / 2
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"{name:>10}: {value:.2f} s (runs: {', '.join(f'{v:.2f}' for v in times[name])})")
    print(f"perfect overlap on idle cores: {max(median['rollout'], median['update']):.2f} s")
    print(" ".join(f"{name}_s={value:.2f}" for name, value in median.items()) + f" load={load:.2f}")


if __name__ == "__main__":
    main()
