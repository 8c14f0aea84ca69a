"""Planning a task (autoseg.stages.plan): from a dataset or a fingerprint file, within a time budget, the
user's derived configurations kept; re-planning one configuration for `train --time-budget`.

What `autoseg plan` prints is tested in tests/test_planning.py and tests/test_compute_aware.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autoseg.budget.compute_aware import precisions_to_measure, trainable_configurations
from autoseg.errors import PlanError
from autoseg.fingerprint import Fingerprint
from autoseg.planning import Plans, plan_experiment
from autoseg.stages.plan import SpeedLookup, plan_task, replan_for_budget
from autoseg.stages.train import TrainRequest, train_fold
from autoseg.workspace import Workspace
from helpers_budget import seed_speed_cache
from helpers_training import CONFIGURATION, TASK_NAME, small_task  # noqa: F401
from tests.conftest import edit_dataset_json

REFERENCE = Path(__file__).resolve().parents[2] / "fingerprints" / "Task03_Liver.json"


def test_plan_from_a_fingerprint_file_with_a_memory_budget(tmp_path):
    workspace = Workspace(tmp_path / "home")
    result = plan_task(workspace, fingerprint_file=REFERENCE, gpu_memory_gb=4)
    plans = Plans.load(workspace.plans_file("Task03_Liver"))
    assert result.plans_file == workspace.plans_file("Task03_Liver") and result.task_name == "Task03_Liver"
    assert plans.gpu_memory_gb == 4.0 and plans.to_json() == result.plans.to_json()
    assert all(plans.configuration(name).estimated_memory_gb <= 4.0 for name in plans.configurations)
    eight = plan_experiment(Fingerprint.load(REFERENCE), gpu_memory_gb=8).configuration("3d_fullres")
    assert np.prod(plans.configuration("3d_fullres").patch_size) < np.prod(eight.patch_size)
    assert result.dataset_folder is None
    assert not (workspace.home / "current_task.json").exists()  # no dataset: nothing for later stages to run on


def test_plan_needs_a_task_or_a_fingerprint_file_not_both(tmp_path):
    workspace = Workspace(tmp_path / "home")
    with pytest.raises(PlanError, match="^give either TASK or --fingerprint, not both$"):
        plan_task(workspace, "Task03_Liver", fingerprint_file=REFERENCE)
    with pytest.raises(PlanError, match=r"^missing TASK \(a name under raw/ or a dataset folder\), or --fingerprint"):
        plan_task(workspace)


def test_plan_fingerprints_the_dataset_and_again_when_it_changed(writable_dataset, tmp_path):
    workspace = Workspace(tmp_path / "home")
    steps = []
    result = plan_task(workspace, writable_dataset, on_case_done=lambda done, total: steps.append((done, total)))
    assert steps == [(n, 6) for n in range(1, 7)]
    assert result.dataset_folder == writable_dataset.resolve() and workspace.current_task() == "Task900_Demo"
    steps.clear()
    plan_task(workspace, writable_dataset, on_case_done=lambda done, total: steps.append((done, total)))
    assert steps == []  # the dataset did not change: its fingerprint is reused
    edit_dataset_json(writable_dataset, lambda m: m.update(training=m["training"][:3]))
    plan_task(workspace, writable_dataset)
    assert Fingerprint.load(workspace.fingerprint_file("Task900_Demo")).num_cases == 3


def test_replanning_keeps_the_users_derived_configurations(tmp_path):
    workspace = Workspace(tmp_path / "home")
    plan_task(workspace, fingerprint_file=REFERENCE)
    plans_file = workspace.plans_file("Task03_Liver")
    data = json.loads(plans_file.read_text())
    data["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    data["configurations"]["from_lowres"] = {"inherits_from": "3d_midres"}  # not a configuration autoseg makes
    data["configurations"]["copied"] = dict(data["configurations"]["3d_fullres"])  # complete: the old plan's
    plans_file.write_text(json.dumps(data))

    result = plan_task(workspace, fingerprint_file=REFERENCE, gpu_memory_gb=4)
    plans = Plans.load(plans_file)
    assert plans.configuration("3d_fullres_bs4").batch_size == 4
    # The derived entry follows the new plan (sized for 4 GB now: a smaller patch), not the old one.
    old_patch = data["configurations"]["3d_fullres"]["patch_size"]
    assert plans.configuration("3d_fullres_bs4").patch_size == plans.configuration("3d_fullres").patch_size
    assert np.prod(plans.configuration("3d_fullres_bs4").patch_size) < np.prod(old_patch)
    assert "from_lowres" not in plans.configurations and "copied" not in plans.configurations
    assert result.kept == ["3d_fullres_bs4"]
    assert [reason.split(" ")[0] for reason in result.dropped] == ["from_lowres", "copied"]


def test_plan_within_a_time_budget_looks_up_this_machines_speed(small_ct_dataset, tmp_path):
    workspace = Workspace(tmp_path / "home")
    seed_speed_cache(workspace.home)
    lookups = []
    result = plan_task(workspace, small_ct_dataset, time_budget="10m", device="cpu", workers=1,
                       on_measure=lookups.append)
    dimensions = sorted({result.plans.configuration(n).dimension for n in trainable_configurations(result.plans)})
    assert lookups == [SpeedLookup(dimension, precision, "cpu", workspace.device_speed_file)
                       for dimension in dimensions for precision in precisions_to_measure("cpu")]
    for name in trainable_configurations(result.plans):
        budget = result.plans.configuration(name).budget
        assert budget.time_budget_seconds == 600 and budget.seconds_per_fold <= 600


# --- train --time-budget: one configuration re-planned ----------------------------------------------------
@pytest.fixture
def workspace(small_task, tmp_path) -> Workspace:  # noqa: F811
    """A writable copy of the small task's workspace (fingerprint, plans, arrays) with a seeded speed cache."""
    home = tmp_path / "workspace"
    shutil.copytree(small_task.preprocessed_folder.parent.parent, home)
    seed_speed_cache(home)
    return Workspace(home)


