"""2D datasets of ordinary pictures (PNG, JPEG, BMP, TIFF): reading, masks, check, planning, and the
whole path plan -> preprocess -> train -> predict -> evaluate on the demo's RGB blob pictures."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.demo import DemoSpec, make_demo_dataset
from autoseg.fingerprint import extract_fingerprint
from autoseg.io import (
    Geometry,
    MaskValuesRemappedWarning,
    PSEUDO_3D_Z_SPACING,
    read_image,
    read_segmentation,
    segmentation_ending_for,
    write_segmentation,
)
from autoseg.planning import plan_experiment

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # (y, x, colour), as a picture is stored
GRAY = RNG.integers(0, 256, (20, 30), dtype=np.uint8)


def write_picture(array: np.ndarray, path: Path, spacing=(1.0, 1.0)) -> Path:
    """(y, x) gray or (y, x, 3) RGB uint8 -> picture file; `spacing` ends up as the file's dpi."""
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 3)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def picture_size(path: Path) -> tuple[int, int]:
    """(height, width) in pixels, straight from the file."""
    width, height = sitk.ReadImage(str(path)).GetSize()[:2]
    return height, width


def run_cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"autoseg {' '.join(map(str, args))} failed:\n{result.output}"
    return result


# ------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_rgb_picture_reads_as_three_channels_of_one_slice(tmp_path, ending):
    image, geometry = read_image(write_picture(RGB, tmp_path / f"rgb{ending}"))
    assert image.shape == (3, 1, 20, 30) and image.dtype == np.float32
    np.testing.assert_array_equal(image[:, 0], np.moveaxis(RGB, -1, 0))  # colour becomes the channel axis
    assert geometry.shape == (1, 20, 30) and geometry.is_natural_2d
    assert geometry.spacing_zyx == (PSEUDO_3D_Z_SPACING, 1.0, 1.0)


@pytest.mark.parametrize("ending", [".png", ".tif"])
def test_gray_picture_reads_as_one_channel(tmp_path, ending):
    image, geometry = read_image(write_picture(GRAY, tmp_path / f"gray{ending}"))
    assert image.shape == (1, 1, 20, 30) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0, 0], GRAY)
    assert geometry.shape == (1, 20, 30)


