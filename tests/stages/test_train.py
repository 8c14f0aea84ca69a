"""Training one fold (autoseg.stages.train) on the small synthetic task (tests/helpers_training.py): the
defaults it decides, splits, a task with cases not preprocessed refused, an over-budget configuration refused, a resumed run's schedule, and the
workers and threads it sizes for the machine.

What `autoseg train` prints, and its one-line errors, are tested in tests/test_training.py and
tests/test_compute_aware.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

from autoseg.checkpoint import load_checkpoint
from autoseg.errors import AutosegError, PlanError, WorkspaceError
from autoseg.hardware import training_workers
from autoseg.planning.plans import Plans
from autoseg.preprocessing.store import preprocessed_case_ids
from autoseg.stages.train import (DistributedRank, TrainRequest, default_training_workers, train_fold,
                                  training_cpu_threads)
from autoseg.training.trainer import TrainingEvents
from autoseg.workspace import Workspace
from helpers_training import CONFIGURATION, TASK_NAME, small_task  # noqa: F401

# One epoch of one iteration on the CPU, data loaded in-process.
TINY = dict(epochs=1, iterations=1, validation_iterations=1, workers=0, device="cpu", seed=0)


@pytest.fixture
def workspace(small_task, tmp_path) -> Workspace:  # noqa: F811
    """A writable copy of the small task's workspace (plans, arrays, current task)."""
    home = tmp_path / "workspace"
    shutil.copytree(small_task.preprocessed_folder.parent.parent, home)
    return Workspace(home)


def test_a_fold_is_trained_validated_and_reported_in_order(workspace):
    calls = []
    result = train_fold(workspace, TrainRequest(**TINY), TrainingEvents(on_epoch_end=lambda r: calls.append("epoch")),
                        on_start=lambda setup: calls.append("start"), on_trained=lambda folder: calls.append(folder),
                        on_validation_case=calls.append)
    setup = result.setup
    assert (setup.task, setup.configuration, setup.fold) == (TASK_NAME, CONFIGURATION, "0")  # the default
    assert (len(setup.train_ids), len(setup.val_ids)) == (8, 2)
    assert (setup.epochs, setup.iterations_per_epoch, setup.workers, setup.precision) == (1, 1, 0, "auto")
    assert setup.budget is None and result.timing_report is None  # no time budget to compare with
    fold = workspace.task_results(TASK_NAME).fold_folder(CONFIGURATION, 0)
    assert result.output_folder == fold and (fold / "checkpoint_final.pt").is_file()
    assert calls == ["start", "epoch", fold, *setup.val_ids]
    assert sorted(case.case_id for case in result.validation.per_case) == sorted(setup.val_ids)
    assert json.loads((fold / "validation" / "validation_info.json").read_text())["use_tta"] is True
    # The validation chose its runtime on its first case and cached the choice: predict reads it back.
    from autoseg.inference.case import PredictionSettings
    from autoseg.inference.model import load_trained_model
    from autoseg.stages.runtime import settings_with_runtime

    plans = Plans.load(workspace.plans_file(TASK_NAME))
    model = load_trained_model(workspace.task_results(TASK_NAME), plans, CONFIGURATION, folds=["0"], device="cpu")
    told = []
    settings_with_runtime(workspace, [model], PredictionSettings(runtime="auto"),
                          on_choice=lambda choice, cached: told.append((choice.probe, cached)))
    assert told == [("image", True)]


def test_fold_all_and_the_saved_splits_are_reused(workspace):
    splits_file = workspace.task_results(TASK_NAME).splits_file
    result = train_fold(workspace, TrainRequest(CONFIGURATION, fold="all", validate=False, **TINY))
    assert (len(result.setup.train_ids), len(result.setup.val_ids)) == (10, 10)
    assert (workspace.task_results(TASK_NAME).fold_folder(CONFIGURATION, "all") / "checkpoint_final.pt").is_file()
    written = splits_file.read_text()
    # A second run reads the same splits.json back (it must not reject its own file).
    result = train_fold(workspace, TrainRequest(CONFIGURATION, fold="1", validate=False, **TINY))
    assert (len(result.setup.train_ids), len(result.setup.val_ids)) == (8, 2)
    assert splits_file.read_text() == written


def test_a_configuration_over_the_plans_budget_is_refused_unless_given_a_schedule(workspace):
    plans_file = workspace.plans_file(TASK_NAME)
    data = json.loads(plans_file.read_text())
    data["configurations"][CONFIGURATION]["over_budget"] = {
        "time_budget_seconds": 600.0, "minimum_budget_seconds": 7300.0, "device": "cpu", "precision": "bf16"}
    plans_file.write_text(json.dumps(data))
    request = TrainRequest(CONFIGURATION, workers=0, device="cpu", validate=False)
    with pytest.raises(PlanError) as refused:
        train_fold(workspace, request)
    assert str(refused.value) == (
        "3d_fullres does not fit the plan's time budget of 10m00s: one fold needs at least 2h02m on cpu; train "
        "another configuration instead, re-plan with --time-budget 2h02m or more, or give --epochs to train it anyway")
    fold = workspace.task_results(TASK_NAME).fold_folder(CONFIGURATION, 0)
    assert not fold.exists()
    result = train_fold(workspace, TrainRequest(CONFIGURATION, validate=False, **TINY))  # trained anyway
    assert (fold / "checkpoint_final.pt").is_file() and result.timing_report is None


