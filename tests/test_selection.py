"""Model selection on hand-built training outputs: 2 folds of one case each, 8-voxel line images.

Every case has the reference REFERENCE (label 1 on voxels 0-3). A configuration's prediction is
given by the probability of label 1 per voxel; its segmentation is that probability > 0.5.
"""

import json

import numpy as np
import pytest

from autoseg.cross_validation import trained_configurations
from autoseg.ensembling import save_probabilities
from autoseg.errors import AutosegError, WorkspaceError
from autoseg.io import Geometry, read_segmentation, write_segmentation
from autoseg.postprocessing import PostprocessingDecision
from autoseg.selection import SelectionResult, find_best, load_choice
from autoseg.workspace import TaskResults

GEOMETRY = Geometry(shape=(1, 1, 8), spacing_zyx=(1.0, 1.0, 1.0))
REFERENCE = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=np.int16)
LABELS = {0: "background", 1: "organ"}
SPLITS = [{"train": ["c2"], "val": ["c1"]}, {"train": ["c1"], "val": ["c2"]}]

EXACT = [0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1]  # Dice 1
HALF = [0.9, 0.9, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1]  # 2 of 4 voxels: Dice 2*2/(2+4) = 0.667
# Complementary errors. A: voxels {0, 1, 4} -> TP 2, FP 1, FN 2: Dice 4/7 = 0.571.
# B: voxels {1, 2, 3} -> TP 3, FN 1: Dice 6/7 = 0.857. Mean: [0.65, 0.65, 0.65, 0.65, 0.4, ...] -> exactly
# the reference (Dice 1); a voxel-wise maximum would keep A's false positive on voxel 4 (0.7).
COMPLEMENT_A = [0.9, 0.9, 0.4, 0.4, 0.7, 0.1, 0.1, 0.1]
COMPLEMENT_B = [0.4, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1]
ISLAND = [0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9]  # reference + a spurious voxel 7: Dice 8/9 = 0.889


def write_case(folder, case_id, foreground_probability):
    p = np.asarray(foreground_probability, dtype=np.float32).reshape(1, 1, 8)
    save_probabilities(folder / case_id, np.stack([1 - p, p]).astype(np.float16), GEOMETRY, labels=[0, 1])
    write_segmentation((p > 0.5).astype(np.int16), GEOMETRY, folder / f"{case_id}.nii.gz")


def make_workspace(tmp_path, predictions: dict[str, list[float]], folds=("0", "1")):
    """results/TASK with splits.json and, per configuration, the validation of the given folds."""
    references = tmp_path / "preprocessed" / "Task" / "gt_segmentations"
    for case_id in ("c1", "c2"):
        write_segmentation(REFERENCE.reshape(1, 1, 8), GEOMETRY, references / f"{case_id}.nii.gz")
    results = tmp_path / "results" / "Task"
    results.mkdir(parents=True)
    (results / "splits.json").write_text(json.dumps(SPLITS))
    for configuration, probability in predictions.items():
        for fold in folds:
            validation = results / configuration / f"fold_{fold}" / "validation"
            for case_id in SPLITS[int(fold)]["val"]:
                write_case(validation, case_id, probability)
            (validation / "summary.json").write_text("{}")  # a fold file that must not be gathered
    return results, references


