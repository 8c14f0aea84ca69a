import numpy as np
import pytest

from autoseg.ensembling import (
    average_probabilities,
    ensemble_folders,
    load_probabilities,
    save_probabilities,
)
from autoseg.errors import AutosegError
from autoseg.io import Geometry, read_segmentation

GEOMETRY = Geometry(shape=(1, 1, 2), spacing_zyx=(2.5, 0.7, 0.7), origin_xyz=(1.0, 2.0, 3.0))


def probabilities(voxel_0, voxel_1):
    """(3, 1, 1, 2) float32 probabilities from the class probabilities of the two voxels."""
    return np.stack([voxel_0, voxel_1], axis=-1).astype(np.float32).reshape(3, 1, 1, 2)


A = probabilities([0.4, 0.45, 0.15], [0.1, 0.2, 0.7])  # argmax channels: 1, 2
B = probabilities([0.4, 0.15, 0.45], [0.1, 0.6, 0.3])  # argmax channels: 2, 1


def test_average_of_two_maps_is_their_mean():
    a = np.array([[0.2, 0.8]], np.float32)
    b = np.array([[0.6, 0.0]], np.float16)
    assert average_probabilities([a, b]) == pytest.approx(np.array([[0.4, 0.4]]), abs=1e-3)
    assert average_probabilities(iter([a])).dtype == np.float32
    with pytest.raises(ValueError):
        average_probabilities([a, np.zeros((2, 2), np.float32)])


def test_probability_file_round_trip(tmp_path):
    probs = A.astype(np.float16)
    npz, sidecar = save_probabilities(tmp_path / "case_7", probs, GEOMETRY, labels=[0, 1, 4])
    assert npz.name == "case_7.npz" and sidecar.name == "case_7.json"
    loaded, geometry = load_probabilities(tmp_path / "case_7.npz")
    assert loaded.dtype == np.float16 and np.array_equal(loaded, probs) and geometry == GEOMETRY


def test_ensemble_writes_argmax_of_the_mean(tmp_path):
    # mean: voxel 0 [0.4, 0.3, 0.3] -> channel 0 (neither member's choice); voxel 1 [0.1, 0.4, 0.5] -> channel 2,
    # written as its label value 4.
    save_probabilities(tmp_path / "A" / "c1", A, GEOMETRY, labels=[0, 1, 4])
    save_probabilities(tmp_path / "B" / "c1", B.astype(np.float16), GEOMETRY, labels=[0, 1, 4])
    written = ensemble_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "out", save_probabilities=True)
    assert [p.endswith("c1.nii.gz") for p in written] == [True]
    seg, geometry = read_segmentation(written[0])
    assert seg.ravel().tolist() == [0, 4]
    assert geometry.agrees_with(GEOMETRY) is None
    mean, _ = load_probabilities(tmp_path / "out" / "c1")
    assert mean[:, 0, 0, 0] == pytest.approx([0.4, 0.3, 0.3], abs=1e-3)


def test_mismatched_case_sets_name_folder_and_cases(tmp_path):
    save_probabilities(tmp_path / "A" / "c1", A, GEOMETRY)
    save_probabilities(tmp_path / "A" / "c2", A, GEOMETRY)
    save_probabilities(tmp_path / "B" / "c1", A, GEOMETRY)
    with pytest.raises(AutosegError, match=r"B lacks c2"):
        ensemble_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "out")


def test_members_with_different_labels_are_refused(tmp_path):
    save_probabilities(tmp_path / "A" / "c1", A, GEOMETRY, labels=[0, 1, 2])
    save_probabilities(tmp_path / "B" / "c1", A, GEOMETRY, labels=[0, 2, 1])
    with pytest.raises(AutosegError, match="labels"):
        ensemble_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "out")


def test_ensemble_cli_averages_any_folders(tmp_path):
    from typer.testing import CliRunner

    from autoseg.cli import app

    save_probabilities(tmp_path / "A" / "c1", A, GEOMETRY, labels=[0, 1, 4])
    save_probabilities(tmp_path / "B" / "c1", B, GEOMETRY, labels=[0, 1, 4])
    result = CliRunner().invoke(app, ["ensemble", str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "out"),
                                      "--save-probabilities"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 ensembled segmentations" in result.output
    assert read_segmentation(tmp_path / "out" / "c1.nii.gz")[0].ravel().tolist() == [0, 4]
    mean, _ = load_probabilities(tmp_path / "out" / "c1")
    assert mean == pytest.approx((A + B) / 2, abs=1e-6)
    too_few = CliRunner().invoke(app, ["ensemble", str(tmp_path / "A"), str(tmp_path / "out")])
    assert too_few.exit_code == 1 and "at least two input folders" in too_few.output
