"""DICOM in (series found by SeriesInstanceUID, read with their geometry, broken ones refused naming the
folder; dataset.json cases that are series folders) and DICOM-SEG out (read back with highdicom)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

import autoseg
from autoseg.cli import app
from autoseg.dicom import series_cases
from autoseg.errors import AutosegError, ImageReadError
from autoseg.inference.folder import check_output_format, group_input_files
from autoseg.io import Geometry, read_header, read_image, read_segmentation, write_image, write_segmentation
from helpers_dicom import ROTATED, write_ct_series
from helpers_training import CONFIGURATION, SMALL_SPEC, TASK_NAME, small_task, trained_small_fold  # noqa: F401

SPACING, ORIGIN = (2.5, 0.8, 0.7), (-20.0, 5.0, 30.0)


def ramp_volume(shape=(8, 32, 32)) -> np.ndarray:
    """Every voxel a different value, so a slice or row read out of place shows."""
    return (np.arange(np.prod(shape)).reshape(shape) % 3000 - 1000).astype(np.int16)


def test_a_series_is_read_in_slice_order_with_the_geometry_of_its_headers(tmp_path):
    volume = ramp_volume()
    write_ct_series(tmp_path / "ct", volume, SPACING, ORIGIN, ROTATED)
    expected = Geometry((8, 32, 32), SPACING, ORIGIN, ROTATED)
    image, geometry = read_image(tmp_path / "ct")
    np.testing.assert_array_equal(image, volume[None].astype(np.float32))
    assert geometry.agrees_with(expected) is None
    assert read_header(tmp_path / "ct")[0].agrees_with(expected) is None and read_header(tmp_path / "ct")[1] == 1


def test_a_multi_frame_file_is_a_series_of_its_frames(tmp_path):
    import SimpleITK as sitk

    volume = ramp_volume((5, 12, 10)).clip(0, 255).astype(np.uint8)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(SPACING[::-1])
    image.SetOrigin(ORIGIN)
    (tmp_path / "frames").mkdir()
    sitk.WriteImage(image, str(tmp_path / "frames" / "volume.dcm"))  # one file of 5 frames
    array, geometry = read_image(tmp_path / "frames")
    np.testing.assert_array_equal(array[0], volume)
    assert geometry.agrees_with(Geometry((5, 12, 10), SPACING, ORIGIN)) is None
    assert read_header(tmp_path / "frames")[0] == geometry


def test_a_missing_slice_or_mixed_sizes_is_one_line_naming_the_folder(tmp_path):
    files = write_ct_series(tmp_path / "missing", ramp_volume())
    files[3].unlink()
    with pytest.raises(ImageReadError, match=r"missing: slices unevenly spaced \(gaps from 2.5 to 5 mm"):
        read_image(tmp_path / "missing")
    files = write_ct_series(tmp_path / "mixed", ramp_volume())
    small = pydicom.dcmread(files[5])
    small.Rows = small.Columns = 16
    small.PixelData = np.zeros((16, 16), np.int16).tobytes()
    small.save_as(files[5])
    with pytest.raises(ImageReadError, match=rf"mixed: slices of different sizes \({files[5].name} and IM\d+: "
                                             r"\(16, 16\) and \(32, 32\) columns x rows"):
        read_image(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="empty: no DICOM series in this folder"):
        read_image(tmp_path / "empty")


def test_mixed_files_are_grouped_by_series_uid_and_a_folder_of_one_series_is_a_case(tmp_path):
    inputs = tmp_path / "in"
    first = write_ct_series(inputs, ramp_volume((3, 8, 8)), series_uid="1.2.3.1", seed=1)
    second = write_ct_series(inputs / "mixed", ramp_volume((4, 8, 8)), series_uid="1.2.3.2", seed=2)
    for path in second:  # interleave the second series' files with the first's, under other names
        path.rename(inputs / f"X{path.name}")
    third = write_ct_series(inputs / "patient7", ramp_volume((5, 8, 8)), series_uid="1.2.3.3")
    cases = group_input_files(inputs, num_channels=1)
    assert {case_id: [s.uid for s in series] for case_id, series in cases.items()} == \
           {"1.2.3.1": ["1.2.3.1"], "1.2.3.2": ["1.2.3.2"], "patient7": ["1.2.3.3"]}
    assert list(cases["1.2.3.1"][0].files) == first  # in slice order, not by name
    assert [p.name for p in cases["1.2.3.2"][0].files] == [f"X{p.name}" for p in second]
    assert list(cases["patient7"][0].files) == third


def test_channels_are_folders_named_by_index_or_name_and_ambiguity_is_an_error(tmp_path):
    case = tmp_path / "in" / "patient1"
    write_ct_series(case / "adc", ramp_volume((3, 8, 8)) * 2)
    write_ct_series(case / "0", ramp_volume((3, 8, 8)))
    cases = series_cases(tmp_path / "in", ["T2", "ADC"])
    assert cases == {"patient1": [case / "0", case / "adc"]}
    image, _ = read_image(cases["patient1"])  # channels in dataset.json's order
    np.testing.assert_array_equal(image, np.stack([ramp_volume((3, 8, 8)), ramp_volume((3, 8, 8)) * 2]))
    write_ct_series(case / "t2", ramp_volume((3, 8, 8)))
    with pytest.raises(AutosegError, match=r"patient1: channel 0 given twice \(0, t2\)"):
        series_cases(tmp_path / "in", ["T2", "ADC"])
    shutil.rmtree(case / "0")
    shutil.rmtree(case / "adc")
    with pytest.raises(AutosegError, match=r"patient1: no folder for channel\(s\) ADC"):
        series_cases(tmp_path / "in", ["T2", "ADC"])


def test_dicom_seg_of_files_that_are_not_dicom_is_a_clear_error(tmp_path):
    write_image(np.zeros((4, 4, 4), np.float32), Geometry((4, 4, 4), (1.0, 1.0, 1.0)), tmp_path / "a.nii.gz")
    cases = group_input_files(tmp_path, num_channels=1)
    with pytest.raises(AutosegError, match=r"dicom-seg needs DICOM input .*/a\.nii\.gz is not a DICOM series"):
        check_output_format(cases, "dicom-seg")
    with pytest.raises(AutosegError, match=r"--output-format 'rtstruct': expected nifti or dicom-seg"):
        check_output_format(cases, "rtstruct")


def block_volume(shape=(6, 16, 16)) -> np.ndarray:
    volume = np.full(shape, 10, np.int16)
    volume[2:4, 4:12, 4:12] = 100
    return volume


def write_dicom_dataset(root: Path) -> list[list[Path]]:
    """An MSD dataset whose two images are DICOM series folders (a block of 100 in 10) with NIfTI labels,
    and one entry whose image path leaves the folder; returns each case's files in slice order."""
    training, files = [], []
    for index in range(2):
        volume = block_volume()
        files.append(write_ct_series(root / "imagesTr" / f"case{index}", volume, SPACING, ORIGIN, ROTATED, seed=index))
        write_segmentation((volume == 100).astype(np.uint8), Geometry(volume.shape, SPACING, ORIGIN, ROTATED),
                           root / "labelsTr" / f"case{index}.nii.gz")
        training.append({"image": f"./imagesTr/case{index}", "label": f"./labelsTr/case{index}.nii.gz"})
    training.append({"image": "../elsewhere", "label": "./labelsTr/elsewhere.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "modality": {"0": "MRI"},
                                                   "labels": {"0": "background", "1": "block"}, "training": training}))
    return files


