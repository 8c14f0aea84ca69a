"""The mirror TTA a configuration predicts with, chosen on its cross-validation (part of `autoseg find-best`).

Mirroring costs 2^d network passes per window (8 in 3D). Every fold validation scores the candidate
mirror sets from the same passes (`autoseg.inference.mirroring`: off, each single axis, all) and saves
the per-case Dice in its `TaskResults.mirror_scores_file`. Here the folds' cases are pooled, per set
the foreground-mean Dice is computed as the candidates' (mean over foreground labels of the per-label
mean over cases), and the chosen set is the one with the fewest passes whose Dice is within
`MIRROR_DICE_TOLERANCE` of the best set's (ties: higher Dice, then the candidates' order).

No choice is made (`chosen` None, with a note) when a fold lacks the scores or was validated without
mirroring: then the gain of mirroring was not measured, and `predict --tta auto` mirrors on all axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from autoseg.inference.mirroring import ALL, MirrorScores, passes_of
from autoseg.workspace import TaskResults

# A smaller mirror set is chosen when its cross-validation Dice is at most this much below the best set's.
MIRROR_DICE_TOLERANCE = 0.002
# Float slack of the comparison, so that a difference of exactly the tolerance counts as within it.
_COMPARISON_SLACK = 1e-9


@dataclass
class MirroringChoice:
    """find-best's mirror TTA for one configuration.

    chosen: the set's name ("off", "axis:N", "all") or None when not measured (see `note`);
    mirror_axes: its axes (the network's spatial axes, of the patch); foreground_dice: {set name:
    cross-validation foreground-mean Dice} of every set scored.
    """

    chosen: str | None
    mirror_axes: list[int] | None
    foreground_dice: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict:
        return {"chosen": self.chosen, "mirror_axes": self.mirror_axes, "note": self.note,
                "foreground_dice": {name: None if math.isnan(d) else d for name, d in self.foreground_dice.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "MirroringChoice":
        axes = data["mirror_axes"]
        return cls(None if data["chosen"] is None else str(data["chosen"]),
                   None if axes is None else [int(a) for a in axes],
                   {str(k): math.nan if v is None else float(v) for k, v in data["foreground_dice"].items()},
                   str(data.get("note", "")))

    def describe(self) -> str:
        """"axis:2 (Dice 0.9120; all 0.9131)", or the note when nothing was chosen."""
        if self.chosen is None:
            return self.note
        best_of_all = self.foreground_dice.get(ALL, math.nan)
        return f"{self.chosen} (Dice {self.foreground_dice[self.chosen]:.4f}; all axes {best_of_all:.4f})"


def choose_mirror_set(foreground_dice: dict[str, float], sets: dict[str, Sequence[int]],
                      tolerance: float = MIRROR_DICE_TOLERANCE) -> str:
    """The name of the set with the fewest passes whose Dice is within `tolerance` of the best one
    (NaN counts as worst); ties: higher Dice, then the order of `sets`."""
    dice = {name: -math.inf if math.isnan(foreground_dice[name]) else foreground_dice[name] for name in sets}
    best = max(dice.values())
    order = list(sets)
    within = [name for name in sets if best - dice[name] <= tolerance + _COMPARISON_SLACK]
    return min(within, key=lambda name: (passes_of(sets[name]), -dice[name], order.index(name)))


def _pooled_foreground_dice(scores: list[MirrorScores], set_names: list[str]) -> dict[str, float]:
    """{set: mean over foreground labels of the per-label mean Dice over all cases of `scores`}."""
    cases = [per_set for fold in scores for per_set in fold.cases.values()]
    result = {}
    for name in set_names:
        labels = sorted({label for per_set in cases for label in per_set[name]})
        per_label = [[per_set[name][label] for per_set in cases if label in per_set[name]] for label in labels]
        means = [m for values in per_label if not math.isnan(m := _nanmean(values))]
        result[name] = sum(means) / len(means) if means else math.nan
    return result


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def mirroring_choice(results: TaskResults, configuration: str, folds: Sequence[str]) -> MirroringChoice:
    """The mirror TTA of `configuration` from the mirror scores of its fold validations `folds`."""
    scores = []
    for fold in folds:
        path = results.mirror_scores_file(configuration, fold)
        if not path.is_file():
            return MirroringChoice(None, None, note=f"fold {fold} has no {path.name} (validated before TTA "
                                                    "choices were scored; re-run its validation)")
        scores.append(MirrorScores.load(path))
    if any(ALL not in fold.sets for fold in scores):
        unmirrored = [f for f, fold in zip(folds, scores) if ALL not in fold.sets]
        return MirroringChoice(None, None, note=f"fold(s) {', '.join(unmirrored)} validated without mirroring")
    sets = {name: axes for name, axes in scores[0].sets.items() if all(name in fold.sets for fold in scores)}
    dice = _pooled_foreground_dice(scores, list(sets))
    chosen = choose_mirror_set(dice, sets)
    return MirroringChoice(chosen, list(sets[chosen]), dice)
