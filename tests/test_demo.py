"""`autoseg demo-data`: deterministic synthetic MSD datasets with the requested geometry and intensities."""

import json

import numpy as np
from typer.testing import CliRunner

from autoseg.check import check_dataset
from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.demo import DemoSpec, make_demo_dataset
from autoseg.io import read_image, read_segmentation

runner = CliRunner()


def arrays(root):
    dataset = load_dataset(root)
    return [(read_image(c.image_files)[0], read_segmentation(c.label_file)[0]) for c in dataset.cases]


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    spec = DemoSpec(cases=2, shape=(10, 20, 20), test_cases=0)
    first = arrays(make_demo_dataset(tmp_path / "a", "Task900_Demo", spec))
    again = arrays(make_demo_dataset(tmp_path / "b", "Task900_Demo", spec))
    other = arrays(make_demo_dataset(tmp_path / "c", "Task900_Demo", DemoSpec(cases=2, shape=(10, 20, 20),
                                                                             test_cases=0, seed=1)))
    for (image, label), (image2, label2) in zip(first, again):
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_array_equal(label, label2)
    assert not np.array_equal(first[0][1], other[0][1]) or first[0][0].shape != other[0][0].shape


def test_cli_options_shape_spacing_channels(tmp_path):
    result = runner.invoke(app, ["demo-data", str(tmp_path), "--task-name", "Task905_Mr", "--cases", "3",
                                 "--shape", "12,30,40", "--spacing", "3,0.5,0.5", "--modality", "MRI",
                                 "--channels", "2", "--seed", "4"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "Task905_Mr"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "MR0", "1": "MR1"} and meta["numTraining"] == 3
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    dataset = load_dataset(root)
    assert check_dataset(dataset) == []
    shapes = []
    for case in dataset.cases:
        image, geometry = read_image(case.image_files)
        label, _ = read_segmentation(case.label_file)
        assert image.shape[0] == 2  # a 4D MSD file read as two channels
        # shapes vary by at most 10% per axis; z spacing exact, in-plane within 5%
        assert all(0.9 * n - 1 <= m <= 1.1 * n + 1 for m, n in zip(geometry.shape, (12, 30, 40)))
        assert geometry.spacing_zyx[0] == 3.0 and all(0.475 <= s <= 0.525 for s in geometry.spacing_zyx[1:])
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        assert image[0][label == 0].min() == 0.0  # MRI: zero outside the body, so cropping has work to do
        shapes.append(geometry.shape)
    assert len(set(shapes)) > 1


def test_ct_intensities_are_hounsfield_units(tmp_path):
    root = make_demo_dataset(tmp_path, "Task900_Demo", DemoSpec(cases=1, shape=(16, 40, 40), test_cases=1))
    image, label = arrays(root)[0]
    assert image[0, 0, 0, 0] == -1000.0  # air in the corner
    organ, lesion = image[0][label == 1], image[0][label == 2]
    assert abs(organ.mean() - 90) < 5 and abs(lesion.mean() - 20) < 5  # demo.CT_HU, noise sd 15
    assert (root / "imagesTs").is_dir() and len(load_dataset(root).test_cases) == 1


def test_cli_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["demo-data", str(tmp_path), "--shape", "10,20"])
    assert result.exit_code == 1 and "three values" in result.output
    result = runner.invoke(app, ["demo-data", str(tmp_path), "--modality", "PET"])
    assert result.exit_code == 1 and "CT or MRI" in result.output
