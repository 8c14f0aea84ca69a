"""Each fold keeps a copy of the plan it was trained with, and prediction uses it: re-planning the
workspace does not change a trained model's outputs (it is only reported); folds of one model trained
with plans that change outputs differently are refused; a checkpoint of another plan is refused."""

import re

import numpy as np
import pytest

from autoseg import api
from autoseg.checkpoint import identity_of_configuration, save_checkpoint
from autoseg.errors import CheckpointError, PlanError
from autoseg.inference.model import load_trained_model
from autoseg.network import build_network
from autoseg.planning.plans import Plans
from autoseg.workspace import Workspace
from autoseg.io import write_image
from test_predict import block_case, block_plans, run  # noqa: F401 - block_plans is a fixture

CONFIGURATION = "3d_fullres"


def save_fold(results, plans, fold, *, keep_copy=True, identity=None):
    """A fold 'trained' with `plans`: an untrained network (seeded, so every fold's weights are equal)
    saved as its final checkpoint, with the copy of the plan a run writes when it starts."""
    import torch

    torch.manual_seed(0)
    network = build_network(plans.configuration(CONFIGURATION).architecture)
    save_checkpoint({"network_weights": network.state_dict(), "optimizer_state": {}, "scaler_state": None,
                     "epoch": 1, "planned_epochs": 1, "log": {}, "best_ema": 0.0,
                     "identity": identity or identity_of_configuration(plans, CONFIGURATION),
                     "inference": {"precision": "fp32"}},
                    results.checkpoint_file(CONFIGURATION, fold))
    if keep_copy:
        plans.save(results.fold_plans_file(CONFIGURATION, fold))


def replanned(plans: Plans) -> Plans:
    """The plan after a re-plan that changes normalization and spacing (same network and patch)."""
    data = plans.to_json()
    entry = data["configurations"][CONFIGURATION]
    entry["normalization"] = ["none" if scheme != "none" else "zscore" for scheme in entry["normalization"]]
    entry["spacing"] = [value * 1.5 for value in entry["spacing"]]
    return Plans.from_json(data)


@pytest.fixture
def workspace(tmp_path, block_plans):
    home = tmp_path / "home"
    name = block_plans.dataset_name
    block_plans.save(home / "preprocessed" / name / "plans.json")
    Workspace(home).remember_task(name, None)
    image, _, geometry = block_case((24, 8, 20), (0.8, 3.0, 0.7), np.s_[5:15, 2:6, 5:15])
    write_image(image, geometry, home / "in" / "case0.nii.gz")
    return Workspace(home), name


def predict(workspace, output):
    """The probabilities predicted for the workspace's one input case."""
    summary = api.predict(workspace.home / "in", output, tta="off", save_probabilities=True,
                          home=workspace.home, device="cpu")
    assert not summary.failures, summary.failures
    return np.load(output / "case0.npz")["probabilities"]


def test_a_replanned_workspace_does_not_change_a_trained_folds_outputs(workspace, block_plans, tmp_path):
    workspace, name = workspace
    results = workspace.task_results(name)
    save_fold(results, block_plans, "0")
    before = predict(workspace, tmp_path / "before")
    replanned(block_plans).save(workspace.plans_file(name))

    [model] = api.load_models(workspace, name, device="cpu")
    assert model.plans.to_json() == block_plans.to_json()
    assert len(model.notes) == 1 and "has changed since" in model.notes[0]
    np.testing.assert_array_equal(predict(workspace, tmp_path / "after"), before)
    # Without its copy the fold would follow the new plan, and predict something else.
    results.fold_plans_file(CONFIGURATION, "0").unlink()
    assert not np.array_equal(predict(workspace, tmp_path / "without_copy"), before)
    block_plans.save(results.fold_plans_file(CONFIGURATION, "0"))
    result = run(workspace.home, str(workspace.home / "in"), str(tmp_path / "cli"), "--no-tta")
    assert result.exit_code == 0, result.output
    assert "note: 3d_fullres folds 0: the workspace's plans.json has changed since" in result.output


def test_folds_trained_with_different_plans_are_refused_in_one_line(workspace, block_plans):
    workspace, name = workspace
    results = workspace.task_results(name)
    save_fold(results, block_plans, "0")
    save_fold(results, replanned(block_plans), "1")
    with pytest.raises(PlanError, match=r"folds 0; folds 1\); predict with --folds") as error:
        load_trained_model(results, block_plans, CONFIGURATION, device="cpu")
    assert "\n" not in str(error.value)
    assert load_trained_model(results, block_plans, CONFIGURATION, folds=["1"], device="cpu").notes


def test_folds_without_a_copy_use_the_workspace_plan(workspace, block_plans):
    workspace, name = workspace
    results = workspace.task_results(name)
    save_fold(results, block_plans, "0", keep_copy=False)
    save_fold(results, block_plans, "1")
    model = load_trained_model(results, block_plans, CONFIGURATION, device="cpu")
    assert model.folds == ["0", "1"] and model.notes == []
    assert model.plans.to_json() == block_plans.to_json()


@pytest.mark.parametrize("key, value", [("patch_size", [8, 8, 8]), ("fingerprint_signature", "another-dataset")])
def test_a_checkpoint_of_another_plan_is_refused_naming_what_differs(workspace, block_plans, key, value):
    workspace, name = workspace
    results = workspace.task_results(name)
    identity = {**identity_of_configuration(block_plans, CONFIGURATION), key: value}
    save_fold(results, block_plans, "0", identity=identity)
    with pytest.raises(CheckpointError, match=re.escape(f"different plan ({key} differs: checkpoint {value!r}")):
        load_trained_model(results, block_plans, CONFIGURATION, device="cpu")