def test_picks_the_configuration_with_the_higher_dice(tmp_path):
    results, references = make_workspace(tmp_path, {"2d": HALF, "3d_fullres": EXACT})
    result = find_best(TaskResults(results), references, LABELS)
    assert result.chosen == ["3d_fullres"]
    dice = {c.name: c.foreground_dice for c in result.candidates}
    assert dice["3d_fullres"] == pytest.approx(1.0)
    assert dice["2d"] == pytest.approx(2 / 3)
    # The ensemble's mean keeps all four voxels (0.9+0.2)/2 = 0.55 > 0.5: also Dice 1, and the tie
    # goes to the single model.
    assert dice["2d+3d_fullres"] == pytest.approx(1.0)
    assert [c.name for c in result.candidates] == ["3d_fullres", "2d+3d_fullres", "2d"]
    assert sorted(p.name for p in (results / "3d_fullres" / "crossval").iterdir()) == [
        "c1.json", "c1.nii.gz", "c1.npz", "c2.json", "c2.nii.gz", "c2.npz",
        "crossval_info.json", "summary.csv", "summary.json"]
    summary = json.loads((results / "2d" / "crossval" / "summary.json").read_text())
    assert len(summary["per_case"]) == 2 and summary["foreground_mean"]["Dice"] == pytest.approx(2 / 3)
    assert "* 3d_fullres" in result.format_table()
    assert (results / "find_best.txt").read_text() == result.format_table() + "\n"


def test_ensemble_with_complementary_errors_wins_and_is_the_mean(tmp_path):
    results, references = make_workspace(tmp_path, {"A": COMPLEMENT_A, "B": COMPLEMENT_B})
    result = find_best(TaskResults(results), references, LABELS)
    dice = {c.name: c.foreground_dice for c in result.candidates}
    assert dice["A"] == pytest.approx(4 / 7) and dice["B"] == pytest.approx(6 / 7)
    assert dice["A+B"] == pytest.approx(1.0)
    assert result.chosen == ["A", "B"]
    ensembled, _ = read_segmentation(results / "ensembles" / "A+B" / "c1.nii.gz")
    assert ensembled.ravel().tolist() == REFERENCE.tolist()  # voxel 4 (0.7, 0.1): mean 0.4 -> background

    without_ensembles = find_best(TaskResults(results), references, LABELS, allow_ensembles=False)
    assert without_ensembles.chosen == ["B"] and len(without_ensembles.candidates) == 2


def test_configuration_with_a_missing_fold_is_skipped_with_the_reason(tmp_path):
    results, references = make_workspace(tmp_path, {"3d_fullres": HALF})
    write_case(results / "2d" / "fold_0" / "validation", "c1", EXACT)  # better, but only fold 0 trained
    inventory = trained_configurations(TaskResults(results))
    assert inventory.folds == ["0", "1"]
    assert inventory.complete == {"3d_fullres": ["0", "1"]}
    assert "fold 1" in inventory.skipped["2d"] and "autoseg train 2d --fold 1" in inventory.skipped["2d"]

    result = find_best(TaskResults(results), references, LABELS)
    assert result.chosen == ["3d_fullres"] and [c.name for c in result.candidates] == ["3d_fullres"]
    assert "fold 1" in result.skipped["2d"]
    # Asking for fold 0 alone makes 2d complete, and it wins on that fold's case.
    fold_0 = find_best(TaskResults(results), references, LABELS, folds=[0])
    assert fold_0.chosen == ["2d"] and fold_0.folds == ["0"]
    assert sorted(p.name for p in (results / "2d" / "crossval").glob("*.nii.gz")) == ["c1.nii.gz"]
    assert sorted(p.name for p in results.iterdir() if p.name.startswith(".")) == []  # no temporary folders left


def test_fold_with_unfinished_validation_is_named(tmp_path):
    results, _ = make_workspace(tmp_path, {"3d_fullres": EXACT})
    (results / "3d_fullres" / "fold_1" / "validation" / "c2.nii.gz").unlink()
    inventory = trained_configurations(TaskResults(results))
    assert inventory.complete == {}
    assert "lacks 1 of 1 validation cases (c2)" in inventory.skipped["3d_fullres"]


def test_postprocessing_is_decided_on_the_winner(tmp_path):
    results, references = make_workspace(tmp_path, {"3d_fullres": ISLAND, "2d": HALF})
    result = find_best(TaskResults(results), references, LABELS, allow_ensembles=False)
    assert result.chosen == ["3d_fullres"]
    decision = PostprocessingDecision.load(results / "postprocessing.json")
    assert decision.whole_foreground is True
    assert decision.foreground_dice_before == pytest.approx(8 / 9)
    assert decision.foreground_dice_after == pytest.approx(1.0)