def test_replanning_refuses_derived_and_unplanned_configurations(workspace):
    plans = Plans.load(workspace.plans_file(TASK_NAME))
    entries = {**plans.configurations, "3d_fullres_bs4": {"inherits_from": CONFIGURATION, "batch_size": 4},
               "mine": dict(plans.configurations[CONFIGURATION])}
    plans = replace(plans, configurations=entries)
    with pytest.raises(PlanError, match=r"^--time-budget: 3d_fullres_bs4 inherits its network from 3d_fullres; "
                                        r"plan both with `autoseg plan TASK --time-budget 10m`$"):
        replan_for_budget(workspace, TASK_NAME, plans, "3d_fullres_bs4", "0", "10m", "cpu")
    with pytest.raises(PlanError, match=f"^--time-budget: mine is not a configuration autoseg plans for {TASK_NAME}$"):
        replan_for_budget(workspace, TASK_NAME, plans, "mine", "0", "10m", "cpu")


def test_replanning_a_network_other_folds_were_trained_with_is_refused(workspace):
    plans = Plans.load(workspace.plans_file(TASK_NAME))
    replanned = replan_for_budget(workspace, TASK_NAME, plans, CONFIGURATION, "0", "10m", "cpu")
    assert replanned.configuration(CONFIGURATION).budget.time_budget_seconds == 600
    assert Plans.load(workspace.plans_file(TASK_NAME)).to_json() == replanned.to_json()
    # Fold 1 trained with that network: the same budget again is the same network, nothing refused.
    notices = []
    train_fold(workspace, TrainRequest(CONFIGURATION, fold="1", time_budget="10m", device="cpu", epochs=1,
                                       iterations=1, validation_iterations=1, workers=0, validate=False),
               on_replanned=lambda configuration, path: notices.append((configuration, path)))
    assert notices == [(CONFIGURATION, workspace.plans_file(TASK_NAME))]
    with pytest.raises(PlanError, match="fold_1 of 3d_fullres were trained with the current plan"):
        replan_for_budget(workspace, TASK_NAME, replanned, CONFIGURATION, "0", "30m", "cpu")
    assert Plans.load(workspace.plans_file(TASK_NAME)).to_json() == replanned.to_json()  # left as it was
