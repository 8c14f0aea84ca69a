"""The fold validation's TTA scores: each candidate mirror set's Dice, from one run of the passes, equals
the Dice of predicting the case with that set alone (the session's small trained fold, one case)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from autoseg.inference.case import PredictionSettings, predict_probabilities, probabilities_to_prediction
from autoseg.inference.mirroring import MirrorScores
from autoseg.inference.model import load_trained_model
from autoseg.io import read_segmentation
from autoseg.preprocessing.store import load_case
from autoseg.workspace import TaskResults
from helpers_training import CONFIGURATION, small_task, trained_small_fold, training_job  # noqa: F401


def foreground(task) -> list[int]:
    return [int(value) for value in task.plans.labels if int(value) != 0]


def dice(segmentation: np.ndarray, reference: np.ndarray, label: int) -> float:
    a, b = segmentation == label, reference == label
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_validation_scores_each_mirror_set_as_predicting_with_it_alone(small_task, trained_small_fold, tmp_path):
    from autoseg.training.validation import validate_fold

    results = TaskResults(tmp_path / "results")
    fold = results.fold_folder(CONFIGURATION, "0")
    fold.mkdir(parents=True)
    shutil.copy(trained_small_fold.folder / "checkpoint_final.pt", fold)
    case_id = training_job(small_task, results.root, fold=0).val_ids[0]
    summary = validate_fold(small_task.plans, CONFIGURATION, results, "0", small_task.data_folder,
                            small_task.reference_folder, [case_id], device="cpu", use_tta=True)

    scores = MirrorScores.load(results.mirror_scores_file(CONFIGURATION, "0"))
    assert scores.sets == {"off": [], "axis:0": [0], "axis:1": [1], "axis:2": [2], "all": [0, 1, 2]}
    assert list(scores.cases) == [case_id]
    model = load_trained_model(results, small_task.plans, CONFIGURATION, folds=["0"], device="cpu")
    data, _, properties = load_case(small_task.data_folder, case_id, mmap=False)
    reference = read_segmentation(small_task.reference_folder / f"{case_id}.nii.gz")[0]
    # Predicting alone with "off" and "axis:2" (3 passes; "all" is checked against the validation's own
    # summary below, the other axes are scored by the same code path).
    for name in ("off", "axis:2"):
        probabilities = predict_probabilities(model, data, PredictionSettings(mirror_axes=tuple(scores.sets[name])))
        segmentation = probabilities_to_prediction(model, probabilities, properties, keep_probabilities=False,
                                                   postprocess=False).segmentation
        expected = {str(label): dice(segmentation, reference, label) for label in foreground(small_task)}
        assert scores.cases[case_id][name] == pytest.approx(expected, abs=1e-12)
    # All axes is what the validation writes and summarises.
    assert scores.cases[case_id]["all"] == pytest.approx(
        {str(label): summary.per_case[0].metrics[str(label)]["Dice"] for label in foreground(small_task)}, abs=1e-12)


def test_validation_without_mirroring_scores_only_off(small_task, trained_small_fold):
    # The session's fold is validated without mirroring (helpers_training).
    results = TaskResults(trained_small_fold.results_folder)
    scores = MirrorScores.load(results.mirror_scores_file(CONFIGURATION, "0"))
    assert scores.sets == {"off": []}
    summary = trained_small_fold.summary
    assert len(scores.cases) == len(summary.per_case) >= 2
    for case in summary.per_case:
        assert scores.cases[case.case_id]["off"] == pytest.approx(
            {str(label): case.metrics[str(label)]["Dice"] for label in foreground(small_task)}, abs=1e-12)


def test_validation_predicts_with_the_settings_chosen_for_its_first_case(small_task, trained_small_fold, tmp_path):
    from autoseg.training.validation import validate_fold

    results = TaskResults(tmp_path / "results")
    fold = results.fold_folder(CONFIGURATION, "0")
    fold.mkdir(parents=True)
    shutil.copy(trained_small_fold.folder / "checkpoint_final.pt", fold)
    case_ids = training_job(small_task, results.root, fold=0).val_ids
    asked = []

    def settings_for(model, first_case):
        asked.append((model, first_case))
        return PredictionSettings(runtime="onnxruntime")

    validate_fold(small_task.plans, CONFIGURATION, results, "0", small_task.data_folder, small_task.reference_folder,
                  case_ids, device="cpu", use_tta=False, settings_for=settings_for)
    assert len(asked) == 1 and len(case_ids) == 2  # asked once, for the first case
    model, first_case = asked[0]
    np.testing.assert_array_equal(first_case, load_case(small_task.data_folder, case_ids[0], mmap=False)[0])
    assert list(model.runtime_networks) == ["onnxruntime fp32"]  # the cases ran on the runtime it chose
