import json

import numpy as np
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.check import check_dataset
from autoseg.cli import app
from autoseg.dataset import load_dataset
from tests.conftest import edit_dataset_json

runner = CliRunner()


def run_check(root):
    return runner.invoke(app, ["--home", str(root.parent / "ws"), "check", str(root)])


def rewrite_label(path, change):
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    new = sitk.GetImageFromArray(change(array))
    new.SetSpacing(image.GetSpacing())
    sitk.WriteImage(new, str(path))


def test_clean_dataset_passes(small_ct_dataset):
    assert check_dataset(load_dataset(small_ct_dataset)) == []
    result = run_check(small_ct_dataset)
    assert result.exit_code == 0, result.output
    assert "no problems" in result.output


def test_every_problem_is_listed_with_case_and_file(writable_dataset):
    root = writable_dataset
    (root / "imagesTr" / "demo_000.nii.gz").unlink()  # missing file

    def unknown_label(a):
        a[0, 0, 0] = 7
        return a

    rewrite_label(root / "labelsTr" / "demo_001.nii.gz", unknown_label)
    rewrite_label(root / "labelsTr" / "demo_002.nii.gz", lambda a: a[:-1])  # shape mismatch
    image_path = root / "imagesTr" / "demo_003.nii.gz"
    image = sitk.ReadImage(str(image_path))
    array = sitk.GetArrayFromImage(image)
    array[2, 3, 4] = np.nan
    nan_image = sitk.GetImageFromArray(array)
    nan_image.CopyInformation(image)
    sitk.WriteImage(nan_image, str(image_path))

    result = run_check(root)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any("demo_000" in line and "demo_000.nii.gz" in line and "not found" in line for line in lines)
    assert any("demo_001" in line and "[7]" in line for line in lines)
    assert any("demo_002" in line and "shape" in line for line in lines)
    assert any("demo_003" in line and "NaN" in line for line in lines)
    assert "Traceback" not in result.output


def test_path_escaping_the_dataset_is_refused(writable_dataset):
    edit_dataset_json(writable_dataset, lambda m: m["training"][0].update(image="../../etc/passwd"))
    result = run_check(writable_dataset)
    assert result.exit_code == 1
    assert "training[0].image" in result.output and "leaves the dataset folder" in result.output


def test_malformed_dataset_json(writable_dataset):
    (writable_dataset / "dataset.json").write_text('{"name": "x", "labels": ')
    result = run_check(writable_dataset)
    assert result.exit_code == 1
    assert "dataset.json" in result.output and "malformed JSON" in result.output
    assert "Traceback" not in result.output


def test_channel_count_must_match_modality(writable_dataset):
    edit_dataset_json(writable_dataset, lambda m: m.update(modality={"0": "CT", "1": "PET"}))
    result = run_check(writable_dataset)
    assert result.exit_code == 1
    assert "1 channels, but dataset.json 'modality' names 2" in result.output


def test_nnunet_v2_layout_is_read(tmp_path, small_ct_dataset):
    root = tmp_path / "Dataset900_Demo"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in load_dataset(small_ct_dataset).cases[:2]:
        sitk.WriteImage(sitk.ReadImage(str(case.image_files[0])), str(root / "imagesTr" / f"{case.case_id}_0000.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(case.label_file)), str(root / "labelsTr" / f"{case.case_id}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    dataset = load_dataset(root)
    assert [c.case_id for c in dataset.cases] == ["demo_000", "demo_001"]
    assert dataset.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert check_dataset(dataset) == []
