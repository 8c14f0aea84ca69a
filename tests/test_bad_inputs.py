"""The bad-input corpus: broken datasets, plans, checkpoints and predictions, one kind per test.

Every kind is refused by each command that reads it: a non-zero exit, a one-line message naming the
file or field and the problem, no traceback, and every file that existed before the command (the
dataset, the workspace's fingerprint, plan and preprocessed arrays) byte-identical after it. What
`autoseg check` flags never gets past `plan` (the fingerprint pass) or `preprocess`.

The corpus is built from the 6-case demo dataset (conftest's `small_ct_dataset`), planned and
preprocessed once per module; each test breaks a copy.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.errors import AutosegError
from autoseg.evaluation import evaluate_folder
from autoseg.fingerprint import Fingerprint, dataset_signature
from autoseg.hardware import image_size_problem
from helpers_training import CONFIGURATION, small_task  # noqa: F401

TASK = "Task900_Demo"
runner = CliRunner()


def autoseg(home: Path, *args):
    return runner.invoke(app, ["--home", str(home), *map(str, args)])


def snapshot(*folders: Path) -> dict[str, str]:
    """{file: sha256} of every file under the folders."""
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_refused(result, *patterns: str) -> None:
    """Non-zero exit through the CLI's error path (no uncaught exception, no traceback), and one line of
    the output matching every pattern (the file or field, and the problem)."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if all(re.search(p, line) for p in patterns)]
    assert lines, f"no line matches {patterns}:\n{result.output}"


def assert_succeeded(result) -> None:
    assert result.exit_code == 0 and result.exception is None, result.output


# ------------------------------------------------------------------------------------------ the task

@pytest.fixture(scope="module")
def planned(small_ct_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, workspace) of the demo task, planned and preprocessed for 3d_fullres (read-only)."""
    root = tmp_path_factory.mktemp("corpus")
    dataset, home = root / "raw" / TASK, root / "home"
    shutil.copytree(small_ct_dataset, dataset)
    assert_succeeded(autoseg(home, "plan", dataset, "-j", "1"))
    assert_succeeded(autoseg(home, "preprocess", dataset, "-c", "3d_fullres", "-j", "0"))
    return dataset, home


@pytest.fixture
def task(planned, tmp_path) -> tuple[Path, Path]:
    """A writable copy of the planned task: (dataset, workspace)."""
    dataset, home = tmp_path / "raw" / TASK, tmp_path / "home"
    shutil.copytree(planned[0], dataset)
    shutil.copytree(planned[1], home)
    return dataset, home


def image(dataset: Path, case: int) -> Path:
    return dataset / "imagesTr" / f"demo_{case:03d}.nii.gz"


def label(dataset: Path, case: int) -> Path:
    return dataset / "labelsTr" / f"demo_{case:03d}.nii.gz"


def rewrite(path: Path, change_array=None, **geometry) -> None:
    """Rewrite a file with its array changed and/or spacing, origin or direction (ITK's x, y, z) replaced."""
    original = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(original)
    new = sitk.GetImageFromArray(change_array(array) if change_array else array)
    new.SetSpacing(geometry.get("spacing", original.GetSpacing()))
    new.SetOrigin(geometry.get("origin", original.GetOrigin()))
    new.SetDirection(geometry.get("direction", original.GetDirection()))
    sitk.WriteImage(new, str(path))


def set_voxel(value, dtype=None):
    def change(array):
        array = array.astype(dtype or array.dtype)
        array[2, 3, 4] = value
        return array
    return change


def write_2d_slice(path: Path) -> None:
    """The middle slice of a volume, as a 2D file."""
    volume = sitk.ReadImage(str(path))
    sitk.WriteImage(volume[:, :, volume.GetSize()[2] // 2], str(path))


def write_two_channels(path: Path) -> None:
    """The volume twice, as a 4D file of 2 channels (MSD layout)."""
    volume = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(path))


def write_forged_header(path: Path, shape=(10000, 10000, 10000)) -> None:
    """A tiny .nii.gz whose header claims `shape` float32 voxels (a few bytes of data follow it)."""
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + np.zeros(8, np.float32).tobytes()))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---------------------------------------------------------------------------------- broken cases
# kind -> (break the dataset, the file the message names, the problem's words as a regex)
BROKEN_CASES = {
    "missing image": (lambda d: image(d, 2).unlink(), lambda d: image(d, 2), "not found|No such file"),
    "missing label": (lambda d: label(d, 2).unlink(), lambda d: label(d, 2), "not found|No such file"),
    "truncated .nii.gz": (lambda d: truncate(image(d, 3)), lambda d: image(d, 3), "cannot be read"),
    "zero-byte file": (lambda d: label(d, 3).write_bytes(b""), lambda d: label(d, 3), r"empty \(0 bytes\)"),
    "NaN voxel": (lambda d: rewrite(image(d, 1), set_voxel(np.nan, np.float32)), lambda d: image(d, 1), "NaN or inf"),
    "Inf voxel": (lambda d: rewrite(image(d, 1), set_voxel(np.inf, np.float32)), lambda d: image(d, 1), "NaN or inf"),
    "label value not in dataset.json": (lambda d: rewrite(label(d, 4), set_voxel(5)), lambda d: label(d, 4),
                                        r"label values \[5\] not in dataset.json"),
    "negative label": (lambda d: rewrite(label(d, 4), set_voxel(-1, np.int16)), lambda d: label(d, 4),
                       r"label values \[-1\] not in dataset.json"),
    "non-integer label": (lambda d: rewrite(label(d, 4), set_voxel(0.5, np.float32)), lambda d: label(d, 4),
                          "non-integer"),
    "label shape mismatch": (lambda d: rewrite(label(d, 5), lambda a: a[:-1]), lambda d: label(d, 5),
                             "does not match its image.*shape"),
    "label spacing mismatch": (lambda d: rewrite(label(d, 5), spacing=(1.0, 1.0, 3.0)), lambda d: label(d, 5),
                               "does not match its image.*spacing"),
    "label origin mismatch": (lambda d: rewrite(label(d, 5), origin=(0.0, 0.0, 5.0)), lambda d: label(d, 5),
                              "does not match its image.*origin"),
    "label direction mismatch": (lambda d: rewrite(label(d, 5), direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)),
                                 lambda d: label(d, 5), "does not match its image.*direction"),
    "wrong channel count": (lambda d: write_two_channels(image(d, 0)), lambda d: image(d, 0),
                            "2 channels, but dataset.json 'modality' names 1"),
    "2D image in a 3D set": (lambda d: write_2d_slice(image(d, 0)), lambda d: image(d, 0),
                             "2D image in a dataset of 3D volumes"),
    "2D image and label in a 3D set": (lambda d: (write_2d_slice(image(d, 0)), write_2d_slice(label(d, 0))),
                                       lambda d: image(d, 0), "2D image in a dataset of 3D volumes"),
    "header claiming 10000^3 voxels": (lambda d: write_forged_header(image(d, 1)), lambda d: image(d, 1),
                                       "10000 x 10000 x 10000 voxels"),
}