def test_nothing_trained_is_a_clear_error(tmp_path):
    results, references = make_workspace(tmp_path, {"3d_fullres": EXACT}, folds=("0",))
    with pytest.raises(WorkspaceError, match=r"no configuration has validation predictions for folds 0-1; "
                                             r"train them first: `autoseg train CONFIG --fold N`"
                                             r"\n  3d_fullres: fold 1 has no .*fold_1/validation"):
        find_best(TaskResults(results), references, LABELS)
    (results / "splits.json").unlink()
    with pytest.raises(WorkspaceError, match="splits.json: not found"):
        find_best(TaskResults(results), references, LABELS)
    with pytest.raises(WorkspaceError, match="no results folder"):
        find_best(TaskResults(tmp_path / "results" / "Other"), references, LABELS)


def test_unknown_fold_is_an_error(tmp_path):
    results, references = make_workspace(tmp_path, {"3d_fullres": EXACT})
    with pytest.raises(AutosegError, match="no fold 5"):
        trained_configurations(TaskResults(results), folds=[5])


def test_find_best_json_round_trips(tmp_path):
    results, references = make_workspace(tmp_path, {"2d": HALF, "3d_fullres": EXACT})
    assert load_choice(TaskResults(results)) is None
    result = find_best(TaskResults(results), references, LABELS)
    assert load_choice(TaskResults(results)) == result
    assert SelectionResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    saved = json.loads((results / "find_best.json").read_text())
    assert saved["schema_version"] == 2 and saved["chosen"] == ["3d_fullres"] and saved["folds"] == ["0", "1"]
    assert saved["candidates"][0]["label_dice"] == {"1": pytest.approx(1.0)}
    saved["schema_version"] = 0
    with pytest.raises(AutosegError, match="schema_version 0"):
        SelectionResult.from_json(saved)


def test_predict_defaults_to_the_choice(tmp_path):
    from autoseg.stages.choice import default_prediction_configurations
    from autoseg.workspace import TaskResults

    results, references = make_workspace(tmp_path, {"A": COMPLEMENT_A, "B": COMPLEMENT_B})
    find_best(TaskResults(results), references, LABELS)
    assert default_prediction_configurations(TaskResults(results), plans=None, checkpoint="final") == ["A", "B"]
    find_best(TaskResults(results), references, LABELS, allow_ensembles=False)
    assert default_prediction_configurations(TaskResults(results), plans=None, checkpoint="final") == ["B"]


def test_picture_distances_are_in_mm_at_the_plans_pixel_spacing(tmp_path):
    from autoseg.io import PSEUDO_3D_Z_SPACING

    picture = Geometry(shape=(1, 1, 8), spacing_zyx=(PSEUDO_3D_Z_SPACING, 1.0, 1.0))
    results, references = make_workspace(tmp_path, {})
    for case_id in ("c1", "c2"):
        (references / f"{case_id}.nii.gz").unlink()
        write_segmentation(REFERENCE.reshape(1, 1, 8), picture, references / f"{case_id}.png")
        for fold, split in enumerate(SPLITS):
            if case_id in split["val"]:
                validation = results / "2d" / f"fold_{fold}" / "validation"
                p = np.asarray(HALF, dtype=np.float32).reshape(1, 1, 8)
                save_probabilities(validation / case_id, np.stack([1 - p, p]).astype(np.float16), picture, labels=[0, 1])
                write_segmentation((p > 0.5).astype(np.int16), picture, validation / f"{case_id}.png")
                (validation / "summary.json").write_text("{}")
    summary_file = results / "2d" / "crossval" / "summary.json"
    in_pixels = find_best(TaskResults(results), references, LABELS, allow_ensembles=False).candidates[0]
    max_distance_in_pixels = json.loads(summary_file.read_text())["mean"]["1"]["MSSD_mm"]
    in_mm = find_best(TaskResults(results), references, LABELS, allow_ensembles=False,
                      pixel_spacing=(0.5, 0.5)).candidates[0]
    max_distance_in_mm = json.loads(summary_file.read_text())["mean"]["1"]["MSSD_mm"]
    assert in_mm.foreground_dice == in_pixels.foreground_dice == pytest.approx(2 / 3)
    # Voxels 2 and 3 are missed: the reference's border voxel 3 lies 2 pixels from the prediction's
    # border voxel 1, which is 1 mm at 0.5 mm per pixel.
    assert max_distance_in_pixels == pytest.approx(2.0) and max_distance_in_mm == pytest.approx(1.0)


