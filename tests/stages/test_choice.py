"""Which configuration train and predict use when none is named (autoseg.stages.choice).

find-best's choice taking precedence is tested with real selections in tests/test_selection.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from autoseg.errors import WorkspaceError
from autoseg.fingerprint import Fingerprint
from autoseg.planning import plan_experiment
from autoseg.planning.time_budget import OverBudget
from autoseg.stages.choice import (configurations_within_budget, default_prediction_configurations,
                                   default_training_configuration)
from autoseg.workspace import TaskResults

REFERENCE = Path(__file__).resolve().parents[2] / "fingerprints" / "Task03_Liver.json"
OVER_BUDGET = OverBudget(time_budget_seconds=600.0, minimum_budget_seconds=7300.0, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def plans():
    """The liver plan: 2d, 3d_fullres, 3d_lowres and 3d_cascade_fullres."""
    return plan_experiment(Fingerprint.load(REFERENCE))


def over_budget(plans, *names: str):
    entries = {name: dict(entry) for name, entry in plans.configurations.items()}
    for name in names:
        entries[name]["over_budget"] = OVER_BUDGET.to_json()
    return replace(plans, configurations=entries)


def test_training_prefers_3d_fullres_then_2d_among_those_within_the_budget(plans):
    assert {"2d", "3d_fullres", "3d_lowres"} <= set(plans.configuration_names)
    assert configurations_within_budget(plans) == plans.configuration_names
    assert default_training_configuration(plans) == "3d_fullres"
    assert default_training_configuration(over_budget(plans, "3d_fullres")) == "2d"
    fitting = [n for n in plans.configuration_names if n not in ("3d_fullres", "2d")]
    assert default_training_configuration(over_budget(plans, "3d_fullres", "2d")) == fitting[0]
    # Nothing fits: the first configuration (train refuses it unless given a schedule).
    assert default_training_configuration(over_budget(plans, *plans.configuration_names)) == \
        plans.configuration_names[0]


def trained(results: TaskResults, configuration: str, fold: str = "0", checkpoint: str = "final") -> None:
    path = results.checkpoint_file(configuration, fold, checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_prediction_takes_the_only_trained_configuration_else_the_preferred(plans, tmp_path):
    results = TaskResults(tmp_path / "results" / "Task03_Liver")
    with pytest.raises(WorkspaceError, match="no trained configuration with checkpoint_final.pt; run `autoseg train`"):
        default_prediction_configurations(results, plans, "final")
    trained(results, "3d_lowres")
    trained(results, "not_in_the_plan")
    assert default_prediction_configurations(results, plans, "final") == ["3d_lowres"]
    trained(results, "2d", fold="1")
    assert default_prediction_configurations(results, plans, "final") == ["2d"]
    trained(results, "3d_fullres", checkpoint="best")  # not a final checkpoint
    assert default_prediction_configurations(results, plans, "final") == ["2d"]
    assert default_prediction_configurations(results, plans, "best") == ["3d_fullres"]
    trained(results, "3d_fullres")
    assert default_prediction_configurations(results, plans, "final") == ["3d_fullres"]


# --------------------------------------------------------------------------------- mirror TTA (--tta)


def fake_model(name: str, dimension: int, mirroring_choice=None):
    from types import SimpleNamespace

    return SimpleNamespace(configuration_name=name, configuration=SimpleNamespace(dimension=dimension),
                           mirroring_choice=mirroring_choice)


def test_tta_auto_takes_each_configurations_recorded_choice_else_all_axes():
    from autoseg.mirror_choice import MirroringChoice
    from autoseg.stages.choice import prediction_mirroring

    models = [fake_model("2d", 2), fake_model("3d_fullres", 3)]
    before = prediction_mirroring("auto", models)
    assert {n: (d.mirror_axes, d.reason) for n, d in before.items()} == {
        "2d": ((0, 1), "default: find-best recorded no TTA choice for 2d"),
        "3d_fullres": ((0, 1, 2), "default: find-best recorded no TTA choice for 3d_fullres")}
    models[1].mirroring_choice = MirroringChoice("axis:2", [2], {"off": 0.8, "axis:2": 0.9001, "all": 0.9012})
    after = prediction_mirroring("auto", models)
    assert after["3d_fullres"].mirror_axes == (2,) and after["3d_fullres"].name == "axis:2"
    assert after["3d_fullres"].reason == "find-best's choice: cross-validation Dice 0.9001, all axes 0.9012"
    assert after["2d"].mirror_axes == (0, 1) and "recorded no TTA choice for 2d" in after["2d"].reason
    models[0].mirroring_choice = MirroringChoice(None, None, note="fold(s) 0 validated without mirroring")
    assert prediction_mirroring("auto", models)["2d"].reason == (
        "default: find-best made no TTA choice (fold(s) 0 validated without mirroring)")


def test_explicit_tta_overrides_the_choice_and_bad_values_are_clear_errors():
    from autoseg.errors import AutosegError
    from autoseg.stages.choice import prediction_mirroring

    models = [fake_model("2d", 2), fake_model("3d_fullres", 3)]
    assert {n: d.mirror_axes for n, d in prediction_mirroring("off", models).items()} == {
        "2d": (), "3d_fullres": ()}
    assert prediction_mirroring("all", models)["3d_fullres"].mirror_axes == (0, 1, 2)
    assert prediction_mirroring("axis:1", models)["2d"].reason == "--tta axis:1"
    with pytest.raises(AutosegError, match="2d is a 2D network, its mirror sets are off, axis:0, axis:1, all"):
        prediction_mirroring("axis:2", models)
    with pytest.raises(AutosegError, match="--tta 'sideways': expected auto, off, all or axis:N"):
        prediction_mirroring("sideways", models)