def forge_current_plan(dataset: Path, home: Path) -> None:
    """Make the plan claim to be made from the dataset as it is now: what a plan made before autoseg
    validated cases, or edited by hand, looks like to preprocess. Preprocessing must refuse the case itself."""
    plans_file = home / "preprocessed" / TASK / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["fingerprint_signature"] = dataset_signature(load_dataset(dataset))
    plans_file.write_text(json.dumps(plans))


@pytest.mark.parametrize("kind", list(BROKEN_CASES))
def test_a_broken_case_never_gets_past_check_plan_or_preprocess(task, kind):
    dataset, home = task
    break_dataset, named_file, problem = BROKEN_CASES[kind]
    break_dataset(dataset)
    file = re.escape(str(named_file(dataset)))
    before = snapshot(dataset, home)
    assert_refused(autoseg(home, "check", dataset, "-j", "1"), file, problem)
    assert_refused(autoseg(home, "fingerprint", dataset, "-j", "1"), "^error: ", file, problem)
    assert_refused(autoseg(home, "plan", dataset, "-j", "1"), "^error: ", file, problem)
    assert snapshot(dataset, home) == before

    forge_current_plan(dataset, home)
    before = snapshot(dataset, home)
    result = autoseg(home, "preprocess", dataset, "-j", "0")
    assert_refused(result, file, problem)
    assert "1 failed" in result.output and "error: 1 case(s) failed to preprocess" in result.output
    assert snapshot(dataset, home) == before  # the case's stored arrays, properties and reference label kept


def test_check_goes_on_past_an_image_too_large_for_the_memory(task, monkeypatch):
    dataset, home = task
    monkeypatch.setattr("autoseg.hardware.available_memory_bytes", lambda: 50_000)  # < a 20x32x32 float32 image
    result = autoseg(home, "check", dataset, "-j", "1")
    assert_refused(result, re.escape(str(image(dataset, 0))), r"KiB once read, more than the 48.8 KiB of memory available")
    assert len([line for line in result.output.splitlines() if "of memory available" in line]) == 12
    (home / "preprocessed" / TASK / "fingerprint.json").unlink()  # else reused: the files have not changed
    assert_refused(autoseg(home, "fingerprint", dataset, "-j", "1"), "^error: ", "of memory available")