def write_mirror_scores(results, configuration, fold, case_id, dice_by_set):
    from autoseg.inference.mirroring import MirrorScores, candidate_mirror_sets

    sets = {name: list(axes) for name, axes in candidate_mirror_sets(3).items()}
    MirrorScores(sets, {case_id: {name: {"1": dice} for name, dice in dice_by_set.items()}}).save(
        TaskResults(results).mirror_scores_file(configuration, fold))


def test_find_best_records_each_configurations_mirror_choice(tmp_path):
    results, references = make_workspace(tmp_path, {"A": COMPLEMENT_A, "B": COMPLEMENT_B})
    # A: pooled over c1 (fold 0) and c2 (fold 1): off 0.9000, axis:0 0.9050, axis:1 0.9105, axis:2 0.9110,
    # all 0.9125 -> axis:1 and axis:2 are within 0.002 with 2 passes; axis:2 has the higher Dice.
    write_mirror_scores(results, "A", "0", "c1", {"off": 0.90, "axis:0": 0.90, "axis:1": 0.911, "axis:2": 0.912,
                                                  "all": 0.915})
    write_mirror_scores(results, "A", "1", "c2", {"off": 0.90, "axis:0": 0.91, "axis:1": 0.910, "axis:2": 0.910,
                                                  "all": 0.910})
    # B: fold 1 has no scores (validated before they existed): no choice.
    write_mirror_scores(results, "B", "0", "c1", {"off": 0.9, "axis:0": 0.9, "axis:1": 0.9, "axis:2": 0.9,
                                                  "all": 0.9})
    result = find_best(TaskResults(results), references, LABELS)
    assert result.chosen == ["A", "B"] and set(result.mirroring) == {"A", "B"}  # none for the ensemble itself
    a = result.mirroring["A"]
    assert (a.chosen, a.mirror_axes) == ("axis:2", [2])
    assert a.foreground_dice == pytest.approx({"off": 0.9, "axis:0": 0.905, "axis:1": 0.9105, "axis:2": 0.911,
                                               "all": 0.9125})
    assert result.mirroring["B"].chosen is None and "fold 1 has no mirror_scores.json" in result.mirroring["B"].note
    saved = json.loads((results / "find_best.json").read_text())
    assert saved["mirroring"]["A"]["chosen"] == "axis:2" and saved["mirroring"]["A"]["mirror_axes"] == [2]
    assert load_choice(TaskResults(results)) == result
    assert "mirror TTA of A: axis:2 (Dice 0.9110; all axes 0.9125)" in (results / "find_best.txt").read_text()


def test_a_version_1_selection_loads_with_no_mirror_choice(tmp_path):
    results, references = make_workspace(tmp_path, {"3d_fullres": EXACT})
    saved = find_best(TaskResults(results), references, LABELS).to_json()
    del saved["mirroring"]
    saved["schema_version"] = 1
    old = SelectionResult.from_json(saved)
    assert old.chosen == ["3d_fullres"] and old.mirroring == {}