def test_jpeg_reads_with_its_compression_loss_only(tmp_path):
    smooth = np.broadcast_to(np.linspace(40, 200, 30), (20, 30)).astype(np.uint8)  # compresses almost exactly
    image, geometry = read_image(write_picture(np.dstack([smooth, smooth // 2, smooth // 4]), tmp_path / "x.jpg"))
    assert image.shape == (3, 1, 20, 30) and geometry.shape == (1, 20, 30)
    assert np.abs(image[0, 0] - smooth).mean() < 3  # within a few grey levels of what was written
    assert image[0].mean() > image[1].mean() > image[2].mean()  # R, G, B stay in order


def test_dpi_in_the_file_is_not_a_pixel_spacing(tmp_path):
    # SimpleITK turns 72 dpi into 0.353 mm for JPEG and TIFF, not for PNG: a JPEG photo and its PNG
    # mask would disagree, so every picture has 1 x 1 pixels.
    photo = write_picture(RGB, tmp_path / "photo.jpg", spacing=(0.3528, 0.3528))
    mask = write_picture(GRAY // 200, tmp_path / "mask.png")
    _, photo_geometry = read_image(photo)
    _, mask_geometry = read_segmentation(mask)
    assert photo_geometry.spacing_zyx == mask_geometry.spacing_zyx == (PSEUDO_3D_Z_SPACING, 1.0, 1.0)
    assert photo_geometry.agrees_with(mask_geometry) is None


def test_alpha_channel_is_dropped(tmp_path):
    rgba = np.dstack([RGB, np.full((20, 30), 255, np.uint8)])
    image, _ = read_image(write_picture(rgba, tmp_path / "rgba.png"))
    assert image.shape == (3, 1, 20, 30)
    np.testing.assert_array_equal(image[2, 0], RGB[..., 2])


# ---------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("ending", [".png", ".tif", ".bmp"])
def test_mask_written_gives_back_the_same_pixels_and_size(tmp_path, ending):
    mask = np.zeros((1, 20, 30), np.int16)
    mask[0, 5:10, 3:20] = 1
    mask[0, 12:18, 22:29] = 2
    path = write_segmentation(mask, Geometry((1, 20, 30), (PSEUDO_3D_Z_SPACING, 1.0, 1.0), is_natural_2d=True),
                              tmp_path / f"mask{ending}")
    assert picture_size(path) == (20, 30)
    read, geometry = read_segmentation(path)
    np.testing.assert_array_equal(read, mask)
    assert geometry.shape == (1, 20, 30)


def test_mask_with_more_than_255_labels_is_written_as_16_bit_png(tmp_path):
    mask = np.arange(600, dtype=np.int16).reshape(1, 20, 30)
    path = write_segmentation(mask, Geometry((1, 20, 30), (PSEUDO_3D_Z_SPACING, 1.0, 1.0), is_natural_2d=True),
                              tmp_path / "many.png")
    np.testing.assert_array_equal(read_segmentation(path)[0], mask)


def test_0_255_mask_reads_as_0_1_with_a_warning_naming_the_file(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[4:9, 6:16] = 255
    path = write_picture(mask, tmp_path / "case_7.png")
    with pytest.warns(MaskValuesRemappedWarning, match="case_7.png"):
        read, _ = read_segmentation(path)
    assert read.dtype == np.int16 and sorted(np.unique(read)) == [0, 1]
    assert int(read.sum()) == 5 * 10  # exactly the 255 pixels became 1


def test_mask_with_labels_0_1_2_reads_unchanged_and_silently(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 2:6], mask[10:15, 10:20] = 1, 2
    path = write_picture(mask, tmp_path / "three.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read, _ = read_segmentation(path)
    np.testing.assert_array_equal(read[0], mask)


def test_mask_with_255_among_other_labels_is_left_for_check_to_report(tmp_path):
    # {0, 1, 255}: 255 is an "ignore" value in some datasets, not a binary foreground.
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 2:6], mask[10:15, 10:20] = 1, 255
    read, _ = read_segmentation(write_picture(mask, tmp_path / "ignore.png"))
    assert sorted(np.unique(read)) == [0, 1, 255]


def test_mask_saved_as_rgb_with_equal_channels_reads_as_one_channel(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[3:7, 3:9] = 1
    read, _ = read_segmentation(write_picture(np.dstack([mask] * 3), tmp_path / "rgbmask.png"))
    np.testing.assert_array_equal(read[0], mask)


def test_segmentations_of_jpeg_pictures_are_png(tmp_path):
    assert segmentation_ending_for(".jpg") == segmentation_ending_for(".jpeg") == ".png"
    assert segmentation_ending_for(".png") == ".png" and segmentation_ending_for(".nii.gz") == ".nii.gz"
    with pytest.raises(ValueError, match="lossy"):
        write_segmentation(np.zeros((1, 4, 4), np.int16),
                           Geometry((1, 4, 4), (PSEUDO_3D_Z_SPACING, 1.0, 1.0), is_natural_2d=True),
                           tmp_path / "mask.jpg")


# ----------------------------------------------------------------------------- dataset, check, plan


@pytest.fixture(scope="module")
def demo_2d(tmp_path_factory) -> Path:
    """`autoseg demo-data --2d`: 6 RGB pictures of about 40x40 with one blob each (read-only)."""
    output = tmp_path_factory.mktemp("raw2d")
    run_cli("demo-data", output, "--2d", "--cases", 6, "--shape", "40,40", "--task-name", "Task901_Blobs")
    return output / "Task901_Blobs"


def with_0_255_mask(dataset: Path, target: Path, case_index: int = 1) -> tuple[Path, Path]:
    """A copy of `dataset` whose case `case_index` mask is stored as 0/255; (copy, that mask file)."""
    shutil.copytree(dataset, target)
    mask_file = sorted((target / "labelsTr").glob("*.png"))[case_index]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file)))
    assert sorted(np.unique(mask)) == [0, 1]
    write_picture((mask * 255).astype(np.uint8), mask_file)
    return target, mask_file


def test_demo_2d_dataset_is_rgb_png_with_0_1_masks(demo_2d):
    dataset = load_dataset(demo_2d)
    assert dataset.modality == {0: "R", 1: "G", 2: "B"} and dataset.file_ending == ".png"
    assert len(dataset.cases) == 6 and dataset.num_channels == 3
    image, geometry = read_image(dataset.cases[0].image_files)
    label, _ = read_segmentation(dataset.cases[0].label_file)
    assert image.shape == (3, *geometry.shape) and geometry.shape[0] == 1
    assert 36 <= geometry.shape[1] <= 44 and 36 <= geometry.shape[2] <= 44  # 40 +- 10%
    assert sorted(np.unique(label)) == [0, 1] and 0 < label.mean() < 0.5  # one blob, smaller than the picture


def test_fingerprint_and_plan_make_only_2d_with_rgb_normalization(demo_2d):
    fingerprint = extract_fingerprint(load_dataset(demo_2d))
    assert fingerprint.is_2d_images
    assert fingerprint.median_spacing == [PSEUDO_3D_Z_SPACING, 1.0, 1.0]
    plans = plan_experiment(fingerprint)
    assert list(plans.configurations) == ["2d"]
    two_d = plans.configuration("2d")
    assert two_d.normalization == ["rgb_to_0_1"] * 3 and two_d.dimension == 2
    assert two_d.data_identifier == "2d" and len(two_d.patch_size) == 2


def test_check_passes_on_demo_2d_data(demo_2d, tmp_path):
    result = run_cli("--home", tmp_path, "check", demo_2d)
    assert "6 training cases, no problems found" in result.output


def test_check_accepts_a_0_255_mask_and_shows_the_warning(demo_2d, tmp_path):
    # A real process, so the warning reaches stderr as a user would see it (pytest would record it).
    dataset, mask_file = with_0_255_mask(demo_2d, tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "autoseg.cli", "--home", str(tmp_path), "check", str(dataset)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems found" in result.stdout
    assert "MaskValuesRemappedWarning" in result.stderr and f"{mask_file}: mask values 0/255" in result.stderr


def test_check_reports_a_gray_picture_in_an_rgb_dataset(demo_2d, tmp_path):
    from autoseg.check import check_dataset

    shutil.copytree(demo_2d, tmp_path / "data")
    image_file = sorted((tmp_path / "data" / "imagesTr").glob("*.png"))[0]
    write_picture(np.full(picture_size(image_file), 100, np.uint8), image_file)
    problems = check_dataset(load_dataset(tmp_path / "data"))
    assert len(problems) == 1 and "1 channels, but dataset.json 'modality' names 3" in problems[0].message


# ----------------------------------------------------------------------------------------- end to end


def small_2d_plan(plans_file: Path, patch: int = 48, batch_size: int = 2) -> None:
    """Shrink the planned 2d configuration to a 4-stage U-Net with 8..64 features (CPU-sized)."""
    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"]["2d"]
    configuration.update(patch_size=[patch, patch], batch_size=batch_size)
    configuration["architecture"].update(features_per_stage=[8, 16, 32, 64], kernel_sizes=[[3, 3]] * 4,
                                         strides=[[1, 1], [2, 2], [2, 2], [2, 2]])
    plans_file.write_text(json.dumps(plans))


@pytest.mark.filterwarnings("ignore::autoseg.io.MaskValuesRemappedWarning")
def test_plan_preprocess_train_predict_evaluate_on_pictures(tmp_path):
    raw = make_demo_dataset(tmp_path / "raw", "Task902_Blobs", DemoSpec(cases=10, shape=(1, 48, 48), two_d=True))
    # Half the masks as 0/255, so the remapping is used by preprocessing and evaluation alike.
    for mask_file in sorted((raw / "labelsTr").glob("*.png"))[::2]:
        write_picture((sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file))) * 255).astype(np.uint8), mask_file)
    home = tmp_path / "home"
    run_cli("--home", home, "plan", raw, "-j", "1")
    plans_file = home / "preprocessed" / "Task902_Blobs" / "plans.json"
    assert list(json.loads(plans_file.read_text())["configurations"]) == ["2d"]
    small_2d_plan(plans_file)
    run_cli("--home", home, "preprocess", "--workers", "0")
    stored = np.load(home / "preprocessed" / "Task902_Blobs" / "2d" / "blobs_000.npy")
    assert stored.shape[:2] == (3, 1) and 0.0 <= stored.min() and stored.max() <= 1.0  # 0..255 -> 0..1
    stored_label = np.load(home / "preprocessed" / "Task902_Blobs" / "2d" / "blobs_000_seg.npy")
    assert sorted(np.unique(stored_label)) == [0, 1]  # a 0/255 mask arrives as 0/1

    # One epoch keeps the learning rate at its start value; 40 steps of batch 2 reached Dice 0.93-0.97
    # on demo seeds 1-3 where 2 epochs x 12 steps of batch 4 (same CPU time) stayed at 0.43-0.91.
    run_cli("--home", home, "train", "2d", "--fold", "0", "--epochs", "1", "--iterations", "40",
            "--val-iterations", "2", "--workers", "0", "--device", "cpu", "--seed", "0", "--no-validate")

    splits = json.loads((home / "results" / "Task902_Blobs" / "splits.json").read_text())
    val_ids = splits[0]["val"]
    inputs, references = tmp_path / "val_images", tmp_path / "val_labels"
    inputs.mkdir(), references.mkdir()
    for case_id in val_ids:
        shutil.copy(raw / "imagesTr" / f"{case_id}.png", inputs)
        shutil.copy(raw / "labelsTr" / f"{case_id}.png", references)
    predictions = tmp_path / "predictions"
    run_cli("--home", home, "predict", inputs, predictions, "--config", "2d", "--device", "cpu")
    for case_id in val_ids:
        predicted = predictions / f"{case_id}.png"
        assert picture_size(predicted) == picture_size(inputs / f"{case_id}.png")
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(predicted)))).tolist()) <= {0, 1}

    run_cli("--home", home, "evaluate", predictions, references, "--labels", "1")
    summary = json.loads((predictions / "summary.json").read_text())
    dice = summary["mean"]["1"]["Dice"]
    print(f"2D pictures: validation Dice {dice:.3f}")
    assert dice > 0.7, f"blob Dice {dice:.3f} after 40 iterations"  # all-foreground would score about 0.2

    # A JPEG photo of the same picture gets a PNG mask of its size, close to the PNG input's.
    photos = tmp_path / "photos"
    photos.mkdir()
    picture = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / f"{val_ids[0]}.png")))
    write_picture(picture, photos / f"{val_ids[0]}.jpg")
    run_cli("--home", home, "predict", photos, tmp_path / "photo_masks", "--config", "2d", "--device", "cpu")
    photo_mask = tmp_path / "photo_masks" / f"{val_ids[0]}.png"
    assert picture_size(photo_mask) == picture.shape[:2]
    from_photo, from_png = (read_segmentation(f)[0] for f in (photo_mask, predictions / f"{val_ids[0]}.png"))
    assert 2 * (from_photo & from_png).sum() / max(from_photo.sum() + from_png.sum(), 1) > 0.8
