"""Compute-aware planning: cost model, device-speed cache, precision choice, budget solver.

The solver tests use DeviceSpeed objects built with chosen coefficients (no benchmark), from a
GPU-like to a slow-CPU-like machine; one small test runs the real micro-benchmark on a tiny network.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest

from autoseg.errors import PlanError
from autoseg.fingerprint import ChannelIntensity, Fingerprint
from autoseg.network.architecture import Architecture, convolution_macs, feature_map_elements
from autoseg.planning import plan_experiment
from autoseg.budget.candidates import Candidate, benchmark_probes, patch_chain
from autoseg.budget.solver import apply_budget, build_ladder, solve_budget
from autoseg.budget.time_model import candidate_cost, fold_seconds, schedule_for, sliding_windows
from autoseg.planning.time_budget import BudgetDecision, OverBudget, format_duration, parse_duration
from autoseg.budget.measurement import load_or_measure, measure_device_speed
from autoseg.budget.speed import CostModel, DeviceSpeed, Probe, SpeedSample, fit_cost_model, work_of
from autoseg.device import choose_precision, cpu_supports_bf16

FINGERPRINTS = Path(__file__).resolve().parents[2] / "fingerprints"
INTENSITY = ChannelIntensity(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                             percentile_99_5=1.0)
# (seconds fixed, per activation element, per MAC): an H100-like GPU, a mid-range GPU, a slow 2-core CPU
SPEEDS = {"fast_gpu": (0.02, 2e-11, 2e-14), "mid_gpu": (0.05, 2e-10, 2e-13), "slow_cpu": (0.05, 3.6e-8, 8.6e-11)}
HOUR = 3600.0


def thick_slice_mri() -> Fingerprint:
    """30 MRI cases of 24 x 256 x 256 voxels at 6 x 0.8 x 0.8 mm (z, y, x)."""
    return Fingerprint(dataset_name="Task900_ThickMRI", modality={"0": "T2"}, labels={"0": "background", "1": "organ"},
                       num_cases=30, median_spacing=[6.0, 0.8, 0.8], spacing_percentile_10=[6.0, 0.8, 0.8],
                       median_cropped_shape=[24.0, 256.0, 256.0], median_relative_size_after_cropping=1.0,
                       intensity_per_channel={"0": INTENSITY})


def fake_speed(name: str, dimension: int = 3) -> DeviceSpeed:
    device = "cpu" if "cpu" in name else "cuda"
    return DeviceSpeed(device=device, precision="fp32", dimension=dimension, model=CostModel(*SPEEDS[name]),
                       max_relative_error=0.0)


@pytest.fixture(scope="module")
def plans_by_task():
    """(plans, number of cases) per dataset."""
    fingerprints = [Fingerprint.load(FINGERPRINTS / f"{task}.json")
                    for task in ("Task04_Hippocampus", "Task05_Prostate", "Task09_Spleen")] + [thick_slice_mri()]
    return {fp.dataset_name: (plan_experiment(fp), fp.num_cases) for fp in fingerprints}


# --- cost model ------------------------------------------------------------------------------------
def tiny_2d_architecture() -> Architecture:
    return Architecture(name="plain_unet", dimension=2, input_channels=1, num_classes=2, features_per_stage=[2, 4],
                        kernel_sizes=[[3, 3], [3, 3]], strides=[[1, 1], [2, 2]])


def test_convolution_macs_by_hand():
    # Patch 4x4 (16 voxels), stage 1 at 2x2 (4 voxels), kernels 3x3 (9):
    # encoder 16*9*1*2 + 16*9*2*2 + 4*9*2*4 + 4*9*4*4 = 288 + 576 + 288 + 576
    # decoder: transposed conv 4 inputs * 2x2 kernel * 4 * 2 = 128, conv on the concatenation
    # 16*9*4*2 = 1152, second conv 16*9*2*2 = 576, 1x1 head 16*2*2 = 64.
    assert convolution_macs(tiny_2d_architecture(), [4, 4]) == 288 + 576 + 288 + 576 + 128 + 1152 + 576 + 64


def test_convolution_macs_match_torch_flop_counter_on_a_planned_network(plans_by_task):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from autoseg.network import build_network

    configuration = plans_by_task["Task900_ThickMRI"][0].configuration("3d_fullres")
    patch = [16, 32, 32]
    architecture = replace(configuration.architecture, features_per_stage=[4, 8, 16, 32, 40, 40, 40][:3],
                           kernel_sizes=configuration.architecture.kernel_sizes[:2] + [[3, 3, 3]],
                           strides=configuration.architecture.strides[:3])
    network = build_network(architecture)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(torch.zeros(1, 1, *patch))
    assert counter.get_total_flops() == 2 * convolution_macs(architecture, patch)


def synthetic_samples(model: CostModel, noise: list[float] | None = None) -> list[SpeedSample]:
    """Samples timed by a known model on real probe networks (two patch sizes x two widths x two batches)."""
    configuration = plan_experiment(thick_slice_mri()).configuration("3d_fullres")
    from autoseg.budget.candidates import candidate_architecture

    samples = []
    for patch in ([16, 64, 64], [16, 128, 128]):
        for width in (32, 16):
            for batch in (1, 2):
                architecture = candidate_architecture(configuration, patch, width)
                elements, macs = work_of(architecture, patch, batch)
                seconds = model.seconds(elements, macs) * (1 + (noise[len(samples)] if noise else 0.0))
                samples.append(SpeedSample(patch, architecture.features_per_stage, batch, elements, macs, seconds))
    return samples


def test_cost_model_fit_recovers_known_coefficients():
    truth = CostModel(0.3, 3e-8, 9e-11)
    fitted, error = fit_cost_model(synthetic_samples(truth))
    assert fitted.seconds_fixed == pytest.approx(0.3, rel=1e-6)
    assert fitted.seconds_per_element == pytest.approx(3e-8, rel=1e-6)
    assert fitted.seconds_per_mac == pytest.approx(9e-11, rel=1e-6)
    assert error < 1e-6


def test_cost_model_fit_with_timing_noise_predicts_within_the_noise():
    truth = CostModel(0.3, 3e-8, 9e-11)
    noise = [0.03, -0.03, 0.02, -0.01, -0.02, 0.03, 0.01, -0.03]  # +-3% per sample
    fitted, error = fit_cost_model(synthetic_samples(truth, noise))
    assert error <= 0.06
    # A candidate outside the probes (a bigger patch) is predicted within 10% of the true model.
    architecture = Architecture(name="plain_unet", dimension=3, input_channels=1, num_classes=2,
                                features_per_stage=[32, 64, 128, 256], kernel_sizes=[[1, 3, 3]] * 3 + [[3, 3, 3]],
                                strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]])
    elements, macs = work_of(architecture, [16, 160, 160], 2)
    assert fitted.seconds(elements, macs) == pytest.approx(truth.seconds(elements, macs), rel=0.1)


def test_cost_model_needs_three_samples():
    with pytest.raises(PlanError, match="at least 3"):
        fit_cost_model(synthetic_samples(CostModel(0.1, 1e-8, 1e-11))[:2])


# --- real measurement and cache ----------------------------------------------------------------------
def tiny_probes() -> list[Probe]:
    def unet(features):
        return Architecture(name="plain_unet", dimension=3, input_channels=1, num_classes=2, features_per_stage=features,
                            kernel_sizes=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]])

    return [Probe(unet([4, 8]), [8, 8, 8], 1), Probe(unet([4, 8]), [8, 16, 16], 1), Probe(unet([8, 16]), [8, 16, 16], 2)]


def test_measurement_times_steps_with_the_given_clock():
    ticks = iter(range(0, 10_000, 1))  # each clock call advances 1 s: every timed step lasts exactly 1 s
    speed = measure_device_speed("cpu", tiny_probes(), "fp32", warmup_steps=1, timed_steps=2,
                                 clock=lambda: float(next(ticks)))
    assert [s.seconds for s in speed.samples] == [1.0, 1.0, 1.0]
    assert speed.model.seconds_fixed == pytest.approx(1.0)
    assert speed.max_relative_error == pytest.approx(0.0, abs=1e-9)
    assert speed.dimension == 3 and speed.precision == "fp32" and speed.identity["threads"] >= 1


def test_on_a_cpu_each_iteration_also_pays_for_its_batch_of_data():
    from dataclasses import replace as replaced

    from autoseg.budget.measurement import time_data_pipeline
    from autoseg.budget.speed import DataPipelineModel

    ticks = iter(range(0, 10_000, 1))  # every timed step, network or data, lasts exactly 1 s
    speed = measure_device_speed("cpu", tiny_probes(), "fp32", warmup_steps=1, timed_steps=2,
                                 clock=lambda: float(next(ticks)))
    assert speed.data_pipeline.seconds_fixed == pytest.approx(1.0)
    assert speed.data_pipeline.seconds_per_voxel == pytest.approx(0.0, abs=1e-12)
    probe = tiny_probes()[0]
    # 1 s of network (the fitted constant) + 1 s of sampling and augmentation
    assert speed.seconds_per_iteration(probe.architecture, probe.patch_size, probe.batch_size) == pytest.approx(2.0)
    # A GPU's workers run on otherwise idle cores: no data term.
    on_gpu = replaced(speed, device="cuda")
    assert on_gpu.seconds_per_iteration(probe.architecture, probe.patch_size, probe.batch_size) == pytest.approx(1.0)
    assert DeviceSpeed.from_json(json.loads(json.dumps(speed.to_json()))) == speed
    pipeline = DataPipelineModel(seconds_fixed=0.01, seconds_per_voxel=1e-8)
    assert pipeline.seconds([10, 20, 30], batch_size=2, input_channels=3) == pytest.approx(0.01 + 1e-8 * 2 * 4 * 6000)
    # The real pipeline runs for 2D (slices of 3D arrays) and 3D patches.
    assert time_data_pipeline([32, 32], 4, 3, 1, time.perf_counter, 0) > 0
    assert time_data_pipeline([16, 24, 24], 2, 1, 1, time.perf_counter, 0) > 0


def test_load_or_measure_writes_the_cache_and_reuses_it(tmp_path):
    calls = []

    def measure(device, probes, precision):
        calls.append(precision)
        return measure_device_speed(device, probes, precision, warmup_steps=1, timed_steps=1)

    cache = tmp_path / "device_speed.json"
    first = load_or_measure(cache, "cpu", tiny_probes(), "fp32", measure=measure)
    assert calls == ["fp32"] and cache.is_file()
    assert all(s.seconds > 0 for s in first.samples)
    again = load_or_measure(cache, "cpu", tiny_probes(), "fp32", measure=measure)
    assert calls == ["fp32"]  # not measured again
    assert again == first
    load_or_measure(cache, "cpu", tiny_probes(), "bf16", measure=measure)  # another precision: a new entry
    assert calls == ["fp32", "bf16"]
    assert len(json.loads(cache.read_text())["measurements"]) == 2
    load_or_measure(cache, "cpu", tiny_probes(), "fp32", measure=measure, refresh=True)
    assert calls == ["fp32", "bf16", "fp32"]


def test_benchmark_probes_are_small_planned_networks_of_two_widths(plans_by_task):
    plans = plans_by_task["Task900_ThickMRI"][0]
    probes = benchmark_probes(plans, "3d_fullres", "cpu", probe_elements=2e7)
    assert len(probes) == 4
    assert {p.architecture.features_per_stage[0] for p in probes} == {32, 8}
    for probe in probes:
        assert all(n % d == 0 for n, d in zip(probe.patch_size, probe.architecture.total_downsampling()))
        assert probe.architecture.kernel_sizes[0] == [1, 3, 3]  # thick slices keep their in-plane kernels
    widest = [p for p in probes if p.architecture.features_per_stage[0] == 32]
    assert feature_map_elements(widest[0].architecture, widest[0].patch_size) * widest[0].batch_size <= 2e7


# --- precision ---------------------------------------------------------------------------------------
def test_precision_proposal():
    assert choose_precision("cuda", bf16_supported=False) == "fp16"
    assert choose_precision("cuda:1", bf16_supported=True) == "fp16"
    assert choose_precision("cpu", bf16_supported=True) == "bf16"
    assert choose_precision("cpu", bf16_supported=False) == "fp32"
    assert choose_precision("mps", bf16_supported=True) == "fp32"


def test_cpu_bf16_needs_the_flag_and_avx512_kernels():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
    assert cpu_supports_bf16(cpuinfo, "AVX512")
    assert not cpu_supports_bf16(cpuinfo, "AVX2")
    assert not cpu_supports_bf16("flags\t\t: fpu sse avx2 avx512f\n", "AVX512")
    assert cpu_supports_bf16("flags\t\t: amx_bf16 amx_tile\n", "AVX512")
    assert not cpu_supports_bf16("", "AVX512")


# --- durations and schedule ----------------------------------------------------------------------------
def test_durations():
    assert parse_duration("15m") == 900 and parse_duration("1h30m") == 5400 and parse_duration("2h") == 7200
    assert parse_duration("90") == 90 and parse_duration("1d") == 86400
    with pytest.raises(PlanError, match="2 hours"):
        parse_duration("2 hours")
    assert format_duration(45) == "45s" and format_duration(250) == "4m10s" and format_duration(7500) == "2h05m"


def test_schedule_keeps_250_iterations_until_50_epochs_then_shrinks_the_epochs_last():
    assert schedule_for(250_000) == (1000, 250)
    assert schedule_for(10**7) == (1000, 250)
    assert schedule_for(12_500) == (50, 250)
    assert schedule_for(5_000) == (50, 100)
    assert schedule_for(1_250) == (50, 25)
    assert schedule_for(1_249) == (49, 25)
    assert schedule_for(500) == (20, 25)
    previous = (0, 0)
    for total in range(500, 20_000, 37):
        epochs, iterations = schedule_for(total)
        assert epochs >= previous[0] and iterations >= previous[1] and epochs * iterations <= total
        previous = (epochs, iterations)


def test_sliding_windows_with_half_patch_steps():
    # 256 voxels, patch 128: starts 0, 64, 128 -> 3; 24 <= 24 -> 1; 100 with patch 40: ceil(60/20)+1 = 4
    assert sliding_windows([24, 256, 100], [24, 128, 40]) == 1 * 3 * 4


# --- the solver --------------------------------------------------------------------------------------
CASES = [("Task04_Hippocampus", "3d_fullres"), ("Task04_Hippocampus", "2d"), ("Task05_Prostate", "3d_fullres"),
         ("Task09_Spleen", "3d_fullres"), ("Task900_ThickMRI", "3d_fullres"), ("Task900_ThickMRI", "2d")]
BUDGETS = [5 * 60, 30 * 60, 2 * HOUR, 8 * HOUR, 24 * HOUR]


@pytest.mark.parametrize("task,config_name", CASES)
def test_predicted_fold_time_fits_every_budget(plans_by_task, task, config_name):
    plans, num_cases = plans_by_task[task]
    configuration = plans.configuration(config_name)
    for speed_name in SPEEDS:
        speed = fake_speed(speed_name, configuration.dimension)
        for budget in BUDGETS:
            try:
                decision = solve_budget(plans, config_name, budget, speed, num_training_cases=num_cases)
            except PlanError as error:
                assert "too small" in str(error)
                continue
            assert decision.seconds_per_fold <= budget
            assert decision.epochs >= 20 and 25 <= decision.iterations_per_epoch <= 250
            # The recorded figures are the model's: recompute the fold time from them.
            candidate = Candidate(tuple(decision.patch_size), decision.base_features, decision.batch_size)
            cost = candidate_cost(configuration, candidate, speed, num_cases, decision.final_validation_mirroring)
            total = decision.epochs * decision.iterations_per_epoch
            assert fold_seconds(cost, total) == pytest.approx(decision.seconds_per_fold)
            budgeted = apply_budget(plans, config_name, decision).configuration(config_name)
            divisor = budgeted.architecture.total_downsampling()
            assert all(n % d == 0 for n, d in zip(budgeted.patch_size, divisor))
            assert all(n <= p for n, p in zip(decision.patch_size, configuration.patch_size))


def test_a_fast_gpu_with_a_day_keeps_the_unconstrained_plan(plans_by_task):
    plans, num_cases = plans_by_task["Task04_Hippocampus"]
    decision = solve_budget(plans, "3d_fullres", 24 * HOUR, fake_speed("fast_gpu"), num_training_cases=num_cases)
    planned = plans.configuration("3d_fullres")
    assert decision.patch_size == planned.patch_size and decision.batch_size == planned.batch_size
    assert (decision.base_features, decision.epochs, decision.iterations_per_epoch) == (32, 1000, 250)
    assert decision.patch_coverage == 1.0


@pytest.mark.parametrize("task,speed_name", [("Task900_ThickMRI", "slow_cpu"), ("Task09_Spleen", "mid_gpu"),
                                             ("Task04_Hippocampus", "slow_cpu")])
def test_a_shrinking_budget_never_grows_the_patch_width_batch_or_iterations(plans_by_task, task, speed_name):
    plans, num_cases = plans_by_task[task]
    speed = fake_speed(speed_name)
    ladder = build_ladder(plans.configuration("3d_fullres"), speed, num_cases, mirror_final_validation=False)
    top = build_ladder(plans.configuration("3d_fullres"), speed, num_cases)[0].fold_seconds
    bottom = ladder[-1].fold_seconds
    budgets = [bottom * (top * 1.2 / bottom) ** (k / 60) for k in range(60, -1, -1)]  # 61 budgets, largest first
    previous = None
    for budget in budgets:
        d = solve_budget(plans, "3d_fullres", budget, speed, num_training_cases=num_cases)
        # Mirroring of the final validation is dropped once, as the budget shrinks, and the time it frees
        # goes to training: the network may grow at that one step, so compare within a validation mode.
        assert previous is None or d.final_validation_mirroring <= previous.final_validation_mirroring
        if previous is not None and d.final_validation_mirroring == previous.final_validation_mirroring:
            assert all(n <= p for n, p in zip(d.patch_size, previous.patch_size)), (budget, d.patch_size)
            assert d.base_features <= previous.base_features and d.batch_size <= previous.batch_size
            assert d.epochs <= previous.epochs and d.iterations_per_epoch <= previous.iterations_per_epoch
        previous = d
    assert previous.base_features < 32 and previous.epochs * previous.iterations_per_epoch == 500


def test_too_small_a_budget_states_the_minimum(plans_by_task):
    plans, num_cases = plans_by_task["Task900_ThickMRI"]
    speed = fake_speed("slow_cpu")
    # The minimum is the unmirrored final validation's: below the mirrored minimum, mirroring is dropped.
    minimum = build_ladder(plans.configuration("3d_fullres"), speed, num_cases,
                           mirror_final_validation=False)[-1].fold_seconds
    with pytest.raises(PlanError) as error:
        solve_budget(plans, "3d_fullres", 30, speed, num_training_cases=num_cases)
    message = str(error.value)
    assert "time budget 30s is too small" in message and f"needs at least {format_duration(minimum)}" in message
    decision = solve_budget(plans, "3d_fullres", math.ceil(minimum), speed, num_training_cases=num_cases)
    assert decision.minimum_budget_seconds == pytest.approx(minimum)
    assert (decision.epochs, decision.iterations_per_epoch) == (20, 25)


def test_the_slow_cpu_plan_for_thick_slices_is_narrower_smaller_and_shorter(plans_by_task):
    plans, num_cases = plans_by_task["Task900_ThickMRI"]
    decision = solve_budget(plans, "3d_fullres", 8 * HOUR, fake_speed("slow_cpu"), num_training_cases=num_cases)
    assert decision.planned_patch_size == [24, 256, 256]
    assert decision.patch_coverage < 1 and decision.base_features < 32
    assert decision.epochs * decision.iterations_per_epoch < 250_000
    assert decision.seconds_per_iteration < decision.planned_seconds_per_iteration
    assert decision.seconds_per_fold > 0.95 * 8 * HOUR  # the budget is used, not left idle


def test_decision_round_trips_through_json_and_is_applied_without_mutating(plans_by_task):
    plans, num_cases = plans_by_task["Task05_Prostate"]
    before = json.dumps(plans.to_json(), sort_keys=True)
    speed, fp32 = fake_speed("mid_gpu"), replace(fake_speed("mid_gpu"), precision="bf16")
    decision = solve_budget(plans, "3d_fullres", 2 * HOUR, speed, num_training_cases=num_cases, compare_speeds=(fp32,))
    assert BudgetDecision.from_json(json.loads(json.dumps(decision.to_json()))) == decision
    assert set(decision.seconds_per_iteration_by_precision) == {"fp32", "bf16"}
    budgeted = apply_budget(plans, "3d_fullres", decision)
    assert json.dumps(plans.to_json(), sort_keys=True) == before
    configuration = budgeted.configuration("3d_fullres")
    assert configuration.patch_size == decision.patch_size and configuration.batch_size == decision.batch_size
    assert configuration.architecture.features_per_stage == decision.features_per_stage
    assert configuration.estimated_memory_gb <= plans.configuration("3d_fullres").estimated_memory_gb
    with pytest.raises(PlanError, match="schema_version"):
        BudgetDecision.from_json({**decision.to_json(), "schema_version": 99})


def test_patch_chain_shrinks_one_axis_at_a_time_down_to_16(plans_by_task):
    configuration = plans_by_task["Task900_ThickMRI"][0].configuration("3d_fullres")
    chain = patch_chain(configuration)
    assert chain[0] == [24, 256, 256] and chain[-1] == [16, 16, 16]
    for before, after in zip(chain, chain[1:]):
        assert sum(a < b for a, b in zip(after, before)) == 1 and all(a <= b for a, b in zip(after, before))


def test_speed_of_another_dimension_is_refused(plans_by_task):
    plans, num_cases = plans_by_task["Task04_Hippocampus"]
    with pytest.raises(PlanError, match="2D"):
        solve_budget(plans, "2d", HOUR, fake_speed("slow_cpu", dimension=3), num_training_cases=num_cases)


def test_a_cascade_is_over_budget_when_its_parent_or_its_previous_stage_is(plans_by_task):
    from autoseg.errors import BudgetTooSmall
    from autoseg.budget.compute_aware import mark_over_budget

    plans, _ = plans_by_task["Task09_Spleen"]
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plans.configurations)

    def too_small(name: str) -> dict:
        return {name: BudgetTooSmall("too small", name, 5000.0, "cpu", "fp32")}

    def marked(result) -> set[str]:
        return {n for n in result.configurations if result.configuration(n).over_budget is not None}

    assert marked(mark_over_budget(plans, 3600, too_small("3d_fullres"))) == {"3d_fullres", "3d_cascade_fullres"}
    assert marked(mark_over_budget(plans, 3600, too_small("3d_lowres"))) == {"3d_lowres", "3d_cascade_fullres"}
    assert marked(mark_over_budget(plans, 3600, too_small("2d"))) == {"2d"}
    assert not marked(plans)  # the input is not changed
    marked_plans = mark_over_budget(plans, 3600, too_small("3d_lowres"))
    assert marked_plans.configuration("3d_cascade_fullres").over_budget == OverBudget(
        time_budget_seconds=3600.0, minimum_budget_seconds=5000.0, device="cpu", precision="fp32")


def test_the_final_validation_mirrors_unless_it_would_take_a_quarter_of_the_budget(plans_by_task):
    from autoseg.budget.solver import MIRRORED_FINAL_VALIDATION_MAX_SHARE, mirroring_threshold_seconds

    plans, num_cases = plans_by_task["Task09_Spleen"]
    configuration, speed = plans.configuration("3d_fullres"), fake_speed("slow_cpu")
    threshold = mirroring_threshold_seconds(configuration, speed, num_cases)
    above = solve_budget(plans, "3d_fullres", threshold * 1.01, speed, num_training_cases=num_cases)
    below = solve_budget(plans, "3d_fullres", threshold * 0.99, speed, num_training_cases=num_cases)
    assert above.final_validation_mirroring and not below.final_validation_mirroring
    assert above.seconds_per_fold <= threshold * 1.01 and below.seconds_per_fold <= threshold * 0.99
    # By hand: the cheapest mirrored candidate's final validation is 2^3 = 8 unmirrored ones.
    cheapest = build_ladder(configuration, speed, num_cases)[-1]
    cost = candidate_cost(configuration, cheapest.candidate, speed, num_cases, mirror_final_validation=True)
    unmirrored = candidate_cost(configuration, cheapest.candidate, speed, num_cases, mirror_final_validation=False)
    assert cost.windows_final_validation == 8 * unmirrored.windows_final_validation
    assert threshold == pytest.approx(max(cheapest.fold_seconds, cost.windows_final_validation * cost.seconds_per_window
                                          / MIRRORED_FINAL_VALIDATION_MAX_SHARE))
    # Recorded in the decision and in the schedule train takes from it.
    from autoseg.budget.compute_aware import training_schedule

    assert training_schedule(below).final_validation_mirroring is False
    assert training_schedule(above).final_validation_mirroring is True
    assert training_schedule(None).final_validation_mirroring is True


def test_fold_time_by_hand():
    from autoseg.budget.time_model import CandidateCost

    cost = CandidateCost(seconds_per_iteration=1.0, seconds_per_window=0.1, windows_final_validation=100)
    # 50 epochs x 250 iterations, 50 validation iterations of a third of a step each, 3% overhead; per
    # epoch 0.5 s of bookkeeping (progress.png); final validation 100 windows x 0.1 s; 4 s start-up.
    epoch = (250 * 1.0 + 50 * 1.0 / 3) * 1.03
    assert fold_seconds(cost, 50 * 250) == pytest.approx(50 * (epoch + 0.5) + 100 * 0.1 + 4.0)