def test_check_and_fingerprint_accept_a_dicom_series_folder_as_a_case_image(tmp_path):
    from autoseg.check import check_dataset
    from autoseg.dataset import load_dataset
    from autoseg.fingerprint import dataset_signature, extract_fingerprint

    root = tmp_path / "Task801_Dicom"
    files = write_dicom_dataset(root)
    dataset = load_dataset(root, strict=False)
    assert [case.case_id for case in dataset.cases] == ["case0", "case1"] and dataset.file_ending == ".nii.gz"
    assert [str(p) for p in check_dataset(dataset)] == [
        f"elsewhere: {root / 'dataset.json'}: training[2].image: path '../elsewhere' leaves the dataset folder"]
    np.testing.assert_allclose(extract_fingerprint(dataset).median_spacing, SPACING)
    signature = dataset_signature(dataset)
    files[1][2].unlink()  # a slice of case1 removed inside its folder
    assert dataset_signature(dataset) != signature
    assert str(check_dataset(dataset)[1]).startswith(f"case1: {root / 'imagesTr' / 'case1'}: slices unevenly spaced")


def test_a_dicom_dataset_is_preprocessed_and_an_ensemble_writes_dicom_segs_equal_to_its_nifti(tmp_path):
    """Two configurations' oracle networks (foreground where the normalized intensity is above 0), averaged:
    the DICOM-SEG written from the averaged label map holds the same voxels as the NIfTI output."""
    import highdicom as hd
    import torch

    from autoseg.dataset import load_dataset
    from autoseg.fingerprint import extract_fingerprint
    from autoseg.inference.case import PredictionSettings
    from autoseg.inference.model import TrainedModel
    from autoseg.planning import plan_experiment
    from autoseg.preprocessing.task import preprocess_task
    from autoseg.stages.predict import predict_folder_with_models
    from autoseg.workspace import Workspace

    write_dicom_dataset(tmp_path / "Task802_Dicom")
    dataset = load_dataset(tmp_path / "Task802_Dicom", strict=False)
    plans = plan_experiment(extract_fingerprint(dataset))
    stored = preprocess_task(dataset, plans, Workspace(tmp_path / "home"), "Task802_Dicom",
                             configurations=["3d_fullres"], workers=0)  # training reads the series too
    assert [(summary.written, summary.failures) for summary in stored.values()] == [(["case0", "case1"], [])]
    models = [TrainedModel(plans, name, plans.configuration(name), [lambda x: torch.cat([-10 * x, 10 * x], 1)],
                           ["oracle"], torch.device("cpu"), [0, 1]) for name in ("2d", "3d_fullres")]
    files = write_ct_series(tmp_path / "in" / "ct", block_volume((7, 20, 18)), SPACING, ORIGIN, ROTATED)
    settings = PredictionSettings(mirror_axes=(), device="cpu")
    for output_format in ("nifti", "dicom-seg"):
        summary = predict_folder_with_models(models, tmp_path / "in", tmp_path / output_format, settings,
                                             output_format=output_format)
        assert not summary.failures
    assert sorted(p.name for p in (tmp_path / "dicom-seg").glob("ct*")) == ["ct.dcm"]
    labels, _ = read_segmentation(tmp_path / "nifti" / "ct.nii.gz")
    assert labels.sum() == 2 * 8 * 8  # the block
    seg = hd.seg.segread(tmp_path / "dicom-seg" / "ct.dcm")
    uids = [pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in files]
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance(uids, combine_segments=True), labels)


