"""dataset.json `pixel_spacing` of picture datasets: validated by the dataset layer, used by every read
of the dataset's pictures (check, fingerprint, preprocessing), by prediction (the plan's pixel size,
so nothing is resampled) and by fold validation and `autoseg evaluate` (surface distances in mm)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.demo import DemoSpec, make_demo_dataset
from autoseg.errors import DatasetError
from autoseg.evaluation import evaluate_folder
from autoseg.fingerprint import extract_fingerprint
from autoseg.io import PSEUDO_3D_Z_SPACING, read_image, read_segmentation
from autoseg.planning import plan_experiment
from autoseg.planning.plans import Plans
from autoseg.workspace import TaskResults, Workspace

TASK = "Task903_Spaced"


def set_pixel_spacing(dataset: Path, value) -> Path:
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["pixel_spacing"] = value
    (dataset / "dataset.json").write_text(json.dumps(meta))
    return dataset


def write_mask(mask: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(path))
    return path


def run_cli(*args, expect_ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if expect_ok:
        assert result.exit_code == 0, f"autoseg {' '.join(map(str, args))} failed:\n{result.output}"
    return result


def small_plan(plans: Plans) -> Plans:
    """The 2d configuration shrunk to a 3-stage U-Net of 4..16 features on 32 x 32 patches (CPU-sized)."""
    data = plans.to_json()
    configuration = data["configurations"]["2d"]
    configuration.update(patch_size=[32, 32], batch_size=2)
    configuration["architecture"].update(features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3]] * 3,
                                         strides=[[1, 1], [2, 2], [2, 2]])
    return Plans.from_json(data)


@pytest.fixture(scope="module")
def spaced(tmp_path_factory) -> Path:
    """4 RGB demo pictures of about 32 x 32 whose dataset.json says pixel_spacing 0.5 (read-only)."""
    raw = tmp_path_factory.mktemp("raw")
    dataset = make_demo_dataset(raw, TASK, DemoSpec(cases=4, shape=(1, 32, 32), two_d=True, test_cases=0))
    return set_pixel_spacing(dataset, 0.5)


# ------------------------------------------------------------------------------------ dataset layer


def test_pixel_spacing_reaches_every_case_and_the_picture_reads(spaced):
    dataset = load_dataset(spaced)
    assert dataset.pixel_spacing == (0.5, 0.5)  # one number means both axes
    assert all(case.pixel_spacing == (0.5, 0.5) for case in dataset.cases)
    case = dataset.cases[0]
    assert read_image(case.image_files, case.pixel_spacing)[1].spacing_zyx == (PSEUDO_3D_Z_SPACING, 0.5, 0.5)
    assert read_segmentation(case.label_file, case.pixel_spacing)[1].spacing_zyx == (PSEUDO_3D_Z_SPACING, 0.5, 0.5)
    assert read_image(case.image_files)[1].spacing_zyx == (PSEUDO_3D_Z_SPACING, 1.0, 1.0)  # default 1 x 1


def test_y_and_x_spacings_are_kept_in_that_order(spaced, tmp_path):
    import shutil

    dataset = load_dataset(set_pixel_spacing(Path(shutil.copytree(spaced, tmp_path / "d")), [0.5, 0.25]))
    case = dataset.cases[0]
    assert case.pixel_spacing == (0.5, 0.25)
    assert read_image(case.image_files, case.pixel_spacing)[1].spacing_zyx == (PSEUDO_3D_Z_SPACING, 0.5, 0.25)


def test_volumes_ignore_a_pixel_spacing(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    image.SetSpacing((0.7, 0.8, 2.5))
    sitk.WriteImage(image, str(tmp_path / "v.nii.gz"))
    assert read_image(tmp_path / "v.nii.gz", (0.5, 0.5))[1].spacing_zyx == pytest.approx((2.5, 0.8, 0.7))


def test_fingerprint_median_spacing_is_the_stated_pixel_spacing(spaced):
    fingerprint = extract_fingerprint(load_dataset(spaced))
    assert fingerprint.median_spacing == [PSEUDO_3D_Z_SPACING, 0.5, 0.5]
    assert fingerprint.is_2d_images
    assert all(case.spacing == [PSEUDO_3D_Z_SPACING, 0.5, 0.5] for case in fingerprint.cases)


@pytest.mark.parametrize("value", [0, -0.5, math.inf, math.nan, "0.5", [0.5], [0.5, 0.5, 0.5], True, [0.5, None]])
def test_check_rejects_a_bad_pixel_spacing_naming_the_field(spaced, tmp_path, value):
    import shutil

    dataset = set_pixel_spacing(Path(shutil.copytree(spaced, tmp_path / "d")), value)
    result = run_cli("--home", tmp_path / "home", "check", dataset, expect_ok=False)
    assert result.exit_code != 0
    message = result.output.strip().splitlines()[-1]
    assert "dataset.json" in message and "'pixel_spacing'" in message, message


def test_pixel_spacing_of_a_volume_dataset_is_an_error(tmp_path):
    dataset = make_demo_dataset(tmp_path, "Task904_Vol", DemoSpec(cases=2, shape=(8, 12, 12), test_cases=0))
    set_pixel_spacing(dataset, [0.5, 0.5])
    with pytest.raises(DatasetError, match=r"dataset.json: 'pixel_spacing' is only for pictures.*\.nii\.gz"):
        load_dataset(dataset)


# ---------------------------------------------------------------------------------------- evaluation


def shifted_squares(tmp_path: Path) -> tuple[Path, Path]:
    """A 10 x 10 reference square and a prediction shifted by 4 pixels along x, as PNG masks."""
    predictions, references = tmp_path / "pred", tmp_path / "ref"
    predictions.mkdir(), references.mkdir()
    reference = np.zeros((30, 30), np.uint8)
    reference[10:20, 8:18] = 1
    write_mask(reference, references / "sq.png")
    write_mask(np.roll(reference, 4, axis=1), predictions / "sq.png")
    return predictions, references


def test_hd95_of_a_shifted_square_is_half_the_pixel_value_at_0_5_mm(tmp_path):
    predictions, references = shifted_squares(tmp_path)
    in_pixels = evaluate_folder(predictions, references, {0: "background", 1: "square"})
    in_mm = evaluate_folder(predictions, references, {0: "background", 1: "square"}, pixel_spacing=(0.5, 0.5))
    assert in_pixels.mean["1"]["MSSD_mm"] == pytest.approx(4.0)  # the shifted edges lie 4 pixels apart
    assert in_pixels.mean["1"]["HD95_mm"] == pytest.approx(4.0)
    for metric in ("HD95_mm", "ASSD_mm", "MSSD_mm"):
        assert in_mm.mean["1"][metric] == pytest.approx(in_pixels.mean["1"][metric] / 2)
    assert in_mm.mean["1"]["Dice"] == in_pixels.mean["1"]["Dice"] == pytest.approx(0.6)


def test_evaluate_takes_the_pixel_spacing_from_the_task_or_the_option(spaced, tmp_path):
    predictions, references = shifted_squares(tmp_path)
    home = tmp_path / "home"
    result = run_cli("--home", home, "evaluate", predictions, references, "--task", spaced)
    assert "0.5 x 0.5 mm" in result.output
    assert json.loads((predictions / "summary.json").read_text())["mean"]["1"]["HD95_mm"] == pytest.approx(2.0)
    run_cli("--home", home, "evaluate", predictions, references, "--labels", "1", "--pixel-spacing", "0.25")
    assert json.loads((predictions / "summary.json").read_text())["mean"]["1"]["HD95_mm"] == pytest.approx(1.0)
    run_cli("--home", home, "evaluate", predictions, references, "--labels", "1")  # no dataset: pixels
    assert json.loads((predictions / "summary.json").read_text())["mean"]["1"]["HD95_mm"] == pytest.approx(4.0)
    bad = run_cli("--home", home, "evaluate", predictions, references, "--labels", "1", "--pixel-spacing", "0,1",
                  expect_ok=False)
    assert bad.exit_code != 0 and "--pixel-spacing" in bad.output


# ---------------------------------------------------------------------- preprocess, predict, validate


@pytest.fixture(scope="module")
def trained(spaced, tmp_path_factory):
    """(home, plans, the task's results) of `spaced`, preprocessed, with a 2d fold-0 checkpoint of an
    untrained network whose head says "foreground" everywhere (so every surface distance is finite)."""
    import torch

    from autoseg.network import build_network
    from autoseg.preprocessing.task import preprocess_task
    from autoseg.checkpoint import save_checkpoint
    from autoseg.checkpoint import identity_of_configuration

    home = tmp_path_factory.mktemp("home")
    dataset = load_dataset(spaced)
    plans = small_plan(plan_experiment(extract_fingerprint(dataset)))
    summaries = preprocess_task(dataset, plans, Workspace(home), TASK, workers=0)
    assert not any(s.failures for s in summaries.values())
    network = build_network(plans.configuration("2d").architecture)
    network.deep_supervision = False
    with torch.no_grad():
        head = network.segmentation_heads[-1]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 10.0]))
    save_checkpoint({"network_weights": network.state_dict(), "identity": identity_of_configuration(plans, "2d"),
                     "inference": {}}, home / "results" / TASK / "2d" / "fold_0" / "checkpoint_final.pt")
    return home, plans, TaskResults(home / "results" / TASK)


def test_preprocessing_keeps_the_pictures_at_their_stated_spacing(trained, spaced):
    home, plans, _ = trained
    assert plans.original_median_spacing[1:] == [0.5, 0.5]
    assert plans.configuration("2d").spacing[1:] == [0.5, 0.5]
    case_id = load_dataset(spaced).cases[0].case_id
    properties = json.loads((home / "preprocessed" / TASK / "2d" / f"{case_id}.json").read_text())
    assert properties["original_geometry"]["spacing_zyx"] == [PSEUDO_3D_Z_SPACING, 0.5, 0.5]
    assert properties["shape_after_resampling"][1:] == properties["shape_after_crop"][1:]  # not resampled


def test_a_picture_given_to_predict_is_read_at_the_planned_spacing(trained, spaced, tmp_path):
    import shutil

    from autoseg.inference.case import PredictionSettings
    from autoseg.inference.folder import _read_and_preprocess, predict_folder
    from autoseg.inference.model import load_trained_model

    _, plans, results = trained
    model = load_trained_model(results, plans, "2d", folds=["0"], device="cpu")
    assert model.pixel_spacing == (0.5, 0.5)
    inputs = tmp_path / "in"
    inputs.mkdir()
    picture = shutil.copy(load_dataset(spaced).cases[1].image_files[0], inputs / "photo.png")
    _, properties = _read_and_preprocess(model, [Path(picture)], "photo", PredictionSettings())
    assert list(properties.shape_after_resampling[1:]) == list(properties.shape_after_crop[1:])  # no resampling

    summary = predict_folder(model, inputs, tmp_path / "out", PredictionSettings(mirror_axes=()))
    assert not summary.failures
    written = sitk.ReadImage(str(tmp_path / "out" / "photo.png"))
    assert written.GetSize() == sitk.ReadImage(str(picture)).GetSize()


def test_fold_validation_reports_surface_distances_in_mm(trained, spaced):
    from autoseg.training.validation import validate_fold

    home, plans, results = trained
    val_ids = [case.case_id for case in load_dataset(spaced).cases[:2]]
    references = home / "preprocessed" / TASK / "gt_segmentations"
    summary = validate_fold(plans, "2d", results, "0", home / "preprocessed" / TASK / "2d", references, val_ids,
                            device="cpu", use_tta=False)
    validation = home / "results" / TASK / "2d" / "fold_0" / "validation"
    in_pixels = evaluate_folder(validation, references, {0: "background", 1: "polyp"}, case_ids=val_ids)
    assert math.isfinite(in_pixels.mean["1"]["HD95_mm"]) and in_pixels.mean["1"]["HD95_mm"] > 1
    for metric in ("HD95_mm", "ASSD_mm", "MSSD_mm"):
        assert summary.mean["1"][metric] == pytest.approx(in_pixels.mean["1"][metric] / 2)
    saved = json.loads((validation / "summary.json").read_text())
    assert saved["mean"]["1"]["HD95_mm"] == pytest.approx(in_pixels.mean["1"]["HD95_mm"] / 2)