def test_image_size_rule():
    assert image_size_problem((512, 512, 300), 1, available_bytes=2**32) is None
    assert "more than the 2,147,483,648 per channel" in image_size_problem((2**11, 2**10, 2**10 + 1), 1, 2**60)
    assert image_size_problem((512, 512, 512, 2), 2, available_bytes=2**29) == (
        "the header claims 512 x 512 x 512 x 2 voxels, 1.0 GiB once read, more than the 512.0 MiB of memory available")
    assert "2.0 GiB once read" in image_size_problem((512, 512, 512), 4, available_bytes=2**30)


# ------------------------------------------------------------------------------- broken dataset.json
def edit_dataset_json(change):
    def edit(dataset: Path) -> None:
        meta = json.loads((dataset / "dataset.json").read_text())
        change(meta)
        (dataset / "dataset.json").write_text(json.dumps(meta))
    return edit


# kind -> (break dataset.json, the problem's words as a regex); the message names dataset.json
BROKEN_DATASET_JSON = {
    "malformed dataset.json": (lambda d: (d / "dataset.json").write_text('{"labels": '), "malformed JSON"),
    "dataset.json without labels": (edit_dataset_json(lambda m: m.pop("labels")), "missing 'labels'"),
    "dataset.json without modality": (edit_dataset_json(lambda m: m.pop("modality")), "missing 'modality'"),
    "path escaping the dataset folder": (
        edit_dataset_json(lambda m: m["training"][1].update(image="../../outside/x.nii.gz")),
        r"training\[1\].image: path '../../outside/x.nii.gz' leaves the dataset folder"),
    "absolute path": (edit_dataset_json(lambda m: m["training"][1].update(label="/etc/passwd")),
                      r"training\[1\].label: path '/etc/passwd' leaves the dataset folder"),
    "empty training list": (edit_dataset_json(lambda m: m.update(training=[], numTraining=0)), "no training cases"),
}


@pytest.mark.parametrize("kind", list(BROKEN_DATASET_JSON))
def test_a_broken_dataset_json_is_refused_by_every_command(task, kind):
    dataset, home = task
    break_dataset, problem = BROKEN_DATASET_JSON[kind]
    break_dataset(dataset)
    before = snapshot(dataset, home)
    json_file = re.escape(str(dataset / "dataset.json"))
    for command in ("check", "fingerprint", "plan", "preprocess"):
        assert_refused(autoseg(home, command, dataset, "-j", "1"), json_file, problem)
    assert snapshot(dataset, home) == before


# ------------------------------------------------------------------------------------- empty labels
def test_one_empty_label_map_is_fine(task):
    dataset, home = task
    rewrite(label(dataset, 2), lambda a: np.zeros_like(a))
    assert_succeeded(autoseg(home, "check", dataset, "-j", "1"))
    assert_succeeded(autoseg(home, "plan", dataset, "-j", "1"))
    assert Fingerprint.load(home / "preprocessed" / TASK / "fingerprint.json").label_warnings == []
    assert_succeeded(autoseg(home, "preprocess", dataset, "-c", "3d_fullres", "-j", "0"))


def test_all_label_maps_empty_is_a_warning(task):
    dataset, home = task
    for case in range(6):
        rewrite(label(dataset, case), lambda a: np.zeros_like(a))
    assert_succeeded(autoseg(home, "check", dataset, "-j", "1"))  # each case on its own is fine
    assert_succeeded(autoseg(home, "plan", dataset, "-j", "1"))
    warnings = Fingerprint.load(home / "preprocessed" / TASK / "fingerprint.json").label_warnings
    assert warnings == ["the label maps of all 6 training cases are empty (background only): a model trained "
                        "on them learns to predict nothing"]



def test_plan_prints_the_label_warnings(task):
    dataset, home = task
    for case in range(6):
        rewrite(label(dataset, case), lambda a: np.zeros_like(a))
    result = autoseg(home, "plan", dataset, "-j", "1")
    assert_succeeded(result)
    assert "label maps of all 6 training cases are empty" in result.output


