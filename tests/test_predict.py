"""Prediction: geometry round trip with an oracle network, folder behaviour through the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.fingerprint import extract_fingerprint
from autoseg.inference.predictor import PredictionSettings, TrainedModel, predict_image
from autoseg.io import Geometry, read_image, read_segmentation, write_image, write_segmentation
from autoseg.planning import plan_experiment

runner = CliRunner()
# Thick axis in the middle (y), a rotated direction and an offset origin: every part of the
# geometry bookkeeping (transpose, crop, resample, restore) is exercised.
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def block_case(shape, spacing, block):
    image = np.full(shape, 10.0, np.float32)
    label = np.zeros(shape, np.uint8)
    image[block] = 100.0
    label[block] = 1
    geometry = Geometry(shape=shape, spacing_zyx=spacing, origin_xyz=(-40.0, 12.5, 7.0), direction=ROTATED)
    return image, label, geometry


@pytest.fixture(scope="module")
def block_plans(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks") / "Task800_Blocks"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for index, spacing in enumerate([(0.8, 3.0, 0.7), (0.9, 3.0, 0.9)]):
        image, label, geometry = block_case((40, 12, 36), spacing, np.s_[10:30, 3:8, 8:20])
        write_image(image, geometry, root / "imagesTr" / f"b{index}.nii.gz")
        write_segmentation(label, geometry, root / "labelsTr" / f"b{index}.nii.gz")
        training.append({"image": f"./imagesTr/b{index}.nii.gz", "label": f"./labelsTr/b{index}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Task800_Blocks", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "block"},
        "training": training}))
    return plan_experiment(extract_fingerprint(load_dataset(root)))


def threshold_network(x):
    """Logits favouring foreground where the normalized intensity is above 0: translation- and
    mirror-equivariant, so sliding windows and TTA must give back exactly the thresholded image."""
    return torch.cat([-10 * x[:, :1], 10 * x[:, :1]], dim=1)


def oracle_model(plans, configuration_name="3d_fullres"):
    configuration = plans.configuration(configuration_name)
    return TrainedModel(plans, configuration_name, configuration, [threshold_network], ["oracle"],
                        torch.device("cpu"), [0, 1])


def test_plan_transposes_the_thick_axis_first(block_plans):
    assert block_plans.transpose_forward[0] == 1


@pytest.mark.parametrize("use_tta", [False, True])
def test_prediction_lands_in_the_input_geometry(block_plans, use_tta):
    image, label, geometry = block_case((44, 10, 33), (0.85, 3.3, 0.75), np.s_[5:25, 2:7, 10:30])
    prediction = predict_image(oracle_model(block_plans), image[None], geometry,
                               PredictionSettings(use_tta=use_tta))
    assert prediction.geometry == geometry
    assert prediction.segmentation.shape == label.shape
    overlap = np.logical_and(prediction.segmentation == 1, label == 1).sum()
    dice = 2 * overlap / ((prediction.segmentation == 1).sum() + label.sum())
    assert dice > 0.95
    assert np.allclose(np.argwhere(prediction.segmentation == 1).mean(0), np.argwhere(label == 1).mean(0), atol=0.5)


def test_probabilities_sum_to_one(block_plans):
    image, _, geometry = block_case((40, 12, 36), (0.8, 3.0, 0.7), np.s_[10:30, 3:8, 8:20])
    prediction = predict_image(oracle_model(block_plans), image[None], geometry,
                               PredictionSettings(use_tta=False, save_probabilities=True))
    assert prediction.probabilities.shape == (2, 40, 12, 36)
    np.testing.assert_allclose(prediction.probabilities.sum(0), 1.0, atol=1e-5)


def test_wrong_channel_count_is_a_clear_error(block_plans):
    image, _, geometry = block_case((40, 12, 36), (0.8, 3.0, 0.7), np.s_[10:30, 3:8, 8:20])
    with pytest.raises(Exception, match="2 channel\\(s\\), but the model was trained on 1"):
        predict_image(oracle_model(block_plans), np.stack([image, image]), geometry)


# --------------------------------------------------------------------------------- CLI, folders


@pytest.fixture(scope="module")
def trained_workspace(tmp_path_factory, block_plans):
    """A workspace whose 3d_fullres 'training' is an untrained network saved as a checkpoint:
    enough to exercise loading, folders, skipping and failures through the CLI."""
    from autoseg.network import build_network
    from autoseg.training.checkpoint import save_checkpoint
    from autoseg.training.trainer import identity_of_configuration

    home = tmp_path_factory.mktemp("ws")
    name = block_plans.dataset_name
    block_plans.save(home / "preprocessed" / name / "plans.json")
    (home / "current_task.json").write_text(json.dumps({"task": name, "dataset_folder": None}))
    network = build_network(block_plans.configuration("3d_fullres").architecture)
    for fold in ("0", "1"):
        save_checkpoint({"network_weights": network.state_dict(), "optimizer_state": {}, "scaler_state": None,
                         "epoch": 1, "planned_epochs": 1, "log": {}, "best_ema": 0.0,
                         "identity": identity_of_configuration(block_plans, "3d_fullres"),
                         "inference": {"precision": "fp32"}},
                        home / "results" / name / "3d_fullres" / f"fold_{fold}" / "checkpoint_final.pt")
    inputs = home / "in"
    inputs.mkdir()
    for index in range(3):
        image, _, geometry = block_case((24, 8, 20), (0.8, 3.0, 0.7), np.s_[5:15, 2:6, 5:15])
        write_image(image, geometry, inputs / f"case{index}.nii.gz")
    return home


def run(home, *arguments):
    return runner.invoke(app, ["--home", str(home), "predict", *arguments])


def test_folder_prediction_skips_existing_and_reports_broken_cases(trained_workspace, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in (trained_workspace / "in").iterdir():
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti")
    output = tmp_path / "out"
    result = run(trained_workspace, str(inputs), str(output), "--no-tta")
    assert result.exit_code == 1
    assert "broken" in result.output and "Traceback" not in result.output
    written = sorted(p.name for p in output.glob("*.nii.gz"))
    assert written == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    segmentation, geometry = read_segmentation(output / "case0.nii.gz")
    assert geometry.agrees_with(read_image(inputs / "case0.nii.gz")[1]) is None
    (inputs / "broken.nii.gz").unlink()
    again = run(trained_workspace, str(inputs), str(output), "--no-tta")
    assert again.exit_code == 0, again.output
    assert "3 skipped" in again.output and "0 written" in again.output


def test_parts_split_a_batch_without_overlap(trained_workspace, tmp_path):
    for part in ("0/2", "1/2"):
        result = run(trained_workspace, str(trained_workspace / "in"), str(tmp_path / "out"), "--no-tta",
                     "--part", part, "--folds", "0")
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz",
                                                                          "case2.nii.gz"]


def test_missing_fold_is_a_clear_error(trained_workspace, tmp_path):
    result = run(trained_workspace, str(trained_workspace / "in"), str(tmp_path / "out"), "--folds", "3")
    assert result.exit_code == 1
    assert "fold_3" in result.output and "Traceback" not in result.output
