"""Write the README's PickPlace-CRANE-X7 frames: what the policy sees (64x64) and the
human-resolution render (256x256) from the same third-person camera, mid-episode.

    PYTHONPATH=$PWD/sim:$PWD python scripts/pickplace_frames.py --out-dir docs

Last line: ``instruction=... step=...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

import lift
from lift.expert import ScriptedExpert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out-dir", default="outputs/frames")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--split", default="train")
    parser.add_argument("--step", type=int, default=25, help="expert steps before the frame")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = lift.make_env(
        "mujoco", "PickPlace-CRANE-X7", image_size=64, split=args.split, auto_reset=False
    )
    observation = env.reset(seed=args.seed)
    expert = ScriptedExpert(env)
    for _ in range(args.step):
        observation = env.step(expert.act()).observation
    Image.fromarray(observation.image[0]).save(out / "pickplace_64.png")
    Image.fromarray(env.render(size=(256, 256))[0]).save(out / "pickplace_256.png")
    env.close()
    print(f"instruction={observation.instructions[0]!r} step={args.step}")


if __name__ == "__main__":
    main()