def test_a_label_in_no_case_is_a_warning(task):
    dataset, home = task
    for case in range(6):
        rewrite(label(dataset, case), lambda a: np.minimum(a, 1))  # no lesion anywhere
    assert_succeeded(autoseg(home, "plan", dataset, "-j", "1"))
    warnings = Fingerprint.load(home / "preprocessed" / TASK / "fingerprint.json").label_warnings
    assert warnings == ["label 2 ('lesion') is in no training case's label map: a model cannot learn it"]


# ------------------------------------------------------------------------------------- broken plans
def edit_configuration(change):
    def edit(plans: dict) -> None:
        change(plans["configurations"]["3d_fullres"])
    return edit


# kind -> (break plans.json, the field's and the problem's words as a regex)
BROKEN_PLANS = {
    "negative patch": (edit_configuration(lambda c: c.update(patch_size=[-20, 32, 32])), "'patch_size' is"),
    "unknown architecture": (edit_configuration(lambda c: c["architecture"].update(name="my.module.Net")),
                             "'name' is 'my.module.Net', not a registered architecture"),
    "string batch size": (edit_configuration(lambda c: c.update(batch_size="2")),
                          "'batch_size' is '2', expected an integer"),
    "unknown normalization": (edit_configuration(lambda c: c.update(normalization=["minmax"])),
                              "'normalization' has unknown scheme 'minmax'"),
    "string spacing": (edit_configuration(lambda c: c.update(spacing=["2.0", "1.0", "x"])),
                       "'spacing' is \\['2.0', '1.0', 'x'\\], expected 3 positive numbers"),
    "zero spacing": (edit_configuration(lambda c: c.update(spacing=[0, 1, 1])),
                     r"'spacing' is \[0, 1, 1\], expected 3 positive numbers"),
    "data folder outside the task": (edit_configuration(lambda c: c.update(data_identifier="../../elsewhere")),
                                     "'data_identifier' is '../../elsewhere', expected a folder name"),
    "network of another label count": (edit_configuration(lambda c: c["architecture"].update(num_classes=5)),
                                       "'num_classes' is 5, expected 3"),
    "string intensity statistics": (lambda p: p["intensity_per_channel"]["0"].update(mean="88"),
                                    r"'intensity_per_channel.0' is"),
    "broken JSON": (None, "not valid JSON"),
}


@pytest.mark.parametrize("kind", list(BROKEN_PLANS))
def test_a_broken_plan_is_refused_at_load_time_and_nothing_is_lost(task, kind):
    dataset, home = task
    edit, problem = BROKEN_PLANS[kind]
    plans_file = home / "preprocessed" / TASK / "plans.json"
    if edit is None:
        plans_file.write_text(plans_file.read_text()[:-40])
    else:
        plans = json.loads(plans_file.read_text())
        edit(plans)
        plans_file.write_text(json.dumps(plans))
    before = snapshot(dataset, home)
    assert_refused(autoseg(home, "preprocess", dataset, "-j", "0"), "^error: ", re.escape(str(plans_file)), problem)
    assert snapshot(dataset, home) == before  # the arrays preprocessed with the good plan are all there


