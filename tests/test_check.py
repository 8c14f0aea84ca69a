import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.check import check_dataset
from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.demo import DemoSpec, make_demo_dataset
from autoseg.errors import DatasetError
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


def test_every_path_escaping_the_dataset_is_listed_with_its_case(writable_dataset):
    def escape(meta):
        meta["training"][0]["image"] = "../../etc/passwd"
        meta["training"][2]["label"] = "/etc/passwd"
    edit_dataset_json(writable_dataset, escape)
    result = run_check(writable_dataset)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    # the case is named from the entry's usable file (the label of entry 0, the image of entry 2)
    assert any(line.startswith("demo_000: ") and "training[0].image" in line and "leaves the dataset folder" in line
               for line in lines)
    assert any(line.startswith("demo_002: ") and "training[2].label" in line and "'/etc/passwd'" in line
               for line in lines)
    assert "2 problem(s)" in result.output  # the four other cases were checked and are clean


def test_escaping_path_is_refused_outside_check(writable_dataset):
    edit_dataset_json(writable_dataset, lambda m: m["training"][0].update(image="imagesTr/../../x.nii.gz"))
    with pytest.raises(DatasetError, match=r"training\[0\].image: path 'imagesTr/../../x.nii.gz' leaves"):
        load_dataset(writable_dataset)
    result = runner.invoke(app, ["--home", str(writable_dataset.parent / "ws"), "fingerprint", str(writable_dataset)])
    assert result.exit_code == 1 and "leaves the dataset folder" in result.output


def test_symlinked_image_folder_inside_the_dataset_is_fine(writable_dataset, tmp_path):
    elsewhere = tmp_path / "other_disk" / "imagesTr"
    elsewhere.parent.mkdir()
    (writable_dataset / "imagesTr").rename(elsewhere)
    (writable_dataset / "imagesTr").symlink_to(elsewhere)
    assert check_dataset(load_dataset(writable_dataset)) == []


def test_entry_without_label_and_wrong_num_training(writable_dataset):
    def edit(meta):
        del meta["training"][1]["label"]
        meta["numTraining"] = 9
    edit_dataset_json(writable_dataset, edit)
    problems = [str(p) for p in check_dataset(load_dataset(writable_dataset, strict=False))]
    assert any(p.startswith("demo_001: ") and "training[1]: needs 'image' and 'label'" in p for p in problems)
    assert any("numTraining is 9, but 6 training cases are listed" in p for p in problems)
    assert len(problems) == 2


def test_nan_in_a_label_and_a_label_geometry_mismatch(writable_dataset):
    label_path = writable_dataset / "labelsTr" / "demo_004.nii.gz"
    image = sitk.ReadImage(str(label_path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array[0, 0, 0] = np.nan
    nan_label = sitk.GetImageFromArray(array)
    nan_label.CopyInformation(image)
    sitk.WriteImage(nan_label, str(label_path))
    shifted_path = writable_dataset / "labelsTr" / "demo_005.nii.gz"
    shifted = sitk.ReadImage(str(shifted_path))
    shifted.SetOrigin((0.0, 0.0, 5.0))  # image origin is (0, 0, 0)
    sitk.WriteImage(shifted, str(shifted_path))
    problems = {p.case_id: p.message for p in check_dataset(load_dataset(writable_dataset))}
    assert problems == {
        "demo_004": "label map contains NaN or inf",
        "demo_005": "label does not match its image (label's != image's): origin [0.0, 0.0, 5.0] != [0.0, 0.0, 0.0]",
    }


@pytest.mark.parametrize("ending", [".mhd", ".nrrd"])
def test_dataset_in_other_formats_passes(small_ct_dataset, tmp_path, ending):
    root = tmp_path / "Task901_Other"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for case in load_dataset(small_ct_dataset).cases[:2]:
        for source, folder in ((case.image_files[0], "imagesTr"), (case.label_file, "labelsTr")):
            sitk.WriteImage(sitk.ReadImage(str(source)), str(root / folder / f"{case.case_id}{ending}"))
        training.append({"image": f"./imagesTr/{case.case_id}{ending}", "label": f"./labelsTr/{case.case_id}{ending}"})
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"}, "training": training}))
    assert check_dataset(load_dataset(root)) == []
    if ending == ".mhd":
        (root / "imagesTr" / "demo_001.raw").unlink()  # the data half of a header/data pair
        problems = check_dataset(load_dataset(root))
        assert [p.case_id for p in problems] == ["demo_001"] and "cannot be read" in problems[0].message


def test_4d_msd_dataset_with_two_channels_passes(tmp_path):
    root = make_demo_dataset(tmp_path, "Task902_TwoMR", DemoSpec(cases=2, shape=(8, 16, 16), modality="MRI",
                                                                channels=2, test_cases=0))
    dataset = load_dataset(root)
    assert dataset.num_channels == 2 and check_dataset(dataset) == []
    edit_dataset_json(root, lambda m: m.update(modality={"0": "MR0"}))
    problems = check_dataset(load_dataset(root))
    assert [p.message for p in problems] == ["2 channels, but dataset.json 'modality' names 1"] * 2


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


def test_nnunet_v2_per_channel_files_and_a_missing_channel(tmp_path, small_ct_dataset):
    root = tmp_path / "Dataset903_TwoChannels"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in load_dataset(small_ct_dataset).cases[:2]:
        image = sitk.ReadImage(str(case.image_files[0]))
        for channel in range(2):
            sitk.WriteImage(image, str(root / "imagesTr" / f"{case.case_id}_{channel:04d}.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(case.label_file)), str(root / "labelsTr" / f"{case.case_id}.nii.gz"))
    (root / "imagesTr" / "._demo_000_0000.nii.gz").write_bytes(b"macOS junk")  # skipped, as nnU-Net does
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "CT2"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    dataset = load_dataset(root)
    assert [len(c.image_files) for c in dataset.cases] == [2, 2] and check_dataset(dataset) == []
    (root / "imagesTr" / "demo_001_0001.nii.gz").unlink()
    problems = check_dataset(load_dataset(root))
    assert [(p.case_id, p.message) for p in problems] == [("demo_001", "1 channels, but dataset.json 'modality' names 2")]
