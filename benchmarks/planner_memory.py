"""The planner's learner memory against the peak RSS measured during a real PPO update.

Runs in its own process so the peak is this update's: after the imports it
resets the kernel's high-water mark (``/proc/self/clear_refs``), notes the
resident set, builds the policy of ``--config`` with its optimizer, runs one
``ppo_update`` on a full-size batch and reads the peak (``VmHWM``). The
planner's learner total (weights, optimizer state, gradients, activations of
one micro-batch) should match peak minus baseline.

    python benchmarks/planner_memory.py --config params/default.yaml
    python benchmarks/planner_memory.py --config params/default.yaml --set model.hidden_size=256 \
        --set model.intermediate_size=688 --set model.num_layers=6 --set lora.enabled=false

Last line: ``measured_mb=... planned_mb=... ratio=...`` (ratio = planned / measured).
``--simulator`` instead measures the resident memory one MuJoCo environment adds
(the planner's ``SIMULATOR_BYTES_*``): ``sim_mb_total=... sim_mb_per_env=...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux")


def measure(config_path: str, overrides: dict) -> dict[str, float]:
    """In this process: peak RSS above the post-import baseline during one update."""
    import numpy as np
    import torch

    from vla_rl_lib.algorithms.ppo import PPOBatch, PPOSettings, ppo_update
    from vla_rl_lib.config import apply_overrides, load_config
    from vla_rl_lib.planner import GB, build_plan
    from vla_rl_lib.policy.hf_policy import build_policy
    from vla_rl_lib.training.policy_factory import lora_settings, tiny_vla_config

    torch.set_num_threads(1)
    cfg = apply_overrides(load_config(config_path), overrides) if overrides else load_config(config_path)
    if cfg.model.name != "tiny":
        raise SystemExit("planner_memory.py measures the tiny model (OpenVLA needs its weights and a GPU)")
    plan = build_plan(cfg)  # parameter counting builds meta modules: before the baseline
    from vla_rl_lib.policy.tiny_vla import build_tokenizer

    sizes = tiny_vla_config(cfg)
    build_tokenizer(sizes.text_vocab_size, sizes.action_slots)  # warm the tokenizer trainer's caches
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline_kb = _status_kb("VmRSS")

    policy = build_policy(sizes, lora=lora_settings(cfg), seed=0, decoding=cfg.model.decoding)
    if cfg.model.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        policy.optimizer_param_groups(cfg.ppo.learning_rate, cfg.ppo.value_learning_rate), eps=1e-5
    )
    size = cfg.ppo.minibatch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(size, cfg.rollout.image_size, cfg.rollout.image_size, 3),
                          dtype=np.uint8)
    instructions = [cfg.language_instruction] * size
    with torch.no_grad():
        out = policy.act(images, instructions, 1.0, False)
    batch = PPOBatch(images, instructions, out.token_ids, out.log_probs, out.values,
                     torch.randn(size), out.values + torch.randn(size))
    ppo_update(policy, optimizer, batch, PPOSettings.from_section(cfg.ppo), 1.0, torch.Generator().manual_seed(0))
    peak_kb = _status_kb("VmHWM")
    measured = (peak_kb - baseline_kb) * 1024
    return {
        "measured_mb": measured / 1e6,
        "planned_mb": plan.learner_bytes / 1e6,
        "ratio": plan.learner_bytes / measured,
        "params": plan.model.total,
        "check_gb": plan.learner_bytes / GB,
    }


def measure_simulator(config_path: str) -> dict[str, float]:
    """In this process: RSS added by building and stepping the config's rollout envs, per env."""
    import numpy as np

    from vla_rl_lib.config import load_config
    from vla_rl_lib.rollout.executor import make_rollout_env

    cfg = load_config(config_path)
    before_kb = _status_kb("VmRSS")
    env = make_rollout_env(cfg)
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.zeros((env.num_envs, 8), dtype=np.float32))
    after_kb = _status_kb("VmHWM")
    env.close()
    return {"sim_mb_per_env": (after_kb - before_kb) * 1024 / 1e6 / cfg.rollout.num_parallel_envs,
            "envs": cfg.rollout.num_parallel_envs}


def measure_in_subprocess(config_path: str, overrides: dict) -> dict[str, float]:
    """``measure`` in a fresh interpreter, so nothing earlier inflates the peak."""
    code = (
        "import json, sys; from benchmarks.planner_memory import measure; "
        "print(json.dumps(measure(sys.argv[1], json.loads(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, config_path, json.dumps(overrides)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise RuntimeError(f"planner_memory measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="params/default.yaml")
    parser.add_argument("--simulator", action="store_true",
                        help="measure the memory per simulator environment instead")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, YAML value (repeatable)")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    if args.simulator:
        result = measure_simulator(args.config)
        print(f"{result['envs']} environments of {args.config}")
        total = result["sim_mb_per_env"] * result["envs"]
        print(f"sim_mb_total={total:.1f} sim_mb_per_env={result['sim_mb_per_env']:.1f}")
        return
    result = measure_in_subprocess(args.config, overrides)
    print(f"tiny model, {result['params']:,} parameters, config {args.config} {overrides or ''}")
    print(f"measured_mb={result['measured_mb']:.1f} planned_mb={result['planned_mb']:.1f} "
          f"ratio={result['ratio']:.3f}")


if __name__ == "__main__":
    main()
