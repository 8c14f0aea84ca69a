"""Mirror test-time augmentation sets: which are compared, their names, and the fold validation's
per-case scores of each (what find-best chooses the TTA from).

A mirror set is the network's spatial axes (0-based, of the patch, in the plan's transposed order)
whose every subset is a mirror pass (`autoseg.inference.sliding_window.mirror_axes_combinations`):
    "off"     ()          1 pass
    "axis:N"  (N,)        2 passes: the identity and the flip along axis N
    "all"     (0, .., d)  2^d passes: 8 in 3D, 4 in 2D (nnU-Net's only choice)
The fold validation scores every candidate set (`candidate_mirror_sets`) from the same network
passes and saves `MirrorScores` in the fold's `TaskResults.mirror_scores_file`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoseg.artifacts import build_versioned, load_artifact, write_json

MIRROR_SCORES_SCHEMA_VERSION = 1
OFF, ALL, AXIS_PREFIX = "off", "all", "axis:"


def candidate_mirror_sets(dimension: int) -> dict[str, tuple[int, ...]]:
    """{name: mirror axes} of the sets the fold validation compares, fewest passes first:
    off, each single axis, all (5 sets in 3D, 4 in 2D)."""
    return {OFF: (), **{f"{AXIS_PREFIX}{axis}": (axis,) for axis in range(dimension)},
            ALL: tuple(range(dimension))}


def passes_of(mirror_axes: tuple[int, ...] | list[int]) -> int:
    """Network passes per window of a mirror set: 2^len(axes)."""
    return 2 ** len(mirror_axes)


@dataclass
class MirrorScores:
    """One fold validation's Dice of every candidate mirror set, per case and foreground label.

    sets: {name: mirror axes}; cases: {case id: {set name: {label value (str): Dice}}}, each set's
    segmentation scored against the reference in the original geometry, not postprocessed (as the
    fold validation's own summary).
    """

    sets: dict[str, list[int]]
    cases: dict[str, dict[str, dict[str, float]]]
    schema_version: int = MIRROR_SCORES_SCHEMA_VERSION

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "sets": self.sets, "cases": self.cases}

    @classmethod
    def from_json(cls, data: dict, where: str = "mirror scores") -> "MirrorScores":
        return build_versioned(data, cls._from_fields, expected_version=MIRROR_SCORES_SCHEMA_VERSION, where=where,
                               what="mirror scores", what_to_do="re-run the fold's validation")

    @classmethod
    def _from_fields(cls, data: dict) -> "MirrorScores":
        sets = {str(name): [int(a) for a in axes] for name, axes in data["sets"].items()}
        cases = {str(case): {str(name): {str(label): float(dice) for label, dice in labels.items()}
                             for name, labels in per_set.items()}
                 for case, per_set in data["cases"].items()}
        return cls(sets, cases)

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "MirrorScores":
        return load_artifact(path, cls.from_json)
