"""Prediction: geometry round trip with an oracle network, folder behaviour through the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autoseg import api
from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.fingerprint import extract_fingerprint
from autoseg.inference.case import PredictionSettings, predict_image
from autoseg.inference.model import TrainedModel
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


def block_dice(prediction, label) -> float:
    return 2 * np.logical_and(prediction == 1, label == 1).sum() / ((prediction == 1).sum() + (label == 1).sum())


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
                               PredictionSettings(mirror_axes=None if use_tta else ()))
    assert prediction.geometry == geometry
    assert prediction.segmentation.shape == label.shape
    overlap = np.logical_and(prediction.segmentation == 1, label == 1).sum()
    dice = 2 * overlap / ((prediction.segmentation == 1).sum() + label.sum())
    assert dice > 0.95
    assert np.allclose(np.argwhere(prediction.segmentation == 1).mean(0), np.argwhere(label == 1).mean(0), atol=0.5)


def test_probabilities_sum_to_one(block_plans):
    image, _, geometry = block_case((40, 12, 36), (0.8, 3.0, 0.7), np.s_[10:30, 3:8, 8:20])
    prediction = predict_image(oracle_model(block_plans), image[None], geometry,
                               PredictionSettings(mirror_axes=(), save_probabilities=True))
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
    from autoseg.checkpoint import save_checkpoint
    from autoseg.checkpoint import identity_of_configuration

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
    for part in ((0, 2), (1, 2)):
        summary = api.predict(trained_workspace / "in", tmp_path / "out", tta="off", part=part, folds=["0"],
                              home=trained_workspace)
        assert not summary.failures, summary.failures
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz",
                                                                          "case2.nii.gz"]


def test_missing_fold_is_a_clear_error(trained_workspace, tmp_path):
    result = run(trained_workspace, str(trained_workspace / "in"), str(tmp_path / "out"), "--folds", "3")
    assert result.exit_code == 1
    assert "fold_3" in result.output and "Traceback" not in result.output


def test_overwrite_rewrites_and_progress_reports_cases_and_windows(trained_workspace, tmp_path):
    output = tmp_path / "out"
    first = run(trained_workspace, str(trained_workspace / "in"), str(output), "--no-tta", "--folds", "0")
    assert first.exit_code == 0, first.output
    # Cases done and windows per second, per case and for the batch.
    assert "case0: [1/3] written (" in first.output and "windows/s)" in first.output
    assert "3 written, 0 skipped, 0 failed" in first.output and "windows/s)" in first.output.splitlines()[-1]
    stamp = (output / "case0.nii.gz").stat().st_mtime_ns
    again = run(trained_workspace, str(trained_workspace / "in"), str(output), "--no-tta", "--folds", "0",
                "--overwrite")
    assert again.exit_code == 0 and "3 written, 0 skipped" in again.output
    assert (output / "case0.nii.gz").stat().st_mtime_ns != stamp


def test_per_channel_files_and_saved_probabilities(trained_workspace, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "scan_0000.nii.gz").write_bytes((trained_workspace / "in" / "case0.nii.gz").read_bytes())
    summary = api.predict(inputs, tmp_path / "out", tta="off", save_probabilities=True, home=trained_workspace)
    assert not summary.failures, summary.failures
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan.json", "scan.nii.gz", "scan.npz"]
    probabilities = np.load(tmp_path / "out" / "scan.npz")["probabilities"]
    segmentation, geometry = read_segmentation(tmp_path / "out" / "scan.nii.gz")
    assert probabilities.shape == (2, *geometry.shape)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(probabilities, 0), segmentation)


@pytest.fixture
def small_network_workspace(tmp_path, block_plans):
    """A workspace like `trained_workspace` (one untrained fold, one input case) with a small network, so
    that the mirror passes of several predictions stay cheap; returns (home, its task results folder)."""
    from autoseg.checkpoint import identity_of_configuration, save_checkpoint
    from autoseg.network import build_network
    from helpers_training import small_plans

    home, name = tmp_path / "ws", block_plans.dataset_name
    plans = small_plans(block_plans, patch_size=(16, 8, 16), base_features=4)
    plans.save(home / "preprocessed" / name / "plans.json")
    (home / "current_task.json").write_text(json.dumps({"task": name, "dataset_folder": None}))
    torch.manual_seed(0)
    network = build_network(plans.configuration("3d_fullres").architecture)
    save_checkpoint({"network_weights": network.state_dict(), "optimizer_state": {}, "scaler_state": None,
                     "epoch": 1, "planned_epochs": 1, "log": {}, "best_ema": 0.0,
                     "identity": identity_of_configuration(plans, "3d_fullres"), "inference": {"precision": "fp32"}},
                    home / "results" / name / "3d_fullres" / "fold_0" / "checkpoint_final.pt")
    image, _, geometry = block_case((24, 8, 20), (0.8, 3.0, 0.7), np.s_[5:15, 2:6, 5:15])
    write_image(image, geometry, home / "in" / "case0.nii.gz")
    return home, home / "results" / name


def test_tta_auto_predicts_with_the_set_find_best_recorded(small_network_workspace, tmp_path):
    from autoseg.mirror_choice import MirroringChoice
    from autoseg.selection import Candidate, SelectionResult
    from autoseg.workspace import TaskResults

    home, results = small_network_workspace

    def predict(name: str, *options: str):
        result = run(home, str(home / "in"), str(tmp_path / name), "--save-probabilities", *options)
        assert result.exit_code == 0, result.output
        return result.output, np.load(tmp_path / name / "case0.npz")["probabilities"]

    default_output, default = predict("default")
    assert "mirror TTA all for 3d_fullres (default: find-best recorded no TTA choice for 3d_fullres)" in default_output
    SelectionResult(["3d_fullres"], [Candidate(["3d_fullres"], 0.9, {"1": 0.9}, "3d_fullres/crossval")], ["0"],
                    mirroring={"3d_fullres": MirroringChoice("axis:1", [1], {"off": 0.85, "axis:1": 0.9,
                                                                             "all": 0.901})}).save(TaskResults(results))
    auto_output, auto = predict("auto")
    assert ("mirror TTA axis:1 for 3d_fullres (find-best's choice: cross-validation Dice 0.9000, all axes 0.9010)"
            in auto_output)
    np.testing.assert_array_equal(auto, predict("axis_1", "--tta", "axis:1")[1])
    all_axes = predict("all", "--tta", "all")[1]
    np.testing.assert_array_equal(default, all_axes)
    assert not np.array_equal(auto, all_axes)
    off_output, off = predict("off", "--no-tta")
    assert "mirror TTA off for 3d_fullres (--tta off)" in off_output and not np.array_equal(off, auto)


def test_contradicting_or_unknown_tta_is_refused(trained_workspace, tmp_path):
    contradiction = run(trained_workspace, str(trained_workspace / "in"), str(tmp_path / "a"), "--no-tta",
                        "--tta", "all")
    assert contradiction.exit_code == 1 and "--no-tta contradicts --tta all" in contradiction.output
    unknown = run(trained_workspace, str(trained_workspace / "in"), str(tmp_path / "b"), "--tta", "axis:x")
    assert unknown.exit_code == 1 and "--tta 'axis:x': expected auto, off, all or axis:N" in unknown.output
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------- input layout


def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_input_files_per_channel_per_case_and_ids_that_look_like_channels(tmp_path):
    from autoseg.inference.folder import group_input_files, missing_channel_files

    two = touch(tmp_path / "two", "a_0000.nii.gz", "a_0001.nii.gz", "b_0001.nii.gz", "b_0000.nii.gz",
                "c_0000.nii.gz", "whole.nii.gz", ".hidden_0000.nii.gz", "notes.txt")
    cases = group_input_files(two, num_channels=2)
    assert {case: [p.name for p in files] for case, files in cases.items()} == {
        "a": ["a_0000.nii.gz", "a_0001.nii.gz"], "b": ["b_0000.nii.gz", "b_0001.nii.gz"],
        "c": ["c_0000.nii.gz"], "whole": ["whole.nii.gz"]}
    assert missing_channel_files("c", cases["c"], 2) == ["c_0001.nii.gz"]
    assert missing_channel_files("a", cases["a"], 2) == [] and missing_channel_files("whole", cases["whole"], 2) == []
    # One channel: scan_0001, scan_0002 are case ids, not channels of a case "scan".
    ids = touch(tmp_path / "ids", "scan_0001.nii.gz", "scan_0002.nii.gz")
    assert sorted(group_input_files(ids, num_channels=1)) == ["scan_0001", "scan_0002"]
    layout = touch(tmp_path / "layout", "scan_0000.nii.gz", "other_0000.nii.gz")
    assert sorted(group_input_files(layout, num_channels=1)) == ["other", "scan"]


# --------------------------------------------------------------------------------- restoring


def test_running_argmax_by_hand():
    from autoseg.inference.case import _argmax_labels

    classes = [np.array([0.5, 0.2, 0.3, 0.4]), np.array([0.5, 0.7, 0.3, 0.1]), np.array([0.0, 0.1, 0.4, 0.5])]
    # Ties go to the first class, as np.argmax; label values replace class indices.
    assert _argmax_labels(iter(classes), [0, 1, 4], (4,)).tolist() == [0, 1, 4, 4]


def test_restoring_class_by_class_equals_restoring_all_then_argmax(block_plans):
    from autoseg.inference.case import _restored_labels
    from autoseg.preprocessing.pipeline import preprocess_case, restore_to_original

    image, _, geometry = block_case((30, 9, 26), (0.85, 3.3, 0.75), np.s_[5:25, 2:7, 10:20])
    image[:, :, :3] = 0  # something to crop away
    configuration = block_plans.configuration("3d_fullres")
    data, _, properties = preprocess_case(
        image[None], None, geometry, transpose_forward=block_plans.transpose_forward,
        target_spacing=configuration.spacing, normalization=configuration.normalization,
        use_mask_for_norm=configuration.use_mask_for_norm,
        intensity_stats={k: vars(v) for k, v in block_plans.intensity_per_channel.items()})
    assert properties.crop_box[2][0] == 3 and list(data.shape[1:]) != list(image.shape)  # cropped, resampled
    logits = np.random.default_rng(0).normal(size=(3, *data.shape[1:])).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    expected = np.array([0, 1, 2], np.int16)[np.argmax(restore_to_original(probabilities, properties,
                                                                           is_segmentation=False), 0)]
    np.testing.assert_array_equal(_restored_labels(probabilities, properties, [0, 1, 2]), expected)


# --------------------------------------------------------------------------------- Python API


@pytest.fixture(scope="module")
def segmenter(trained_workspace):
    """The API on the CLI test workspace, its networks replaced by the threshold oracle."""
    from autoseg.api import Segmenter

    segmenter = Segmenter(trained_workspace, settings=PredictionSettings(mirror_axes=()))
    assert segmenter.model.folds == ["0", "1"]  # every trained fold, loaded once
    segmenter.model.networks = [threshold_network]
    return segmenter


def test_api_predicts_a_simpleitk_image_in_its_own_geometry(segmenter):
    import SimpleITK as sitk

    image, label, geometry = block_case((44, 10, 33), (0.85, 3.3, 0.75), np.s_[5:25, 2:7, 10:30])
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing(tuple(reversed(geometry.spacing_zyx)))
    itk.SetOrigin(geometry.origin_xyz)
    itk.SetDirection(geometry.direction)
    result = segmenter.predict(itk)
    for name in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(result, name)() == pytest.approx(getattr(itk, name)())
    assert block_dice(sitk.GetArrayFromImage(result), label) > 0.95
    # The same image as a vector image (one component per channel) and as 4D (channels along the
    # 4th axis, as MSD files): same geometry, same segmentation.
    vector = sitk.Compose(itk)
    four_d = sitk.JoinSeries([itk])
    for other in (vector, four_d):
        other_result = segmenter.predict(other)
        for name in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(other_result, name)() == pytest.approx(getattr(itk, name)())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(other_result), sitk.GetArrayFromImage(result))


def test_api_predicts_arrays_and_paths(segmenter, trained_workspace):
    image, label, geometry = block_case((40, 12, 36), (0.8, 3.0, 0.7), np.s_[10:30, 3:8, 8:20])
    labels = segmenter.predict(image, spacing=geometry.spacing_zyx)
    assert labels.shape == label.shape and block_dice(labels, label) > 0.95  # resampled borders may move
    np.testing.assert_array_equal(segmenter.predict(image[None], spacing=geometry.spacing_zyx), labels)
    with pytest.raises(Exception, match="spacing"):
        segmenter.predict(image)
    path = trained_workspace / "in" / "case0.nii.gz"
    from_path = segmenter.predict(path)
    assert from_path.geometry == read_image(path)[1] and from_path.segmentation.shape == from_path.geometry.shape
    array, geometry = read_image(path)
    np.testing.assert_array_equal(segmenter.predict(array, spacing=geometry.spacing_zyx), from_path.segmentation)
    assert (from_path.segmentation == 1).any()


def test_2d_configuration_predicts_slice_by_slice_in_the_input_geometry(block_plans):
    assert "2d" in block_plans.configurations
    image, label, geometry = block_case((44, 10, 33), (0.85, 3.3, 0.75), np.s_[5:25, 2:7, 10:30])
    passes = []

    def counting_2d(batch):
        assert batch.ndim == 4  # (B, C, y, x): a 2D network
        passes.append(len(batch))
        return threshold_network(batch)

    model = oracle_model(block_plans, "2d")
    model.networks = [counting_2d]
    prediction = predict_image(model, image[None], geometry, PredictionSettings(batch_windows=64))
    assert prediction.geometry == geometry and block_dice(prediction.segmentation, label) > 0.95
    assert sum(passes) % 4 == 0  # 4 mirror passes of every slice window in 2D


def test_rerun_with_probabilities_redoes_cases_written_without_them(trained_workspace, tmp_path):
    output = tmp_path / "out"
    assert run(trained_workspace, str(trained_workspace / "in"), str(output), "--no-tta", "--part", "0/3").exit_code == 0
    again = run(trained_workspace, str(trained_workspace / "in"), str(output), "--no-tta", "--part", "0/3",
                "--save-probabilities")
    assert again.exit_code == 0 and "1 written, 0 skipped" in again.output
    assert (output / "case0.npz").is_file()


def test_fold_checkpoints_are_those_of_the_task_results(tmp_path):
    from autoseg.errors import CheckpointError, WorkspaceError
    from autoseg.inference.model import fold_checkpoints
    from autoseg.workspace import TaskResults

    results = TaskResults(tmp_path)
    fold_0 = tmp_path / "3d_fullres" / "fold_0"
    fold_0.mkdir(parents=True)
    (fold_0 / "checkpoint_final.pt").write_bytes(b"")
    assert fold_checkpoints(results, "3d_fullres", None, "final") == [("0", fold_0 / "checkpoint_final.pt")]
    assert fold_checkpoints(results, "3d_fullres", ["0"], "final") == [("0", fold_0 / "checkpoint_final.pt")]
    with pytest.raises(CheckpointError, match="no trained fold has checkpoint_best.pt"):
        fold_checkpoints(results, "3d_fullres", None, "best")
    with pytest.raises(CheckpointError, match=r"fold_1/checkpoint_final.pt: not found \(fold 1 not trained"):
        fold_checkpoints(results, "3d_fullres", ["0", "1"], "final")
    with pytest.raises(WorkspaceError, match="--checkpoint 'worst': expected one of"):
        fold_checkpoints(results, "3d_fullres", None, "worst")


def test_a_loaded_model_is_no_ensemble_member_until_told(block_plans):
    model = oracle_model(block_plans)
    assert model.postprocessing is None and model.ensemble_postprocessing is None
