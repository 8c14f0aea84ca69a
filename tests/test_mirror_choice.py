"""The mirror TTA choice: the smallest set within 0.002 Dice of the best, on hand-made numbers."""

import json
import math

import pytest

from autoseg.errors import AutosegError
from autoseg.inference.mirroring import MirrorScores, candidate_mirror_sets
from autoseg.mirror_choice import MIRROR_DICE_TOLERANCE, choose_mirror_set, mirroring_choice
from autoseg.workspace import TaskResults

SETS_3D = candidate_mirror_sets(3)


def test_candidate_sets_are_off_each_axis_and_all():
    assert SETS_3D == {"off": (), "axis:0": (0,), "axis:1": (1,), "axis:2": (2,), "all": (0, 1, 2)}
    assert candidate_mirror_sets(2) == {"off": (), "axis:0": (0,), "axis:1": (1,), "all": (0, 1)}


@pytest.mark.parametrize("dice, chosen", [
    # best 0.9120 (all); within 0.002: axis:1 0.9105, axis:2 0.9108 (2 passes each) -> the higher, axis:2
    ({"off": 0.900, "axis:0": 0.905, "axis:1": 0.9105, "axis:2": 0.9108, "all": 0.9120}, "axis:2"),
    # no mirroring is 0.0015 below the best: one pass instead of eight
    ({"off": 0.9105, "axis:0": 0.905, "axis:1": 0.9105, "axis:2": 0.9108, "all": 0.9120}, "off"),
    # every smaller set is more than 0.002 below: all axes, as nnU-Net
    ({"off": 0.900, "axis:0": 0.905, "axis:1": 0.909, "axis:2": 0.9099, "all": 0.9120}, "all"),
    # a single axis beats all axes: it is the best and the smallest within reach
    ({"off": 0.890, "axis:0": 0.915, "axis:1": 0.905, "axis:2": 0.900, "all": 0.9120}, "axis:0"),
    # exactly the tolerance below counts as within; NaN counts as worst
    ({"off": 0.898, "axis:0": math.nan, "axis:1": 0.5, "axis:2": 0.5, "all": 0.900}, "off"),
], ids=["single_axis", "off", "all", "axis_beats_all", "boundary_and_nan"])
def test_smallest_set_within_the_tolerance_of_the_best(dice, chosen):
    assert MIRROR_DICE_TOLERANCE == 0.002
    assert choose_mirror_set(dice, SETS_3D) == chosen


def write_scores(results: TaskResults, configuration: str, fold: str, cases: dict, sets=SETS_3D):
    path = results.mirror_scores_file(configuration, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    MirrorScores({name: list(axes) for name, axes in sets.items()}, cases).save(path)


def test_folds_are_pooled_per_label_then_averaged_over_labels(tmp_path):
    results = TaskResults(tmp_path)
    # Fold 0 alone would choose axis:1; pooled, label 1 means (off) 0.85 / (axis:1) 0.875 / (all) 0.88
    # and label 2 means 0.95 / 0.925 / 0.92: foreground Dice off 0.9, axis:1 0.9, all 0.9 -> off.
    write_scores(results, "3d", "0", {"a": {"off": {"1": 0.80, "2": 0.90}, "axis:1": {"1": 0.85, "2": 0.95},
                                            "all": {"1": 0.86, "2": 0.94}}}, sets={"off": (), "axis:1": (1,),
                                                                                  "all": (0, 1, 2)})
    write_scores(results, "3d", "1", {"b": {"off": {"1": 0.90, "2": 1.00}, "axis:1": {"1": 0.90, "2": 0.90},
                                            "all": {"1": 0.90, "2": 0.90}}}, sets={"off": (), "axis:1": (1,),
                                                                                  "all": (0, 1, 2)})
    choice = mirroring_choice(results, "3d", ["0", "1"])
    assert choice.foreground_dice == pytest.approx({"off": 0.9, "axis:1": 0.9, "all": 0.9})
    assert (choice.chosen, choice.mirror_axes) == ("off", [])
    fold_0_alone = mirroring_choice(results, "3d", ["0"])
    assert (fold_0_alone.chosen, fold_0_alone.mirror_axes) == ("axis:1", [1])


def test_no_choice_without_scores_or_without_mirroring(tmp_path):
    results = TaskResults(tmp_path)
    write_scores(results, "3d", "0", {"a": {"off": {"1": 0.9}}}, sets={"off": ()})
    unmirrored = mirroring_choice(results, "3d", ["0"])
    assert unmirrored.chosen is None and "fold(s) 0 validated without mirroring" in unmirrored.note
    missing = mirroring_choice(results, "3d", ["0", "1"])
    assert missing.chosen is None and "fold 1 has no mirror_scores.json" in missing.note
    scores_file = results.mirror_scores_file("3d", "0")
    data = json.loads(scores_file.read_text())
    data["schema_version"] = 7
    scores_file.write_text(json.dumps(data))
    with pytest.raises(AutosegError, match="schema_version 7"):
        mirroring_choice(results, "3d", ["0"])