# -------------------------------------------------------------------------------- broken checkpoints
class PickledCode:
    """An object whose unpickling would run code: here, create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def write_truncated_checkpoint(path: Path, tmp_path: Path) -> None:
    torch.save({"format": 1, "network_weights": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    truncate(path)


def write_pickled_checkpoint(path: Path, tmp_path: Path) -> None:
    torch.save({"format": 1, "network_weights": {}, "epoch": 1, "extra": PickledCode(tmp_path / "unpickled")}, path)


BROKEN_CHECKPOINTS = {
    "truncated checkpoint": (write_truncated_checkpoint, "damaged or truncated checkpoint"),
    "empty checkpoint": (lambda path, tmp: path.write_bytes(b""), r"damaged or truncated checkpoint \(the file is empty\)"),
    "pickled (non-weights) checkpoint": (write_pickled_checkpoint, "not a weights-only checkpoint: it holds pickled "
                                                                   "Python objects .*autoseg refuses"),
}


@pytest.mark.parametrize("kind", list(BROKEN_CHECKPOINTS))
def test_a_broken_checkpoint_is_refused_by_train_resume(small_task, tmp_path, kind):  # noqa: F811
    write, problem = BROKEN_CHECKPOINTS[kind]
    home = tmp_path / "workspace"
    shutil.copytree(small_task.preprocessed_folder.parent.parent, home)
    checkpoint = home / "results" / TASK / CONFIGURATION / "fold_0" / "checkpoint_latest.pt"
    checkpoint.parent.mkdir(parents=True)
    write(checkpoint, tmp_path)
    before = snapshot(home)
    result = autoseg(home, "train", CONFIGURATION, "--fold", "0", "--resume", "--epochs", "2", "--iterations", "1",
                     "--val-iterations", "1", "--workers", "0", "--device", "cpu", "--no-validate")
    assert_refused(result, "^error: ", re.escape(str(checkpoint)), problem)
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "unpickled").exists()  # the pickled code never ran
    after = snapshot(home)  # (train writes the task's splits.json before it resumes: a new file)
    assert {path: after.get(path) for path in before} == before


# ------------------------------------------------------------------------------- broken predictions
@pytest.fixture
def predictions(task, tmp_path) -> tuple[Path, Path, Path, Path]:
    """(dataset, workspace, predictions, references): perfect predictions (copies of the labels)."""
    dataset, home = task
    references, predictions = tmp_path / "references", tmp_path / "predictions"
    shutil.copytree(dataset / "labelsTr", references)
    shutil.copytree(dataset / "labelsTr", predictions)
    return dataset, home, predictions, references


def prediction(folder: Path, case: int = 1) -> Path:
    return folder / f"demo_{case:03d}.nii.gz"


# kind -> (break the prediction folder, the problem's words as a regex)
BROKEN_PREDICTIONS = {
    "missing prediction": (lambda p: prediction(p).unlink(), r"no prediction for case\(s\) demo_001"),
    "empty prediction": (lambda p: prediction(p).write_bytes(b""), r"demo_001.nii.gz: the file is empty"),
    "mis-shaped prediction": (lambda p: rewrite(prediction(p), lambda a: a[:, :-2]),
                              r"demo_001.nii.gz: geometry differs from the reference .*\(shape"),
    "corrupt prediction": (lambda p: prediction(p).write_bytes(b"not an image at all"), "demo_001.nii.gz: cannot be read"),
}


@pytest.mark.parametrize("kind", list(BROKEN_PREDICTIONS))
def test_a_broken_prediction_is_refused_by_evaluate(predictions, kind):
    _, home, predicted, references = predictions
    break_predictions, problem = BROKEN_PREDICTIONS[kind]
    break_predictions(predicted)
    before = snapshot(predicted, references)
    assert_refused(autoseg(home, "evaluate", predicted, references, "--labels", "1,2", "-j", "1"), "^error: ",
                   re.escape(str(predicted)), problem)
    assert snapshot(predicted, references) == before  # no summary written


def test_a_predicted_label_the_task_does_not_have_is_an_error(predictions):
    dataset, _, predicted, references = predictions
    rewrite(prediction(predicted), set_voxel(3))
    labels = load_dataset(dataset).labels
    with pytest.raises(AutosegError, match=re.escape(f"{prediction(predicted)}: predicted label(s) [3] that the task "
                                                     "does not have (its labels: [0, 1, 2])")):
        evaluate_folder(predicted, references, labels, refuse_other_labels=True)
    assert evaluate_folder(predicted, references, labels).per_case  # labels chosen by the caller: 3 is not scored


def test_evaluate_with_a_task_refuses_a_label_the_task_does_not_have(predictions):
    dataset, home, predicted, references = predictions
    rewrite(prediction(predicted), set_voxel(3))
    before = snapshot(predicted, references)
    assert_refused(autoseg(home, "evaluate", predicted, references, "--task", dataset, "-j", "1"), "^error: ",
                   re.escape(str(prediction(predicted))), r"predicted label\(s\) \[3\]")
    assert snapshot(predicted, references) == before


def test_the_labels_found_mode_of_evaluate_still_scores_every_label_found(predictions):
    _, home, predicted, references = predictions
    rewrite(prediction(predicted), set_voxel(3))
    result = autoseg(home / "elsewhere", "evaluate", predicted, references, "-j", "1")  # no task planned there
    assert_succeeded(result)
    assert "scoring labels found in the files: 1, 2, 3" in result.output


# ------------------------------------------------------------------------- an incomplete preprocessed set
def test_train_refuses_a_case_whose_preprocessed_arrays_are_stale(task):
    from autoseg.workspace import Workspace

    dataset, home = task
    rewrite(label(dataset, 2), set_voxel(0))  # changed since it was preprocessed
    result = autoseg(home, "train", CONFIGURATION, "--task", dataset, "--epochs", "1", "--iterations", "1",
                     "--workers", "0", "--device", "cpu", "--no-validate")
    assert result.exit_code == 1
    assert_refused(result, re.escape("1 of 6 training cases are not preprocessed (or are stale): demo_002; "
                                     "run `autoseg preprocess`"))
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not Workspace(home).task_results(TASK).splits_file.exists()
