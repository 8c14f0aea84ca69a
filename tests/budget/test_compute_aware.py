"""Compute-aware planning wired through plan and train: the budget in plans.json, the schedule train
takes from it, the mixed-precision check, the timing report, and the CPU defaults.

Device speeds are seeded into the workspace's cache with chosen coefficients (helpers_budget: the CLI
reuses a cached measurement of this machine instead of benchmarking), so the tests do not depend on how
busy the CPU is. The stage logic of re-planning and of refusing an over-budget configuration is
tested through the cores in tests/stages/.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.demo import DemoSpec, make_demo_dataset
from autoseg.hardware import training_workers
from autoseg.planning import Plans
from autoseg.budget.time_model import FORWARD_SHARE
from autoseg.planning.time_budget import BudgetDecision, parse_duration
from autoseg.budget.compute_aware import plan_within_budget, precisions_to_measure, trainable_configurations, training_schedule
from autoseg.training import expectations
from autoseg.training.expectations import mean_dice, precision_check_epoch, timing_report
from helpers_budget import fake_speed, seed_speed_cache
from helpers_training import (CONFIGURATION, TASK_NAME, fold_folder, small_task, tiny_settings,  # noqa: F401
                              training_job)

GB = 1024**3


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Path:
    """A workspace with 10 demo CT cases of about 24x48x48 in raw/ and a seeded speed cache."""
    home = tmp_path_factory.mktemp("home")
    make_demo_dataset(home / "raw", TASK_NAME, DemoSpec(cases=10, shape=(24, 48, 48), spacing=(2.0, 1.0, 1.0)))
    seed_speed_cache(home)
    return home


def run(home: Path, *arguments: str):
    return CliRunner().invoke(app, ["--home", str(home), *arguments])


# --- plan --time-budget ---------------------------------------------------------------------------
def test_plan_with_a_time_budget_records_the_decision_and_shows_the_predicted_times(demo_home):
    result = run(demo_home, "plan", TASK_NAME, "--time-budget", "10m", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "device speed: 3D networks on cpu at fp32" in result.output
    for row in ("predicted time / epoch", "predicted time / fold", "epochs x iterations", "minimum budget"):
        assert row in result.output
    plans = Plans.load(demo_home / "preprocessed" / TASK_NAME / "plans.json")
    for name in trainable_configurations(plans):
        configuration = plans.configuration(name)
        budget = configuration.budget
        assert budget.time_budget_seconds == 600 and budget.seconds_per_fold <= 600
        # The stored network is the decision's: its patch, batch and width.
        assert configuration.patch_size == budget.patch_size and configuration.batch_size == budget.batch_size
        assert configuration.architecture.features_per_stage[0] == budget.base_features
        assert budget.device == "cpu" and set(budget.seconds_per_iteration_by_precision) == \
            set(precisions_to_measure("cpu"))
    # Without a budget the plan is the memory-sized one, with no budget entry.
    result = run(demo_home, "plan", TASK_NAME)
    assert result.exit_code == 0, result.output
    plans = Plans.load(demo_home / "preprocessed" / TASK_NAME / "plans.json")
    assert all(plans.configuration(n).budget is None for n in plans.configurations)
    assert "predicted time" not in result.output


def test_plan_with_too_small_a_budget_is_a_one_line_error_stating_the_minimum(demo_home):
    result = run(demo_home, "plan", TASK_NAME, "--time-budget", "20s", "--device", "cpu")
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and "time budget 20s is too small" in errors[0] and "needs at least" in errors[0]
    assert "Traceback" not in result.output


def test_a_bad_budget_or_a_stale_budget_entry_is_refused_with_the_field_named(demo_home, tmp_path):
    result = run(demo_home, "plan", TASK_NAME, "--time-budget", "2 hours")
    assert result.exit_code == 1 and "expected e.g. '45m'" in result.stderr
    assert run(demo_home, "plan", TASK_NAME, "--time-budget", "1h", "--device", "cpu").exit_code == 0
    data = json.loads((demo_home / "preprocessed" / TASK_NAME / "plans.json").read_text())
    del data["configurations"]["3d_fullres"]["budget"]["epochs"]
    (tmp_path / "plans.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="configuration '3d_fullres': field 'budget': missing fields \\['epochs'\\]"):
        Plans.load(tmp_path / "plans.json")


def test_the_faster_precision_buys_a_better_plan_and_a_slower_one_is_not_chosen(demo_home):
    run(demo_home, "plan", TASK_NAME)
    plans = Plans.load(demo_home / "preprocessed" / TASK_NAME / "plans.json")
    budget = parse_duration("10m")
    for speedup, expected in ((2.0, "bf16"), (0.8, "fp32")):
        speeds = {3: [fake_speed("fp32", 3), fake_speed("bf16", 3, speedup)]}
        _, decisions = plan_within_budget(plans, budget, speeds, num_training_cases=10, configurations=["3d_fullres"])
        assert decisions["3d_fullres"].precision == expected
    fp32_only = {3: [fake_speed("fp32", 3)]}
    _, fp32 = plan_within_budget(plans, budget, fp32_only, num_training_cases=10, configurations=["3d_fullres"])
    _, bf16 = plan_within_budget(plans, budget, {3: [fake_speed("fp32", 3), fake_speed("bf16", 3, 2.0)]},
                                 num_training_cases=10, configurations=["3d_fullres"])
    more = lambda d: (math.prod(d.patch_size), d.base_features, d.epochs * d.iterations_per_epoch)  # noqa: E731
    assert more(bf16["3d_fullres"]) >= more(fp32["3d_fullres"]) and more(bf16["3d_fullres"]) != more(fp32["3d_fullres"])


# --- the schedule train takes ------------------------------------------------------------------------
BUDGET = BudgetDecision(
    epochs=40, iterations_per_epoch=50, validation_iterations_per_epoch=10, precision="bf16",
    seconds_per_iteration=2.0, seconds_per_iteration_by_precision={"bf16": 2.0, "fp32": 3.0},
    # not read by training_schedule:
    configuration="3d_fullres", time_budget_seconds=1.0, device="cpu", patch_size=[8, 8, 8], batch_size=2,
    base_features=8, features_per_stage=[8], seconds_per_epoch=1.0, seconds_final_validation=1.0,
    seconds_per_fold=1.0, minimum_budget_seconds=1.0, planned_patch_size=[8, 8, 8], planned_batch_size=2,
    planned_seconds_per_iteration=1.0, patch_coverage=1.0, cost_model_max_relative_error=0.0)


def test_schedule_without_a_budget_is_nnunets():
    schedule = training_schedule(None)
    assert (schedule.epochs, schedule.iterations_per_epoch, schedule.validation_iterations) == (1000, 250, 50)
    assert schedule.precision == "auto" and schedule.expected_epoch_seconds is None


def test_schedule_from_the_budget_and_what_the_user_overrides():
    schedule = training_schedule(BUDGET)
    assert (schedule.epochs, schedule.iterations_per_epoch, schedule.validation_iterations) == (40, 50, 10)
    assert schedule.precision == "bf16" and schedule.confirm_precision
    assert schedule.expected_epoch_seconds == pytest.approx((50 * 2.0 + 10 * 2.0 * FORWARD_SHARE) * 1.03)
    forced = training_schedule(BUDGET, epochs=5, iterations=100, precision="fp32")
    assert (forced.epochs, forced.iterations_per_epoch, forced.validation_iterations) == (5, 100, 20)
    assert forced.precision == "fp32" and not forced.confirm_precision
    assert forced.expected_epoch_seconds == pytest.approx((100 * 3.0 + 20 * 3.0 * FORWARD_SHARE) * 1.03)


# --- checks during training ----------------------------------------------------------------------------
def test_timing_report_warns_beyond_30_percent():
    assert timing_report("epoch", 10.0, 12.9) == ("epoch: measured 12.9 s, predicted 10.0 s (+29%)", False)
    text, warn = timing_report("epoch", 10.0, 13.1)
    assert warn and "(+31%)" in text and "more than 30% off" in text
    assert timing_report("epoch", 10.0, 6.9)[1] and not timing_report("epoch", 10.0, 7.1)[1]


def test_precision_check_epoch_and_mean_dice_by_hand():
    assert [precision_check_epoch(n) for n in (1, 20, 37, 60, 1000)] == [1, 1, 2, 3, 5]
    # class 1: 2*8 / (16 + 2 + 2) = 0.8; class 2: absent from both (left out); class 3: 0 / (0 + 1 + 1) = 0
    assert mean_dice([[8, 2, 2], [0, 0, 0], [0, 1, 1]]) == pytest.approx(0.4)
    assert mean_dice([[0, 0, 0]]) == 0.0


def test_trainer_checks_the_mixed_precision_once_and_inference_follows_the_verdict(small_task, tmp_path):
    import re

    from autoseg.checkpoint import load_checkpoint
    from autoseg.training.job import TrainingEvents
    from autoseg.training.trainer import run_training

    messages = []
    run_training(training_job(small_task, tmp_path), tiny_settings(epochs=2, iterations_per_epoch=2, precision="bf16",
                                                                   confirm_precision=True),
                 TrainingEvents(on_message=messages.append))
    checks = [m for m in messages if m.startswith("precision check after epoch 1: bf16")]
    assert len(checks) == 1
    mixed, fp32 = (float(v) for v in re.findall(r"\d\.\d{4}", checks[0]))
    kept = expectations.mixed_precision_holds(fp32, mixed)
    assert ("keeping bf16" in checks[0]) == kept
    state = load_checkpoint(fold_folder(tmp_path) / "checkpoint_final.pt")
    assert state["inference"]["precision"] == ("bf16" if kept else "fp32") and state["precision_checked"]


def test_trainer_falls_back_to_fp32_when_mixed_precision_loses_dice_and_resume_keeps_it(small_task, tmp_path,
                                                                                      monkeypatch):
    from autoseg.checkpoint import load_checkpoint
    from autoseg.training.job import TrainingEvents
    from autoseg.training.trainer import Trainer, run_training

    monkeypatch.setattr(expectations, "mixed_precision_holds", lambda fp32, mixed, tolerance=0.01: False)
    messages = []
    run_training(training_job(small_task, tmp_path), tiny_settings(epochs=2, iterations_per_epoch=1, precision="bf16",
                                                                   confirm_precision=True),
                 TrainingEvents(on_message=messages.append))
    assert any("continuing in fp32" in m for m in messages)
    state = load_checkpoint(fold_folder(tmp_path) / "checkpoint_final.pt")
    assert state["inference"]["precision"] == "fp32"  # inference follows the verdict
    resumed = Trainer(training_job(small_task, tmp_path, resume=True),
                      tiny_settings(epochs=3, precision="bf16", confirm_precision=True))
    resumed.restore(fold_folder(tmp_path) / "checkpoint_latest.pt")
    assert resumed.amp_dtype is None and resumed.precision == "fp32"


def test_trainer_reports_the_measured_epoch_time_against_the_plan(small_task, tmp_path):
    from autoseg.training.job import TrainingEvents
    from autoseg.training.trainer import run_training

    messages = []
    run_training(training_job(small_task, tmp_path), tiny_settings(epochs=3, expected_epoch_seconds=1e-4),
                 TrainingEvents(on_message=messages.append))
    reports = [m for m in messages if m.startswith("time per epoch after 3 epoch(s)")]
    assert len(reports) == 1 and "predicted 0.0 s" in reports[0] and "more than 30% off" in reports[0]


# --- train with a budgeted plan ---------------------------------------------------------------------------
@pytest.fixture
def budgeted_workspace(small_task, tmp_path) -> Path:
    """The small task's workspace whose plan carries a budget of 2 epochs x 3 iterations, final
    validation without mirroring."""
    from autoseg.planning.time_budget import BudgetDecision

    home = tmp_path / "workspace"
    shutil.copytree(small_task.preprocessed_folder.parent.parent, home)
    plans_file = home / "preprocessed" / TASK_NAME / "plans.json"
    data = json.loads(plans_file.read_text())
    entry = data["configurations"][CONFIGURATION]
    decision = BudgetDecision(
        configuration=CONFIGURATION, time_budget_seconds=60.0, device="cpu", precision="fp32",
        patch_size=entry["patch_size"], batch_size=entry["batch_size"],
        base_features=entry["architecture"]["features_per_stage"][0],
        features_per_stage=entry["architecture"]["features_per_stage"], epochs=2, iterations_per_epoch=3,
        validation_iterations_per_epoch=1, seconds_per_iteration=0.1, seconds_per_epoch=0.35,
        seconds_final_validation=5.0, seconds_per_fold=5.7, minimum_budget_seconds=5.0,
        planned_patch_size=entry["patch_size"], planned_batch_size=entry["batch_size"],
        planned_seconds_per_iteration=0.1, patch_coverage=1.0, cost_model_max_relative_error=0.1,
        seconds_per_iteration_by_precision={"fp32": 0.1}, final_validation_mirroring=False)
    entry["budget"] = decision.to_json()
    plans_file.write_text(json.dumps(data))
    return home


def test_train_takes_epochs_and_iterations_from_the_budget_and_reports_the_times(budgeted_workspace):
    result = run(budgeted_workspace, "train", CONFIGURATION, "--fold", "0", "--workers", "0", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "2 epochs x 3 iterations" in result.output and "planned for 1m00s on cpu" in result.output
    assert "time per epoch after 2 epoch(s): measured" in result.output
    assert "time for the fold (validation included): measured" in result.output
    fold = budgeted_workspace / "results" / TASK_NAME / CONFIGURATION / "fold_0"
    assert len((fold / "training_log.txt").read_text().splitlines()) == 2
    # The budget dropped mirroring from the final validation: the fold is validated without it.
    assert json.loads((fold / "validation" / "validation_info.json").read_text())["use_tta"] is False


def test_train_time_budget_replans_the_configuration_from_the_fingerprint(budgeted_workspace):
    seed_speed_cache(budgeted_workspace)
    arguments = ["train", CONFIGURATION, "--fold", "0", "--time-budget", "10m", "--device", "cpu", "--epochs", "1",
                 "--iterations", "1", "--val-iterations", "1", "--workers", "0", "--no-validate"]
    result = run(budgeted_workspace, *arguments)
    assert result.exit_code == 0, result.output
    assert "re-planned 3d_fullres for 10m per fold" in result.output
    plans = Plans.load(budgeted_workspace / "preprocessed" / TASK_NAME / "plans.json")
    assert plans.configuration(CONFIGURATION).budget.time_budget_seconds == 600
    # Refusing to re-plan a network other folds were trained with: tests/stages/test_plan.py.


# --- CPU defaults ---------------------------------------------------------------------------------------------
def test_training_workers_from_device_cpus_and_memory():
    batch = 100 * 1024**2  # 100 MB per batch
    assert training_workers("cpu", cpus=2, available_bytes=16 * GB, batch_bytes=batch) == 1
    assert training_workers("cpu", cpus=1, available_bytes=16 * GB, batch_bytes=batch) == 0
    assert training_workers("cuda", cpus=16, available_bytes=64 * GB, batch_bytes=batch) == 12
    assert training_workers("cuda", cpus=4, available_bytes=64 * GB, batch_bytes=batch) == 3
    # 2 GB free, half of it for workers holding 4 batches of 100 MB: 2 workers fit.
    assert training_workers("cuda", cpus=16, available_bytes=2 * GB, batch_bytes=batch) == 2


def test_inference_batch_windows_from_device_cpus_and_memory():
    from autoseg.hardware import inference_batch_windows

    window = 1 * GB  # the feature maps of one planned 3D full-res window
    assert inference_batch_windows("cpu", cpus=8, available_bytes=64 * GB, bytes_per_window=window) == 2
    assert inference_batch_windows("cpu", cpus=1, available_bytes=64 * GB, bytes_per_window=window) == 1
    assert inference_batch_windows("cuda", cpus=8, available_bytes=80 * GB, bytes_per_window=window) == 4
    # 3 GB free: half of it holds one window, so one at a time (and never zero, even with less).
    assert inference_batch_windows("cuda", cpus=8, available_bytes=3 * GB, bytes_per_window=window) == 1
    assert inference_batch_windows("cpu", cpus=8, available_bytes=GB // 4, bytes_per_window=window) == 1


# --- configurations that do not fit ----------------------------------------------------------------------
def test_a_configuration_too_costly_for_the_budget_is_marked_and_the_others_are_planned(demo_home):
    from autoseg.errors import BudgetTooSmall

    assert run(demo_home, "plan", TASK_NAME).exit_code == 0
    plans = Plans.load(demo_home / "preprocessed" / TASK_NAME / "plans.json")
    assert {"2d", "3d_fullres"} <= set(plans.configurations)
    budget = parse_duration("10m")
    slow_3d = {2: [fake_speed("fp32", 2)], 3: [fake_speed("fp32", 3, speedup=1e-3)]}  # 1000x slower 3D
    budgeted, decisions = plan_within_budget(plans, budget, slow_3d, num_training_cases=10)
    assert set(decisions) == {"2d"}
    assert budgeted.configuration("2d").budget.seconds_per_fold <= budget
    fullres = budgeted.configuration("3d_fullres")
    assert fullres.budget is None and fullres.over_budget.time_budget_seconds == budget
    assert fullres.over_budget.minimum_budget_seconds > budget and fullres.over_budget.device == "cpu"
    assert fullres.patch_size == plans.configuration("3d_fullres").patch_size  # the unconstrained plan kept
    # Named explicitly (train --time-budget re-plans one configuration), a configuration that does not fit
    # is an error; so is a budget too small for every configuration, which states the cheapest minimum.
    with pytest.raises(BudgetTooSmall, match="configuration '3d_fullres'"):
        plan_within_budget(plans, budget, slow_3d, num_training_cases=10, configurations=["3d_fullres"])
    with pytest.raises(BudgetTooSmall) as error:
        plan_within_budget(plans, 1.0, slow_3d, num_training_cases=10)
    assert error.value.configuration == "2d" and "needs at least" in str(error.value)


def test_the_precision_closest_to_fitting_states_the_minimum(demo_home):
    from autoseg.errors import BudgetTooSmall
    from autoseg.budget.compute_aware import best_decision

    run(demo_home, "plan", TASK_NAME)
    plans = Plans.load(demo_home / "preprocessed" / TASK_NAME / "plans.json")
    speeds = [fake_speed("fp32", 3), fake_speed("bf16", 3, 2.0)]
    with pytest.raises(BudgetTooSmall) as error:
        best_decision(plans, "3d_fullres", 1.0, speeds, 10)
    assert error.value.precision == "bf16" and "(cpu, bf16)" in str(error.value)


def test_plan_and_train_with_a_configuration_over_budget(budgeted_workspace):
    plans_file = budgeted_workspace / "preprocessed" / TASK_NAME / "plans.json"
    data = json.loads(plans_file.read_text())
    entry = data["configurations"][CONFIGURATION]
    del entry["budget"]
    entry["over_budget"] = {"time_budget_seconds": 600.0, "minimum_budget_seconds": 7300.0, "device": "cpu",
                            "precision": "bf16"}
    plans_file.write_text(json.dumps(data))
    plans = Plans.load(plans_file)
    from autoseg.planning.summary import format_plan_summary

    assert f"{CONFIGURATION} does not fit: one fold needs at least 2h02m on cpu (bf16)" in format_plan_summary(plans)
    refused = run(budgeted_workspace, "train", CONFIGURATION, "--fold", "0", "--workers", "0", "--device", "cpu")
    assert refused.exit_code == 1 and len(refused.stderr.splitlines()) == 1
    assert f"{CONFIGURATION} does not fit the plan's time budget of 10m00s" in refused.stderr
    assert "--time-budget 2h02m" in refused.stderr and "Traceback" not in refused.output
    assert not (budgeted_workspace / "results" / TASK_NAME / CONFIGURATION / "fold_0").exists()
    # An explicit schedule trains it anyway: tests/stages/test_train.py.
    entry["over_budget"] = {"time_budget_seconds": "10m"}
    plans_file.write_text(json.dumps(data))
    with pytest.raises(Exception, match="field 'over_budget': expected an object with exactly the fields"):
        Plans.load(plans_file)
