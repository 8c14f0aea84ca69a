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
