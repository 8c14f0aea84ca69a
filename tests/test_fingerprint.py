import numpy as np
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.fingerprint import Fingerprint, extract_fingerprint, load_or_extract

runner = CliRunner()


def write(array, spacing_xyz, path):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))


def tiny_dataset(root):
    """Two MRI cases whose crop boxes and intensities are known exactly."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    # case a: nonzero block z 1..3, y 2..5, x 0..6 in a 4x8x8 volume; foreground values 10, 20
    image_a = np.zeros((4, 8, 8), np.float32)
    image_a[1:3, 2:5, 0:6] = 5
    label_a = np.zeros((4, 8, 8), np.uint8)
    image_a[1, 2, 0], label_a[1, 2, 0] = 10, 1
    image_a[2, 4, 5], label_a[2, 4, 5] = 20, 1
    # case b: whole volume nonzero, foreground values 30, 40, 50
    image_b = np.ones((6, 8, 8), np.float32)
    label_b = np.zeros((6, 8, 8), np.uint8)
    for value, index in zip((30, 40, 50), ((0, 0, 0), (5, 7, 7), (3, 3, 3))):
        image_b[index], label_b[index] = value, 1
    write(image_a, (1.0, 1.0, 2.0), root / "imagesTr" / "a.nii.gz")
    write(label_a, (1.0, 1.0, 2.0), root / "labelsTr" / "a.nii.gz")
    write(image_b, (1.0, 1.0, 4.0), root / "imagesTr" / "b.nii.gz")
    write(label_b, (1.0, 1.0, 4.0), root / "labelsTr" / "b.nii.gz")
    import json

    (root / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "thing"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"},
                     {"image": "./imagesTr/b.nii.gz", "label": "./labelsTr/b.nii.gz"}]}))
    return root


def test_values_match_hand_computation(tmp_path):
    fingerprint = extract_fingerprint(load_dataset(tiny_dataset(tmp_path / "Tiny")))
    a, b = fingerprint.cases
    assert a.crop_box == [[1, 3], [2, 5], [0, 6]]
    assert a.cropped_shape == [2, 3, 6] and b.cropped_shape == [6, 8, 8]
    assert a.class_voxel_counts == {"0": 254, "1": 2}
    assert fingerprint.median_spacing == [3.0, 1.0, 1.0]  # median of z spacings 2 and 4
    assert fingerprint.median_relative_size_after_cropping == (36 / 256 + 1.0) / 2
    stats = fingerprint.intensity_per_channel["0"]
    values = np.array([10, 20, 30, 40, 50], float)
    assert stats.mean == 30 and stats.median == 30 and stats.min == 10 and stats.max == 50
    assert np.isclose(stats.std, values.std())
    assert np.isclose(stats.percentile_99_5, np.percentile(values, 99.5))  # 49.8
    assert np.isclose(stats.percentile_00_5, 10.2)


def test_json_round_trip_and_reuse(tmp_path):
    dataset = load_dataset(tiny_dataset(tmp_path / "Tiny"))
    path = tmp_path / "fingerprint.json"
    first, reused = load_or_extract(dataset, path)
    assert not reused and Fingerprint.load(path) == first
    _, reused = load_or_extract(dataset, path)
    assert reused
    # a modified file is detected
    image = sitk.ReadImage(str(dataset.cases[1].image_files[0]))
    sitk.WriteImage(image * 2, str(dataset.cases[1].image_files[0]))
    second, reused = load_or_extract(dataset, path)
    assert not reused and second.intensity_per_channel["0"].mean == (10 + 20 + 60 + 80 + 100) / 5


def test_cli_fingerprint_and_workers(small_ct_dataset, tmp_path):
    result = runner.invoke(app, ["--home", str(tmp_path), "fingerprint", str(small_ct_dataset), "-j", "2"])
    assert result.exit_code == 0, result.output
    fingerprint = Fingerprint.load(tmp_path / "preprocessed" / "Task900_Demo" / "fingerprint.json")
    assert fingerprint.num_cases == 6 and fingerprint.median_spacing[0] == 2.0
    # CT organ around 90 HU, lesion 20 HU: the foreground sample sits between
    assert 20 < fingerprint.intensity_per_channel["0"].mean < 100
