"""End to end: the session's short training on the small synthetic task, then `predict_folder` on unseen cases
read from files must reach the Dice the fold validation measured (within a margin).

The validation Dice is measured on preprocessed held-out cases; the test cases go through the
whole user path instead: NIfTI files -> read -> preprocess -> sliding window with mirror TTA ->
restore to the original grid -> written -> read back and scored against their labels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from autoseg.demo import make_demo_dataset
from autoseg.inference.case import PredictionSettings
from autoseg.inference.folder import predict_folder
from autoseg.inference.model import load_trained_model
from autoseg.io import read_image, read_segmentation
from autoseg.workspace import TaskResults
from helpers_training import CONFIGURATION, SMALL_SPEC, small_task, trained_small_fold  # noqa: F401

MIN_VALIDATION_DICE = 0.7
# Test cases come from the same generator (another seed): they may score a little lower or higher.
DICE_MARGIN = 0.1


@pytest.fixture(scope="module")
def trained_model_and_validation(small_task, trained_small_fold):
    """(model of the session's learning run, its validation organ Dice, seconds of training and validation)."""
    run = trained_small_fold
    model = load_trained_model(TaskResults(run.results_folder), small_task.plans, CONFIGURATION, folds=["0"],
                               device="cpu")
    return model, run.summary.mean["1"]["Dice"], run.seconds


def organ_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    a, b = prediction == 1, reference == 1
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_predicted_unseen_cases_reach_the_validation_dice(trained_model_and_validation, tmp_path):
    model, validation_dice, seconds = trained_model_and_validation
    unseen = make_demo_dataset(tmp_path / "raw", "Task900_Demo", replace(SMALL_SPEC, cases=2, seed=123))
    summary = predict_folder(model, unseen / "imagesTr", tmp_path / "predicted", PredictionSettings())
    assert not summary.failures and len(summary.written) == 2
    dices = []
    for image_file in sorted((unseen / "imagesTr").glob("*.nii.gz")):
        prediction, geometry = read_segmentation(tmp_path / "predicted" / image_file.name)
        reference, reference_geometry = read_segmentation(unseen / "labelsTr" / image_file.name)
        assert geometry == read_image(image_file)[1] and geometry.agrees_with(reference_geometry) is None
        dices.append(organ_dice(prediction, reference))
    print(f"organ Dice: validation {validation_dice:.3f}, unseen test cases {np.round(dices, 3).tolist()} "
          f"(training + validation {seconds:.0f} s)")
    assert validation_dice > MIN_VALIDATION_DICE
    assert np.mean(dices) > validation_dice - DICE_MARGIN
