"""The PickPlace-CRANE-X7 task, independent of any physics engine.

Two 4 cm cubes and two flat round plates lie on the table, each of a different
colour from :data:`PALETTE`. The instruction, generated from a template, names
one cube and one plate ("put the red cube on the green plate"); it is the only
thing that says which cube goes where. An episode's colours, positions, named
pair and template are a pure function of its seeded generator
(:func:`sample_episode`), drawn from a :class:`PickPlaceSplit`.

Success rule (checked on the current step, :func:`is_success`): the named cube's
centre is within ``PLATE_RADIUS`` (5 cm, horizontally) of the named plate's
centre, its height is within ``REST_TOLERANCE`` (8 mm) of resting on the plate
(``REST_HEIGHT``), it is released (the two finger pads do not both touch it and
both finger joints are open by at least ``FINGERS_OPEN`` rad) and the gripper
has moved clear (gripper base at least ``GRIPPER_CLEARANCE`` = 10 cm from the
cube's centre).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from lift import task

PALETTE: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.65, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.15, 0.75, 1.0),
}
NUM_CUBES = 2
NUM_PLATES = 2

CUBE_HALF_SIZE = task.CUBE_HALF_SIZE
PLATE_RADIUS = 0.05
PLATE_HALF_HEIGHT = 0.003  # a flat disc: its top is 6 mm above the table
REST_HEIGHT = 2 * PLATE_HALF_HEIGHT + CUBE_HALF_SIZE  # cube centre z when it rests on a plate
REST_TOLERANCE = 0.008
FINGERS_OPEN = 0.5  # rad; both finger joints at least this open counts as released
GRIPPER_CLEARANCE = 0.10  # m, gripper base to the cube's centre
DENSE_SUCCESS_REWARD = 6.0

# Spawn geometry (metres, robot base at the origin, +x away from it). Every object's
# centre is at least MIN_SEPARATION from every other one: a cube never starts on a
# plate and the open gripper does not touch the other cube while grasping.
MIN_SEPARATION = 0.10
MAX_PLACEMENT_DRAWS = 5000  # bound on the position sampler: it errors, never loops forever

# Each template names the object and the target through {cube} and {plate}, which are
# filled with their colours; nothing else in a template may name an object.
TRAIN_TEMPLATES = (
    "put the {cube} cube on the {plate} plate",
    "place the {cube} cube on the {plate} plate",
    "move the {cube} cube onto the {plate} plate",
    "pick up the {cube} cube and put it on the {plate} plate",
)
PARAPHRASED_TEMPLATES = (
    "place the {cube} block onto the {plate} dish",
    "set the {cube} block down on the {plate} dish",
    "transfer the {cube} box to the {plate} disc",
)
TEMPLATE_FIELDS = ("cube", "plate")
# Held out of train: each colour is named once as the cube and once as the plate here,
# and three times each way in train, so every word is seen but never these pairings.
HELD_OUT_PAIRS = (
    ("red", "green"),
    ("green", "blue"),
    ("blue", "yellow"),
    ("yellow", "purple"),
    ("purple", "red"),
)
ALL_PAIRS = tuple((c, p) for c in PALETTE for p in PALETTE if c != p)
TRAIN_PAIRS = tuple(pair for pair in ALL_PAIRS if pair not in HELD_OUT_PAIRS)


@dataclass(frozen=True)
class Region:
    """An axis-aligned rectangle of the table (x, y in metres), minus an optional ``exclude``."""

    x: tuple[float, float]
    y: tuple[float, float]
    exclude: Region | None = None

    def __post_init__(self) -> None:
        if not (self.x[0] < self.x[1] and self.y[0] < self.y[1]):
            raise ValueError(f"Region x={self.x}, y={self.y} is empty: give (low, high) with low < high")

    def contains(self, xy: np.ndarray) -> bool:
        inside = self.x[0] <= xy[0] <= self.x[1] and self.y[0] <= xy[1] <= self.y[1]
        return inside and not (self.exclude is not None and self.exclude.contains(xy))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.uniform(*self.x), rng.uniform(*self.y)])


# The whole workspace is 18 x 24 cm in front of the robot. The held-out corner (far
# right as the robot sees it, 6 x 8 cm) is never used by any object in train.
WORKSPACE = Region(x=(0.14, 0.32), y=(-0.12, 0.12))
HELD_OUT_CORNER = Region(x=(0.26, 0.32), y=(-0.12, -0.04))
TRAIN_REGION = Region(x=WORKSPACE.x, y=WORKSPACE.y, exclude=HELD_OUT_CORNER)

TRAIN_TABLE_RGBA = (1.0, 1.0, 1.0, 1.0)  # the table texture's own brown checker
OOD_TABLE_RGBA = (0.45, 0.75, 1.0, 1.0)  # a blue-grey tint never seen in train


def template_error(template: str) -> str | None:
    """Why ``template`` cannot generate instructions for this scene, or None when it can."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        return f"instruction template {template!r} is not a valid format string ({error})"
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        return (
            f"instruction template {template!r} names {unknown}, which the scene does not have; "
            f"name the object and target as {{cube}} and {{plate}}"
        )
    missing = sorted(set(TEMPLATE_FIELDS) - names)
    if missing:
        return f"instruction template {template!r} lacks {missing}: it must name both {{cube}} and {{plate}}"
    literal = string.Formatter().vformat(template, (), {"cube": "", "plate": ""})
    fixed = sorted(colour for colour in PALETTE if colour in literal.split())
    if fixed:
        return (
            f"instruction template {template!r} names the colour(s) {fixed} literally, an object "
            "that may not be in the scene; use {cube} and {plate}"
        )
    return None


