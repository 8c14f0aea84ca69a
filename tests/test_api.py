"""The Python API: each stage of the command line, called as a function on the small demo task.

The stages' messages and option parsing are tested through the CLI in each stage's own test module;
here the functions' typed results, keyword options and errors.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from autoseg import api
from autoseg.artifacts import write_json
from autoseg.demo import make_demo_dataset
from autoseg.ensembling import load_probabilities, save_probabilities
from autoseg.errors import AutosegError, WorkspaceError
from autoseg.inference.case import PredictionSettings
from autoseg.io import Geometry, read_segmentation, write_segmentation
from autoseg.postprocessing import PostprocessingDecision
from autoseg.workspace import Workspace
from helpers_training import CONFIGURATION, SMALL_SPEC, TASK_NAME, small_task, trained_small_fold  # noqa: F401


def test_demo_data_writes_volumes_or_pictures(tmp_path):
    root = api.demo_data(tmp_path, task_name="Task905_Pictures", cases=2, shape=(24, 24), two_d=True)
    meta = json.loads((root / "dataset.json").read_text())
    assert root == tmp_path / "Task905_Pictures" and meta["modality"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".png"
    with pytest.raises(AutosegError, match="three values"):
        api.demo_data(tmp_path, shape=(10, 20))
    with pytest.raises(AutosegError, match="expected CT or MRI, got 'PET'"):
        api.demo_data(tmp_path, modality="PET")


def test_check_lists_problems_and_reports_progress(small_ct_dataset, writable_dataset, tmp_path):
    calls = []
    report = api.check(small_ct_dataset, workers=2, home=tmp_path, progress=lambda *c: calls.append(c))
    assert report.problems == [] and report.num_cases == 6 and report.dataset_name == "Task900_Demo"
    assert calls[0] == (0, 6) and sorted(calls) == [(done, 6) for done in range(7)]
    (writable_dataset / "labelsTr" / "demo_001.nii.gz").unlink()
    broken = api.check(writable_dataset, workers=1, home=tmp_path)
    assert [problem.case_id for problem in broken.problems] == ["demo_001"]
    assert broken.root == writable_dataset.resolve()


def test_fingerprint_is_written_then_reused(small_ct_dataset, tmp_path):
    first = api.fingerprint(small_ct_dataset, workers=1, home=tmp_path)
    assert not first.reused and first.path == tmp_path / "preprocessed" / "Task900_Demo" / "fingerprint.json"
    assert first.fingerprint.num_cases == 6 and first.fingerprint.median_spacing[0] == 2.0
    again = api.fingerprint(small_ct_dataset, home=tmp_path)
    assert again.reused and again.fingerprint == first.fingerprint


def test_preprocess_the_planned_task_then_skip_it(small_ct_dataset, tmp_path):
    from autoseg.planning import plan_experiment

    workspace = Workspace(tmp_path / "home")
    fingerprint = api.fingerprint(small_ct_dataset, workers=1, home=workspace.home).fingerprint
    plan_experiment(fingerprint).save(workspace.plans_file("Task900_Demo"))
    workspace.remember_task("Task900_Demo", small_ct_dataset)
    summaries = api.preprocess(configurations=["3d_fullres"], workers=0, home=workspace.home)
    assert list(summaries) == ["3d_fullres"] and len(summaries["3d_fullres"].written) == 6
    again = api.preprocess(small_ct_dataset, configurations=["3d_fullres"], workers=0, home=workspace.home)
    assert len(again["3d_fullres"].skipped) == 6 and not again["3d_fullres"].failures
    elsewhere = Workspace(tmp_path / "elsewhere")
    elsewhere.remember_task("Task900_Demo", None)
    with pytest.raises(WorkspaceError, match="task Task900_Demo: no dataset folder known"):
        api.preprocess(home=elsewhere.home)


def test_evaluate_chooses_labels_regions_and_pixel_spacing(small_ct_dataset, tmp_path):
    predictions, references = tmp_path / "pred", small_ct_dataset / "labelsTr"
    shutil.copytree(references, predictions)
    found = api.evaluate(predictions, references, workers=1, home=tmp_path / "empty")
    assert found.label_choice.found == [1, 2] and found.label_choice.planned_task is None
    assert found.label_choice.labels == {1: "1", 2: "2"} and found.pixel_spacing is None
    assert found.label_choice.describe() == "scoring labels found in the files: 1, 2"
    assert found.summary.mean["1"]["Dice"] == 1.0 and all(path.is_file() for path in found.summary_files)

    home = tmp_path / "home"
    Workspace(home).remember_task("Task900_Demo", small_ct_dataset)
    planned = api.evaluate(predictions, references, workers=1, home=home)
    assert planned.label_choice.planned_task == "Task900_Demo" and planned.label_choice.found == [1, 2]
    assert planned.summary.label_names == {"1": "organ", "2": "lesion"}
    assert planned.label_choice.describe() == ("scoring the labels of the planned task Task900_Demo "
                                               "(labels found in the files: 1, 2)")
    named = api.evaluate(predictions, references, task=small_ct_dataset, workers=1, home=home)
    assert named.label_choice.found is None and named.label_choice.dataset_folder == small_ct_dataset.resolve()

    chosen = api.evaluate(predictions, references, labels=[1], regions=[(1, 2)], workers=1, home=home)
    assert list(chosen.summary.mean) == ["1", "1+2"] and chosen.label_choice.dataset_folder is None
    named_regions = api.evaluate(predictions, references, labels={1: "organ", 2: "lesion"},
                                 regions={"body": (1, 2)}, workers=1, pixel_spacing=0.5)
    assert named_regions.summary.label_names["1+2"] == "body" and named_regions.pixel_spacing == (0.5, 0.5)
    with pytest.raises(AutosegError, match=r"--pixel-spacing: expected Y,X or one number, positive mm, got '0,1'"):
        api.evaluate(predictions, references, labels=[1], pixel_spacing=(0, 1))


def test_ensemble_averages_folders(tmp_path):
    geometry = Geometry(shape=(1, 1, 2), spacing_zyx=(2.5, 0.7, 0.7))
    a = np.array([[0.6, 0.1], [0.4, 0.9]], np.float32).reshape(2, 1, 1, 2)
    b = np.array([[0.2, 0.3], [0.8, 0.7]], np.float32).reshape(2, 1, 1, 2)
    save_probabilities(tmp_path / "A" / "c1", a, geometry, labels=[0, 1])
    save_probabilities(tmp_path / "B" / "c1", b, geometry, labels=[0, 1])
    written = api.ensemble([tmp_path / "A", tmp_path / "B"], tmp_path / "out", save_probabilities=True)
    assert written == [str(tmp_path / "out" / "c1.nii.gz")]
    assert read_segmentation(written[0])[0].ravel().tolist() == [1, 1]
    assert load_probabilities(tmp_path / "out" / "c1")[0] == pytest.approx((a + b) / 2)
    with pytest.raises(AutosegError, match="at least two input folders"):
        api.ensemble([tmp_path / "A"], tmp_path / "out")


def test_postprocess_applies_the_tasks_decision_or_a_given_file(tmp_path):
    geometry = Geometry(shape=(8, 8, 8), spacing_zyx=(1.0, 1.0, 1.0))
    with_island = np.zeros(geometry.shape, np.int16)
    with_island[1:4, 1:4, 1:4] = 1
    with_island[6, 6, 6] = 1
    write_segmentation(with_island, geometry, tmp_path / "pred" / "a.nii.gz")
    workspace = Workspace(tmp_path / "home")
    workspace.remember_task("Task001_X", None)
    PostprocessingDecision(whole_foreground=True).save(workspace.task_results("Task001_X").postprocessing_file)
    result = api.postprocess(tmp_path / "pred", tmp_path / "out", workers=1, home=workspace.home)
    assert result.decision.whole_foreground and result.written == [tmp_path / "out" / "a.nii.gz"]
    assert read_segmentation(result.written[0])[0][6, 6, 6] == 0
    PostprocessingDecision().save(tmp_path / "none" / "postprocessing.json")
    kept = api.postprocess(tmp_path / "pred", tmp_path / "kept",
                           decision_file=tmp_path / "none" / "postprocessing.json")
    assert not kept.decision.whole_foreground and read_segmentation(kept.written[0])[0][6, 6, 6] == 1


# ---------------------------------------------------------------------- find-best and predict on a trained fold


@pytest.fixture(scope="module")
def chosen_home(small_task, trained_small_fold, tmp_path_factory):
    """A workspace holding the session's trained fold 0 and its splits, after `api.find_best` on fold 0."""
    from autoseg.training.splits import make_splits

    workspace = Workspace(tmp_path_factory.mktemp("api_home"))
    shutil.copytree(small_task.reference_folder, workspace.reference_segmentations(TASK_NAME))
    shutil.copy(small_task.preprocessed_folder / "plans.json", workspace.plans_file(TASK_NAME))
    workspace.remember_task(TASK_NAME, small_task.raw_folder)
    results = workspace.task_results(TASK_NAME)
    shutil.copytree(trained_small_fold.folder, results.fold_folder(CONFIGURATION, 0))
    write_json(results.splits_file, make_splits(small_task.case_ids))
    return workspace, api.find_best(folds=["0"], workers=1, home=workspace.home)


