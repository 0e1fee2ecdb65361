"""The start-seed streams of a run, and the rule that no two of them share a seed.

A seed fixes an episode's start state exactly (``lift`` draws it from the
seed alone), so two streams that share a seed share an episode: demonstrations
on an evaluation seed put the held-out start into SFT. Every stream is a
half-open range of seeds:

* training: ``[TRAIN_SEED_FLOOR, SEED_CEILING)``, drawn at random per update;
* evaluation: ``[eval_seed, eval_seed + num_eval_episodes)``;
* demonstrations: ``[demo_seed, demo_seed + demo_attempts(num_demos))``,
  attempt k playing ``demo_seed + k`` (failed expert attempts use up seeds too).

A new stream (a validation, test or out-of-distribution split) joins by adding
an entry to the list ``vla_rl_lib.config.seed_streams`` builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Training episodes draw start seeds at or above this bound; every other stream
# lives below it, so training never sees a held-out start.
TRAIN_SEED_FLOOR = 2**31
SEED_CEILING = 2**32


class SeedRangeError(ValueError):
    """Two seed streams share seeds."""


@dataclass(frozen=True)
class SeedStream:
    """One named stream: ``key`` is the setting that places it, ``seeds`` its half-open range."""

    name: str
    key: str
    seeds: range

    def describe(self) -> str:
        return f"{self.name} seeds [{self.seeds.start}, {self.seeds.stop}) ({self.key})"


def demo_attempts(num_demos: int) -> int:
    """How many expert attempts (one seed each) a demo collection may use by default."""
    return 2 * num_demos + 10


def check_disjoint(streams: Sequence[SeedStream]) -> None:
    """Raise ``SeedRangeError`` naming both streams of the first overlapping pair.

    The message starts with the later stream's ``key=start``, the setting to move.
    """
    for later_index, later in enumerate(streams):
        for earlier in streams[:later_index]:
            a, b = later.seeds, earlier.seeds
            if len(a) and len(b) and a.start < b.stop and b.start < a.stop:
                raise SeedRangeError(
                    f"{later.key}={a.start} is invalid: {later.describe()} overlap "
                    f"{earlier.describe()}; the same seed is the same start state, so move "
                    "one range clear of the other"
                )