def test_a_resumed_run_keeps_its_schedule_unless_told_otherwise(workspace):
    fold = workspace.task_results(TASK_NAME).fold_folder(CONFIGURATION, 0)
    common = dict(configuration=CONFIGURATION, workers=0, device="cpu", seed=0, validate=False)
    train_fold(workspace, TrainRequest(epochs=1, iterations=2, validation_iterations=1, **common))
    # resume alone: the run had 1 epoch of 2 iterations; it is finished, nothing more to do (not 1000 x 250).
    messages = []
    result = train_fold(workspace, TrainRequest(resume=True, **common), TrainingEvents(on_message=messages.append))
    assert (result.setup.epochs, result.setup.iterations_per_epoch) == (1, 2)
    assert any("already trained for 1 epochs" in message for message in messages)
    # resume with 2 epochs extends it with the same iterations; new iterations change them, and the log says so.
    result = train_fold(workspace, TrainRequest(resume=True, epochs=2, **common))
    assert (result.setup.epochs, result.setup.iterations_per_epoch) == (2, 2)
    train_fold(workspace, TrainRequest(resume=True, epochs=3, iterations=1, **common))
    final = load_checkpoint(fold / "checkpoint_final.pt")
    assert (final["epoch"], final["planned_epochs"], final["iterations_per_epoch"]) == (3, 3, 1)
    notes = [line for line in (fold / "training_log.txt").read_text().splitlines() if line.startswith("note")]
    assert notes[-1] == "note after epoch 2: training iterations per epoch now 1 (was 2)"


def test_a_bad_precision_is_refused_before_anything_else(tmp_path):
    with pytest.raises(AutosegError, match="^--precision 'fp64': expected auto, fp32, bf16 or fp16$"):
        train_fold(Workspace(tmp_path), TrainRequest(precision="fp64"))
    with pytest.raises(AutosegError, match="^--runtime 'tensorrt': expected auto, torch, "):
        train_fold(Workspace(tmp_path), TrainRequest(validation_runtime="tensorrt"))


def test_workers_fit_the_memory_and_threads_are_shared_between_ranks(small_task, monkeypatch):  # noqa: F811
    import autoseg.hardware

    config = small_task.plans.configuration(CONFIGURATION)
    # 4 bytes per voxel of the batch's image channels and segmentation; a worker holds 4 batches and the
    # workers may take half the free memory.
    batch_bytes = 4 * config.batch_size * (1 + 1) * 16 * 32 * 32
    monkeypatch.setattr(autoseg.hardware, "usable_cpus", lambda: 8)
    for available, workers in ((8 * batch_bytes - 1, 0), (8 * batch_bytes, 1)):
        monkeypatch.setattr(autoseg.hardware, "available_memory_bytes", lambda: available)
        assert default_training_workers(config, "cpu") == workers == \
            training_workers("cpu", 8, available, batch_bytes)
    assert [training_cpu_threads(processes) for processes in (1, 2, 3, 16)] == [8, 4, 2, 1]
    one_of_two = DistributedRank("cpu", rank=1, world_size=2, local_world_size=2)
    assert TrainRequest(device="cuda", distributed=one_of_two).training_device == "cpu"
    assert not TrainRequest(distributed=one_of_two).is_main
    assert TrainRequest().is_main and TrainRequest(device="cpu").training_device == "cpu"


def data_folder_of(workspace: Workspace):
    return workspace.preprocessed(TASK_NAME) / Plans.load(workspace.plans_file(TASK_NAME)).configuration(
        CONFIGURATION).data_identifier


def test_a_case_not_preprocessed_or_stale_is_named_and_no_splits_are_written(workspace):
    data_folder = data_folder_of(workspace)
    case_ids = preprocessed_case_ids(data_folder)
    missing, stale = case_ids[1], case_ids[4]
    (data_folder / f"{missing}.json").unlink()  # its preprocessing failed, or never ran
    properties = json.loads((data_folder / f"{stale}.json").read_text())
    properties["source_signature"] = "other files"  # preprocessed from files since changed
    (data_folder / f"{stale}.json").write_text(json.dumps(properties))
    with pytest.raises(WorkspaceError) as refused:
        train_fold(workspace, TrainRequest(CONFIGURATION, validate=False, **TINY))
    assert str(refused.value) == (f"{data_folder}: 2 of 10 training cases are not preprocessed (or are stale): "
                                  f"{missing}, {stale}; run `autoseg preprocess`")
    assert not workspace.task_results(TASK_NAME).splits_file.exists()


def test_without_a_dataset_folder_the_preprocessed_cases_are_trained(workspace):
    # A task planned from a fingerprint only: no dataset.json to compare the preprocessed cases with.
    workspace.remember_task(TASK_NAME, None)
    shutil.rmtree(workspace.raw / TASK_NAME)
    data_folder = data_folder_of(workspace)
    (data_folder / f"{preprocessed_case_ids(data_folder)[0]}.json").unlink()
    result = train_fold(workspace, TrainRequest(CONFIGURATION, fold="all", validate=False, **TINY))
    assert len(result.setup.train_ids) == 9