def test_find_best_chooses_and_decides_postprocessing(chosen_home):
    workspace, best = chosen_home
    results = workspace.task_results(TASK_NAME)
    assert best.selection.chosen == [CONFIGURATION] and best.selection.folds == ["0"]
    assert best.postprocessing == PostprocessingDecision.load(results.postprocessing_file)
    assert results.selection_file.is_file()


def test_predict_uses_the_choice_and_the_segmenter_agrees(chosen_home, tmp_path):
    workspace, _ = chosen_home
    unseen = make_demo_dataset(tmp_path / "raw", TASK_NAME, replace(SMALL_SPEC, cases=2, seed=123))
    models, cases = [], []
    summary = api.predict(unseen / "imagesTr", tmp_path / "out", tta="off", device="cpu", home=workspace.home,
                          on_models=models.extend, on_case=lambda case_id, status: cases.append(case_id))
    assert len(summary.written) == 2 and not summary.failures and summary.windows > 0
    assert [(m.configuration_name, m.folds) for m in models] == [(CONFIGURATION, ["0"])]
    assert sorted(cases) == ["demo_000", "demo_001"]

    # runtime auto reads back the choice predict cached, so both run the same runtime at the same arithmetic.
    segmenter = api.Segmenter(workspace.home, device="cpu",
                              settings=PredictionSettings(mirror_axes=(), device="cpu", runtime="auto"))
    image = unseen / "imagesTr" / "demo_000.nii.gz"
    np.testing.assert_array_equal(segmenter.predict(image).segmentation,
                                  read_segmentation(tmp_path / "out" / "demo_000.nii.gz")[0])
    with pytest.raises(AutosegError, match=r"--precision 'fp64': expected auto, fp32, bf16 or fp16"):
        api.predict(unseen / "imagesTr", tmp_path / "again", precision="fp64", home=workspace.home)
