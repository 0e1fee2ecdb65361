"""Named splits of each task: seeded distributions of episode starts and instructions.

``make_env(sim, env_id, split=NAME)`` plays episodes of one split. A split's
``stream`` is mixed into every episode's generator (:func:`lift.task.episode_rng`),
so splits that share a distribution (train, val, test) still draw disjoint,
independent starts from the same seeds. ``train`` keeps stream 0: Lift-CRANE-X7's
training starts are exactly what they were before splits existed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lift import pickplace as pp
from lift.task import LIFT_ENV_ID, PICKPLACE_ENV_ID


@dataclass(frozen=True)
class LiftSplit:
    """Lift-CRANE-X7 has one distribution of starts; its splits differ only in seed stream."""

    name: str
    stream: int
    description: str


TEST_STREAM, VAL_STREAM = 1001, 1002

SPLITS: dict[str, dict[str, LiftSplit | pp.PickPlaceSplit]] = {
    LIFT_ENV_ID: {
        s.name: s
        for s in (
            LiftSplit("train", 0, "training starts"),
            LiftSplit("val", VAL_STREAM, "train's distribution, its own seed stream (model selection)"),
            LiftSplit("test", TEST_STREAM, "train's distribution, its own seed stream (reported only)"),
        )
    },
    PICKPLACE_ENV_ID: {
        s.name: s
        for s in (
            pp.PickPlaceSplit(
                "train", 0, "15 of the 20 colour pairs, 4 templates, the workspace minus one corner"
            ),
            pp.PickPlaceSplit(
                "val", VAL_STREAM, "train's distribution, its own seed stream (model selection)"
            ),
            pp.PickPlaceSplit(
                "test", TEST_STREAM, "train's distribution, its own seed stream (reported only)"
            ),
            pp.PickPlaceSplit(
                "ood_position",
                1003,
                "the named cube starts in the table corner that train never uses",
                named_cube_region=pp.HELD_OUT_CORNER,
            ),
            pp.PickPlaceSplit(
                "ood_combination",
                1004,
                "the instruction names one of the 5 (cube, plate) colour pairs held out of train",
                pairs=pp.HELD_OUT_PAIRS,
            ),
            pp.PickPlaceSplit(
                "ood_instruction",
                1005,
                "paraphrased templates never used in train (block, dish, disc, set, transfer)",
                templates=pp.PARAPHRASED_TEMPLATES,
            ),
            pp.PickPlaceSplit(
                "ood_visual",
                1006,
                "a blue-grey table tint and a dimmer light never used in train",
                table_rgba=pp.OOD_TABLE_RGBA,
                light_scale=0.6,
            ),
        )
    },
}


def list_splits(env_id: str) -> list[str]:
    """The split names of ``env_id``, in definition order (train, val, test, then OOD)."""
    if env_id not in SPLITS:
        raise ValueError(f"unknown env_id {env_id!r}; tasks with splits: {sorted(SPLITS)}")
    return list(SPLITS[env_id])


def get_split(env_id: str, name: str) -> LiftSplit | pp.PickPlaceSplit:
    """The split ``name`` of ``env_id``; an unknown name raises ValueError naming the available ones."""
    available = list_splits(env_id)
    if name not in available:
        raise ValueError(f"unknown split {name!r} for {env_id}; available splits: {available}")
    return SPLITS[env_id][name]