@dataclass(frozen=True)
class PickPlaceSplit:
    """A seeded distribution of PickPlace episodes. Invalid templates or colours raise at construction."""

    name: str
    stream: int  # mixed into every episode's generator: splits draw independent starts
    description: str
    pairs: tuple[tuple[str, str], ...] = TRAIN_PAIRS  # (cube colour, plate colour) to name
    templates: tuple[str, ...] = TRAIN_TEMPLATES
    region: Region = TRAIN_REGION  # where every object's centre may be
    named_cube_region: Region | None = None  # where the named cube starts (default: region)
    table_rgba: tuple[float, float, float, float] = TRAIN_TABLE_RGBA
    min_separation: float = MIN_SEPARATION
    light_scale: float = 1.0  # multiplies the scene lights' diffuse colour

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError(f"split {self.name!r} has no instruction templates; give at least one")
        for template in self.templates:
            error = template_error(template)
            if error is not None:
                raise ValueError(f"split {self.name!r}: {error}")
        if not self.pairs:
            raise ValueError(f"split {self.name!r} has no (cube, plate) colour pairs; give at least one")
        for cube, plate in self.pairs:
            if cube not in PALETTE or plate not in PALETTE or cube == plate:
                raise ValueError(
                    f"split {self.name!r}: pair ({cube!r}, {plate!r}) must be two different "
                    f"colours of the palette {sorted(PALETTE)}"
                )


@dataclass(frozen=True)
class PickPlaceEpisode:
    """One episode's start, all drawn from its seed. Index 0 of each array is the named one's slot
    only by chance: ``named_cube`` / ``named_plate`` say which slot the instruction names."""

    arm_qpos: np.ndarray  # (7,)
    cube_xy: np.ndarray  # (NUM_CUBES, 2)
    plate_xy: np.ndarray  # (NUM_PLATES, 2)
    cube_colours: tuple[str, ...]
    plate_colours: tuple[str, ...]
    named_cube: int
    named_plate: int
    instruction: str


def place_objects(
    rng: np.random.Generator,
    regions: list[Region],
    min_separation: float,
    max_draws: int = MAX_PLACEMENT_DRAWS,
) -> np.ndarray:
    """One centre (x, y) per region, all pairwise at least ``min_separation`` apart.

    Places them one after another, starting over when one cannot be placed in 50
    tries; gives up with ValueError after ``max_draws`` draws in total.
    """
    draws = 0
    while draws < max_draws:
        placed: list[np.ndarray] = []
        for region in regions:
            for _ in range(50):
                draws += 1
                xy = region.draw(rng)
                if not region.contains(xy):
                    continue
                if all(np.linalg.norm(xy - other) >= min_separation for other in placed):
                    placed.append(xy)
                    break
            else:
                break
        if len(placed) == len(regions):
            return np.stack(placed)
    raise ValueError(
        f"could not place {len(regions)} objects at least {min_separation} m apart in their spawn "
        f"regions after {max_draws} draws; enlarge the regions or lower the minimum separation"
    )


