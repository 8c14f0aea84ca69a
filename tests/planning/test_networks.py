"""Planning several networks: `plan_experiment(..., networks=[...], preset=...)` adds one configuration per
network and dimension, each sized with its own feature maps within the memory target; such a configuration
trains under its suffixed name; unknown networks and presets fail in one line."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from autoseg.errors import PlanError
from autoseg.fingerprint import Fingerprint
from autoseg.network.cost import network_cost
from autoseg.planning import Plans, format_plan_summary, plan_experiment, rules

from helpers_training import CONFIGURATION, small_task, tiny_settings  # noqa: F401

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "fingerprints" / "Task04_Hippocampus.json"


@pytest.fixture(scope="module")
def fingerprint() -> Fingerprint:
    return Fingerprint.load(HIPPOCAMPUS)


def test_networks_add_a_derived_configuration_per_dimension_within_the_memory_target(fingerprint):
    plain = plan_experiment(fingerprint)
    plans = plan_experiment(fingerprint, networks=["plain_unet", "resenc"])
    assert list(plans.configurations) == [*plain.configurations, "3d_fullres_resenc", "2d_resenc"]
    assert plans.to_json()["configurations"]["3d_fullres"] == plain.to_json()["configurations"]["3d_fullres"]
    for name, parent in (("3d_fullres_resenc", "3d_fullres"), ("2d_resenc", "2d")):
        configuration = plans.configuration(name)
        assert configuration.inherits_from == parent
        assert configuration.data_identifier == plans.configuration(parent).data_identifier
        architecture = configuration.architecture
        assert architecture.name == "resenc" and architecture.convs_per_stage == 1
        assert architecture.blocks_per_stage == [1, 3, 4, 6, 6, 6, 6, 6][:architecture.num_stages]
        # The estimate counts the ResEnc's own feature maps, against its own calibration (680e6 / 135e6 at 8 GB).
        elements = network_cost(architecture, configuration.patch_size).feature_map_elements
        reference = rules.RESENC_MEMORY_REFERENCE
        expected = (elements * configuration.batch_size / (reference.elements[configuration.dimension]
                    * rules.REFERENCE_BATCH_SIZE[configuration.dimension]) * 8.0)
        assert configuration.estimated_memory_gb == pytest.approx(expected, abs=1e-3)
        assert configuration.estimated_memory_gb <= plans.gpu_memory_gb
    assert plans.networks == ["plain_unet", "resenc"]
    summary = format_plan_summary(plans)
    assert "3d_fullres_resenc stages:" in summary and "residual blocks" in summary
    assert Plans.from_json(plans.to_json()).to_json() == plans.to_json()


def test_presets_are_memory_targets_and_an_explicit_memory_wins(fingerprint):
    assert rules.memory_target_gb(None, "L") == 24.0 and rules.memory_target_gb(12.0, "L") == 12.0
    assert rules.memory_target_gb(None, None) == 8.0
    with pytest.raises(PlanError, match="preset 'XXL': expected one of M, L, XL"):
        rules.memory_target_gb(None, "XXL")
    plans = plan_experiment(fingerprint, rules.memory_target_gb(12.0, "L"), networks=["resenc"], preset="L")
    assert plans.preset == "L" and plans.to_json()["preset"] == "L"
    configuration = plans.configuration("3d_fullres_resenc")
    assert configuration.estimated_memory_gb <= 12.0
    # No 5% dataset cap with a preset: 260 cases of ~36x50x35 voxels allow a batch far above nnU-Net's default.
    dataset_voxels = math.prod(configuration.median_shape) * fingerprint.num_cases
    assert configuration.batch_size > 0.05 * dataset_voxels / math.prod(configuration.patch_size)
    assert "preset" not in plan_experiment(fingerprint).to_json()  # plain plans unchanged


def test_an_unknown_network_is_one_line_listing_the_known_ones(fingerprint):
    with pytest.raises(PlanError, match=r"^networks: 'vnet' is not a known network; known: plain_unet, attention_unet, unetpp, u2net, resenc"):
        plan_experiment(fingerprint, networks=["resenc", "vnet"])


def test_a_resenc_configuration_trains_under_its_own_name(small_task, tmp_path):  # noqa: F811
    """The small task's plan with a small 3d_fullres_resenc derived from 3d_fullres: one tiny epoch writes
    results/3d_fullres_resenc/fold_0; the default configuration stays the plain 3d_fullres."""
    from autoseg.checkpoint import load_checkpoint
    from autoseg.stages.choice import default_training_configuration
    from autoseg.training.job import TrainingJob
    from autoseg.training.splits import fold_cases, make_splits
    from autoseg.training.trainer import run_training
    from autoseg.workspace import TaskResults

    parent = small_task.plans.configuration(CONFIGURATION)
    architecture = replace(parent.architecture, name="resenc", convs_per_stage=1,
                           blocks_per_stage=rules.encoder_blocks("resenc", parent.architecture.num_stages))
    entries = {**small_task.plans.configurations, "3d_fullres_resenc": {
        "inherits_from": CONFIGURATION, "patch_size": parent.patch_size, "batch_size": 2,
        "architecture": architecture.to_json(), "estimated_memory_gb": 0.01, "budget": None, "over_budget": None}}
    plans = Plans.from_json({**small_task.plans.to_json(), "configurations": entries})
    assert default_training_configuration(plans) == CONFIGURATION

    train_ids, val_ids = fold_cases(make_splits(small_task.case_ids), 0, small_task.case_ids)
    results = TaskResults(tmp_path / "results")
    job = TrainingJob(plans, "3d_fullres_resenc", 0, small_task.data_folder, results, train_ids, val_ids)
    run_training(job, tiny_settings())
    assert job.output_folder == tmp_path / "results" / "3d_fullres_resenc" / "fold_0"
    state = load_checkpoint(results.checkpoint_file("3d_fullres_resenc", 0))
    assert state["identity"]["configuration"] == "3d_fullres_resenc"
    assert state["identity"]["architecture"]["name"] == "resenc"
    assert results.trained_folds("3d_fullres_resenc") == ["0"]


def test_replanning_without_networks_drops_the_old_variants(fingerprint):
    from autoseg.stages.plan import keep_user_configurations

    old = plan_experiment(fingerprint, networks=["resenc"])
    new, kept, dropped = keep_user_configurations(plan_experiment(fingerprint), old.to_json()["configurations"])
    assert kept == [] and "3d_fullres_resenc" not in new.configurations
    assert [reason.split(" ")[0] for reason in dropped] == ["3d_fullres_resenc", "2d_resenc"]
    assert "its network was sized for the old plan" in dropped[0]