# ------------------------------------------------------------------ prediction: DICOM-SEG against NIfTI


@pytest.fixture(scope="module")
def trained_home(small_task, trained_small_fold, tmp_path_factory):
    """A workspace holding the session's trained fold 0 of the small demo task (labels organ, lesion)."""
    from autoseg.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("dicom_home"))
    workspace.plans_file(TASK_NAME).parent.mkdir(parents=True)
    shutil.copy(small_task.preprocessed_folder / "plans.json", workspace.plans_file(TASK_NAME))
    workspace.remember_task(TASK_NAME, small_task.raw_folder)
    shutil.copytree(trained_small_fold.folder, workspace.task_results(TASK_NAME).fold_folder(CONFIGURATION, 0))
    return workspace.home


def predict(home, inputs, outputs, output_format):
    return CliRunner().invoke(app, ["--home", str(home), "predict", str(inputs), str(outputs), "--config",
                                    CONFIGURATION, "--folds", "0", "--no-tta", "--device", "cpu",
                                    "--output-format", output_format])


def test_dicom_seg_holds_the_nifti_prediction_on_the_source_frames(trained_home, tmp_path):
    import highdicom as hd

    from autoseg.demo import make_demo_dataset

    raw = make_demo_dataset(tmp_path / "raw", TASK_NAME, replace(SMALL_SPEC, cases=1, seed=321))
    image, _ = read_image(raw / "imagesTr" / "demo_000.nii.gz")
    z, y, x = (size // 2 for size in image.shape[1:])
    image = image[:, z - 6:z + 6, y - 16:y + 16, x - 16:x + 16]  # 12 x 32 x 32 around the organ
    spacing = (2.2, 1.0, 0.9)
    files = write_ct_series(tmp_path / "in" / "ct", np.round(image[0]).astype(np.int16), spacing, ORIGIN, ROTATED)
    broken = write_ct_series(tmp_path / "in" / "broken", np.zeros((4, 8, 8), np.int16))
    broken[1].unlink()

    as_seg, as_nifti = predict(trained_home, tmp_path / "in", tmp_path / "seg", "dicom-seg"), \
        predict(trained_home, tmp_path / "in", tmp_path / "nifti", "nifti")
    for result in (as_seg, as_nifti):  # the broken series fails alone, in one line naming its folder
        assert result.exit_code == 1 and "1 case(s) failed: broken: " in result.output
        assert f"{tmp_path / 'in' / 'broken'}: slices unevenly spaced" in result.output
    labels, geometry = read_segmentation(tmp_path / "nifti" / "ct.nii.gz")
    assert geometry.agrees_with(Geometry(image.shape[1:], spacing, ORIGIN, ROTATED)) is None
    assert (labels == 1).sum() > 100  # the organ was found: the comparison below is not of empty masks

    seg = hd.seg.segread(tmp_path / "seg" / "ct.dcm")
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    assert seg.SegmentationType == "BINARY" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == \
        sources[0].SeriesInstanceUID and seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == ["organ", "lesion"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("autoseg", autoseg.__version__)
    by_uid = {source.SOPInstanceUID: source for source in sources}
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert shared.PlaneOrientationSequence[0].ImageOrientationPatient == sources[0].ImageOrientationPatient
    assert shared.PixelMeasuresSequence[0].PixelSpacing == sources[0].PixelSpacing
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame lies on the slice it references
        source = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, source.ImagePositionPatient)
    voxels = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources], combine_segments=True)
    np.testing.assert_array_equal(voxels, labels)