def sample_episode(rng: np.random.Generator, split: PickPlaceSplit) -> PickPlaceEpisode:
    """The episode start for one seeded generator: always the same draws in the same order."""
    arm = np.clip(
        task.REST_ARM_QPOS + rng.normal(0.0, task.JOINT_NOISE_STD, size=7),
        task.ARM_LOWER,
        task.ARM_UPPER,
    )
    cube_colour, plate_colour = split.pairs[rng.integers(len(split.pairs))]
    others = [c for c in PALETTE if c not in (cube_colour, plate_colour)]
    other_cube, other_plate = (others[i] for i in rng.choice(len(others), size=2, replace=False))
    named_cube, named_plate = int(rng.integers(NUM_CUBES)), int(rng.integers(NUM_PLATES))
    cube_colours = [other_cube] * NUM_CUBES
    cube_colours[named_cube] = cube_colour
    plate_colours = [other_plate] * NUM_PLATES
    plate_colours[named_plate] = plate_colour

    named_region = split.named_cube_region or split.region
    # Order: the named cube, then the other cubes, then the plates.
    regions = [named_region] + [split.region] * (NUM_CUBES - 1 + NUM_PLATES)
    centres = place_objects(rng, regions, split.min_separation)
    cube_order = [named_cube] + [k for k in range(NUM_CUBES) if k != named_cube]
    cube_xy = np.empty((NUM_CUBES, 2))
    cube_xy[cube_order] = centres[:NUM_CUBES]
    plate_xy = centres[NUM_CUBES:]

    template = split.templates[rng.integers(len(split.templates))]
    return PickPlaceEpisode(
        arm_qpos=arm,
        cube_xy=cube_xy,
        plate_xy=plate_xy,
        cube_colours=tuple(cube_colours),
        plate_colours=tuple(plate_colours),
        named_cube=named_cube,
        named_plate=named_plate,
        instruction=template.format(cube=cube_colour, plate=plate_colour),
    )


def recolour_named_cube(instruction: str) -> str:
    """``instruction`` naming another cube: its first palette colour (the cube's; every template
    names the cube before the plate) replaced by the next colour of :data:`PALETTE`, cyclically,
    that the instruction does not name ("put the red cube on the green plate" -> "put the blue
    cube on the green plate"). The counterfactual that asks a policy whether it listens: a policy
    that finds the named cube predicts other actions for it. Raises ValueError unless exactly two
    different palette colours appear."""
    words = instruction.split(" ")
    found = [i for i, word in enumerate(words) if word in PALETTE]
    named = {words[i] for i in found}
    if len(found) != 2 or len(named) != 2:
        raise ValueError(
            f"instruction {instruction!r} names {len(found)} palette colour(s); recolouring needs "
            f"exactly two different ones from {sorted(PALETTE)}"
        )
    colours = list(PALETTE)
    start = colours.index(words[found[0]])
    words[found[0]] = next(
        colours[(start + k) % len(colours)]
        for k in range(1, len(colours))
        if colours[(start + k) % len(colours)] not in named
    )
    return " ".join(words)


def is_success(
    cube_to_target_xy: np.ndarray,
    cube_height: np.ndarray,
    is_grasped: np.ndarray,
    finger_opening: np.ndarray,
    gripper_to_cube_dist: np.ndarray,
) -> np.ndarray:
    """The named cube rests on the named plate, released, with the gripper clear (module docstring)."""
    on_target = cube_to_target_xy <= PLATE_RADIUS
    resting = np.abs(cube_height - REST_HEIGHT) <= REST_TOLERANCE
    released = ~is_grasped & (finger_opening >= FINGERS_OPEN)
    clear = gripper_to_cube_dist >= GRIPPER_CLEARANCE
    return on_target & resting & released & clear


def dense_reward(
    gripper_to_cube_dist: np.ndarray,
    cube_to_target_xy: np.ndarray,
    cube_height: np.ndarray,
    is_grasped: np.ndarray,
    finger_opening: np.ndarray,
    success: np.ndarray,
) -> np.ndarray:
    """Staged reach -> grasp -> carry -> place -> release, each stage worth up to 1.

    reach ``1 - tanh(5 d_gripper_cube)``; grasp 1 while both pads touch the named cube;
    carry ``1 - tanh(5 d_cube_target_xy)`` while grasped or once on the target; place 1
    when the cube is over the target at resting height; release (fingers open fraction)
    while placed and not grasped. A success step pays ``DENSE_SUCCESS_REWARD`` instead.
    """
    on_target = cube_to_target_xy <= PLATE_RADIUS
    placed = on_target & (np.abs(cube_height - REST_HEIGHT) <= REST_TOLERANCE)
    reach = 1.0 - np.tanh(5.0 * gripper_to_cube_dist)
    grasp = is_grasped.astype(np.float64)
    carry = np.where(is_grasped | placed, 1.0 - np.tanh(5.0 * cube_to_target_xy), 0.0)
    place = placed.astype(np.float64)
    opening = np.clip(finger_opening / task.GRIPPER_OPEN, 0.0, 1.0)
    release = np.where(placed & ~is_grasped, opening, 0.0)
    reward = np.where(success, DENSE_SUCCESS_REWARD, reach + grasp + carry + place + release)
    return reward.astype(np.float32)
