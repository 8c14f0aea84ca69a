"""The workspace: tasks by name or path, AUTOSEG_HOME / --home, the task planned last."""

import pytest
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.errors import WorkspaceError
from autoseg.workspace import Workspace

runner = CliRunner()


def test_task_by_name_under_raw_or_by_path(tmp_path, small_ct_dataset):
    workspace = Workspace(tmp_path)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "Task900_Demo").symlink_to(small_ct_dataset)
    assert workspace.dataset_folder("Task900_Demo") == small_ct_dataset.resolve()
    assert workspace.dataset_folder(str(small_ct_dataset)) == small_ct_dataset.resolve()
    with pytest.raises(WorkspaceError, match="Task404_None"):
        workspace.dataset_folder("Task404_None")


def test_resolve_task_by_name_path_or_the_task_planned_last(tmp_path, small_ct_dataset):
    workspace = Workspace(tmp_path)
    assert workspace.resolve_task(str(small_ct_dataset)) == ("Task900_Demo", small_ct_dataset.resolve())
    with pytest.raises(WorkspaceError, match="run `autoseg plan TASK` first"):
        workspace.resolve_task(None)
    workspace.remember_task("Task900_Demo", small_ct_dataset)
    assert workspace.resolve_task(None) == ("Task900_Demo", small_ct_dataset)
    workspace.remember_task("Task901_Gone", None)  # planned from a fingerprint alone: no dataset folder
    assert workspace.resolve_task(None) == ("Task901_Gone", None)


def test_trained_task_by_dataset_folder_by_name_without_raw_data_or_the_task_planned_last(tmp_path,
                                                                                          small_ct_dataset):
    workspace = Workspace(tmp_path)
    assert workspace.trained_task_name(small_ct_dataset) == "Task900_Demo"  # a dataset folder elsewhere
    assert workspace.trained_task_name("Task901_Imported") == "Task901_Imported"  # no raw/ folder needed
    with pytest.raises(WorkspaceError, match="no task given and none planned yet"):
        workspace.trained_task_name(None)
    workspace.remember_task("Task901_Imported", None)
    assert workspace.trained_task_name(None) == "Task901_Imported"


def test_no_current_task_before_planning(tmp_path):
    with pytest.raises(WorkspaceError, match="run `autoseg plan TASK` first"):
        Workspace(tmp_path).current_task()


def test_autoseg_home_from_the_environment(tmp_path, small_ct_dataset):
    result = runner.invoke(app, ["fingerprint", str(small_ct_dataset)], env={"AUTOSEG_HOME": str(tmp_path / "env")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env" / "preprocessed" / "Task900_Demo" / "fingerprint.json").is_file()
    # --home wins over the environment
    result = runner.invoke(app, ["--home", str(tmp_path / "flag"), "fingerprint", str(small_ct_dataset)],
                           env={"AUTOSEG_HOME": str(tmp_path / "env")})
    assert (tmp_path / "flag" / "preprocessed" / "Task900_Demo" / "fingerprint.json").is_file()


def test_artifacts_get_the_permissions_of_any_new_file(tmp_path):
    import os

    from autoseg.artifacts import write_json

    mask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "plans.json", {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(mask)
    # mkstemp's temporary is private (0600); the renamed artifact must be readable like any other file.
    assert (path.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_task_results_spell_the_results_layout(tmp_path):
    from autoseg.workspace import TaskResults

    workspace = Workspace(tmp_path)
    results = workspace.task_results("Task001_X")
    root = tmp_path / "results" / "Task001_X"
    assert results == TaskResults(root)
    references = workspace.reference_segmentations("Task001_X")
    assert references == tmp_path / "preprocessed" / "Task001_X" / "gt_segmentations"
    assert (results.splits_file, results.selection_file, results.selection_table_file, results.postprocessing_file) \
        == (root / "splits.json", root / "find_best.json", root / "find_best.txt", root / "postprocessing.json")
    assert results.ensembles_folder == root / "ensembles"
    fold = root / "2d" / "fold_3"
    assert results.fold_folder("2d", 3) == fold
    assert results.checkpoint_file("2d", 3, "best") == fold / "checkpoint_best.pt"
    assert results.training_log_file("2d", 3) == fold / "training_log.txt"
    assert results.progress_plot_file("2d", 3) == fold / "progress.png"
    assert results.validation_folder("2d", "all") == root / "2d" / "fold_all" / "validation"
    assert results.crossval_folder("2d") == root / "2d" / "crossval"
    assert results.predicted_next_stage_folder("3d_lowres") == root / "3d_lowres" / "predicted_next_stage"
    with pytest.raises(WorkspaceError, match="--checkpoint 'worst': expected one of final, best, latest"):
        results.checkpoint_file("2d", 3, "worst")


def test_task_results_find_the_trained_folds_and_configurations(tmp_path):
    from autoseg.workspace import TaskResults

    results = TaskResults(tmp_path)
    assert results.configurations_with_folds() == []
    for configuration, fold, name in (("2d", "0", "checkpoint_final.pt"), ("2d", "all", "checkpoint_final.pt"),
                                      ("2d", "1", "checkpoint_latest.pt"), ("3d_fullres", "0", "checkpoint_best.pt")):
        (tmp_path / configuration / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (tmp_path / configuration / f"fold_{fold}" / name).write_bytes(b"")
    (tmp_path / "ensembles" / "2d+3d_fullres").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    assert results.configurations_with_folds() == ["2d", "3d_fullres"]
    assert results.trained_folds("2d") == ["0", "all"]
    assert results.trained_folds("2d", "latest") == ["1"]
    assert results.trained_folds("3d_lowres") == []
    with pytest.raises(WorkspaceError, match="expected one of"):
        results.trained_folds("2d", "worst")
