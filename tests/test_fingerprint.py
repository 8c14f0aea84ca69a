import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.case_validation import CaseRequirements
from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.errors import AutosegError, ImageReadError
from autoseg.fingerprint import Fingerprint, _map_cases, analyze_case, extract_fingerprint, load_or_extract

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


def test_spacing_and_shape_percentiles_by_hand(tmp_path):
    # Two cases: z spacing 2 and 4 mm, cropped shapes (2, 3, 6) and (6, 8, 8). Linear percentiles of two
    # values a < b: p = a + (b - a) * p / 100.
    fingerprint = extract_fingerprint(load_dataset(tiny_dataset(tmp_path / "Tiny")))
    assert fingerprint.spacing_percentiles == {
        "0": [2.0, 1.0, 1.0], "10": [2.2, 1.0, 1.0], "50": [3.0, 1.0, 1.0], "90": [3.8, 1.0, 1.0], "100": [4.0, 1.0, 1.0]}
    shapes = fingerprint.cropped_shape_percentiles
    assert shapes["0"] == [2.0, 3.0, 6.0] and shapes["100"] == [6.0, 8.0, 8.0]
    assert shapes["10"] == pytest.approx([2.4, 3.5, 6.2]) and shapes["50"] == [4.0, 5.5, 7.0]
    assert fingerprint.spacing_percentile_10 == pytest.approx([2.2, 1.0, 1.0])


def test_at_most_10000_foreground_voxels_per_case_seeded(tmp_path):
    root = tmp_path / "Big"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = np.arange(20 * 40 * 40, dtype=np.float32).reshape(20, 40, 40) + 1  # all distinct, none zero
    label = np.zeros(image.shape, np.uint8)
    label[:, :, :20] = 1  # 16,000 foreground voxels with values 1..32000
    write(image, (1.0, 1.0, 1.0), root / "imagesTr" / "c.nii.gz")
    write(label, (1.0, 1.0, 1.0), root / "labelsTr" / "c.nii.gz")
    import json

    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "thing"},
        "training": [{"image": "./imagesTr/c.nii.gz", "label": "./labelsTr/c.nii.gz"}]}))
    dataset = load_dataset(root)
    case, requirements = dataset.cases[0], CaseRequirements.of(dataset)
    _, sample = analyze_case(case, requirements)
    assert sample.shape == (1, 10_000)
    assert len(np.unique(sample)) == 10_000  # drawn without replacement
    assert set(sample.ravel().tolist()) <= set(image[label == 1].tolist())
    np.testing.assert_array_equal(analyze_case(case, requirements)[1], sample)  # seeded: the same sample every run


def test_added_or_removed_case_is_detected(tmp_path, small_ct_dataset):
    import shutil

    from tests.conftest import edit_dataset_json

    root = tmp_path / small_ct_dataset.name
    shutil.copytree(small_ct_dataset, root)
    path = tmp_path / "fingerprint.json"
    first, _ = load_or_extract(load_dataset(root), path)
    assert first.num_cases == 6
    edit_dataset_json(root, lambda m: m.update(training=m["training"][:4], numTraining=4))
    removed, reused = load_or_extract(load_dataset(root), path)
    assert not reused and removed.num_cases == 4 and [c.case_id for c in removed.cases][-1] == "demo_003"
    edit_dataset_json(root, lambda m: m["training"].append(
        {"image": "./imagesTr/demo_005.nii.gz", "label": "./labelsTr/demo_005.nii.gz"}))
    added, reused = load_or_extract(load_dataset(root), path)
    assert not reused and added.num_cases == 5 and added.cases[-1].case_id == "demo_005"


def test_old_schema_is_recomputed(tmp_path):
    dataset = load_dataset(tiny_dataset(tmp_path / "Tiny"))
    path = tmp_path / "fingerprint.json"
    fingerprint, _ = load_or_extract(dataset, path)
    data = fingerprint.to_json()
    data["schema_version"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(AutosegError, match="schema_version 1, expected 2"):
        Fingerprint.load(path)
    again, reused = load_or_extract(dataset, path)
    assert not reused and again == fingerprint


def _kill_worker(case):
    os._exit(3)  # what the out-of-memory killer does to a worker


def test_killed_worker_gives_a_one_line_error(tmp_path):
    cases = load_dataset(tiny_dataset(tmp_path / "Tiny")).cases
    with pytest.raises(AutosegError, match="worker process died .* rerun with fewer"):
        list(_map_cases(_kill_worker, cases, workers=2))


def test_worker_error_names_the_file(tmp_path):
    dataset = load_dataset(tiny_dataset(tmp_path / "Tiny"))
    dataset.cases[1].image_files[0].write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="b.nii.gz"):
        extract_fingerprint(dataset, workers=2)


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
    assert "wrote" in result.output and "cases 6" in result.output
    again = runner.invoke(app, ["--home", str(tmp_path), "fingerprint", str(small_ct_dataset)])
    assert again.exit_code == 0 and "reused" in again.output
    fingerprint = Fingerprint.load(tmp_path / "preprocessed" / "Task900_Demo" / "fingerprint.json")
    assert fingerprint.num_cases == 6 and fingerprint.median_spacing[0] == 2.0
    # CT organ around 90 HU, lesion 20 HU: the foreground sample sits between
    assert 20 < fingerprint.intensity_per_channel["0"].mean < 100
