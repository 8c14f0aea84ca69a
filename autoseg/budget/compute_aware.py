"""Compute-aware planning end to end: measure this device once, then fit each configuration into a time budget.

    speeds = measure_speeds(plans, "cpu", workspace.device_speed_file)     # cached per machine
    budgeted, decisions = plan_within_budget(plans, 15 * 60, speeds, num_training_cases=20)

`measure_speeds` times the probe networks of `autoseg.budget.candidates.benchmark_probes` at fp32 and,
where the device offers one (`choose_precision`: bf16 on CPUs with hardware bf16, fp16 on CUDA),
at a mixed precision; a measurement is reused from the cache whenever the machine's identity
matches (host, CPU, torch, threads, GPU, precision, dimension), so only the first plan on a machine
pays the ~20 s per precision and dimension.

`plan_within_budget` solves every configuration that does not inherit from another (the cascade's
full-res stage inherits 3d_fullres's decision) at each measured precision and keeps the decision
that loses the least quality (`best_decision`), recording the other precisions' predictions.
The budget applies to one fold of each configuration; a cascade trains two (3d_lowres, then
3d_cascade_fullres), so its total is twice that per fold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from autoseg.budget.candidates import benchmark_probes
from autoseg.budget.measurement import load_or_measure
from autoseg.budget.solver import apply_budget, decision_quality_loss, solve_budget
from autoseg.budget.speed import DeviceSpeed
from autoseg.budget.time_model import predicted_epoch_seconds, validation_iterations
from autoseg.device import choose_precision, cpu_supports_bf16
from autoseg.errors import BudgetTooSmall
from autoseg.planning.plans import Plans, has_own_network
from autoseg.planning.time_budget import BudgetDecision, OverBudget
from autoseg.training.job import DEFAULT_EPOCHS, DEFAULT_ITERATIONS_PER_EPOCH


def trainable_configurations(plans: Plans) -> list[str]:
    """Configurations with a network of their own: complete ones, and those that inherit only their data
    from a parent (a network variant such as 3d_fullres_resenc). Those that inherit their network follow
    their parent's decision."""
    return [name for name, entry in plans.configurations.items() if has_own_network(entry)]


def precisions_to_measure(device: str, bf16_supported: bool | None = None) -> list[str]:
    """fp32, plus the mixed precision the device offers (see `choose_precision`)."""
    if bf16_supported is None:
        bf16_supported = device == "cpu" and cpu_supports_bf16()
    proposed = choose_precision(device, bf16_supported)
    return ["fp32"] if proposed == "fp32" else ["fp32", proposed]


def measure_speeds(plans: Plans, device: str, cache_path: Path, *, precisions: list[str] | None = None,
                   refresh: bool = False, on_measure: Callable[[int, str], None] = lambda dimension, precision: None,
                   measure=None) -> dict[int, list[DeviceSpeed]]:
    """Measured (or cached) speeds per network dimension (2, 3) of the plan's trainable configurations.

    `on_measure(dimension, precision)` is called before each lookup (a measurement takes ~20 s on a
    CPU when it is not cached). `measure` replaces the benchmark (tests).
    """
    precisions = precisions or precisions_to_measure(device)
    representative: dict[int, str] = {}
    for name in trainable_configurations(plans):
        representative.setdefault(plans.configuration(name).dimension, name)
    speeds: dict[int, list[DeviceSpeed]] = {}
    for dimension, name in sorted(representative.items()):
        probes = benchmark_probes(plans, name, device)
        speeds[dimension] = []
        for precision in precisions:
            on_measure(dimension, precision)
            kwargs = {"measure": measure} if measure is not None else {}
            speeds[dimension].append(load_or_measure(cache_path, device, probes, precision, refresh=refresh, **kwargs))
    return speeds


def plan_within_budget(plans: Plans, time_budget_seconds: float, speeds: dict[int, list[DeviceSpeed]], *,
                       num_training_cases: int, configurations: list[str] | None = None,
                       ) -> tuple[Plans, dict[str, BudgetDecision]]:
    """Plans whose trainable configurations (or `configurations`) each train one fold within the budget.

    A configuration too costly for the budget even at its cheapest (e.g. 3d_fullres of a large CT task
    on a laptop, whose final validation alone takes hours) keeps its unconstrained plan and is marked
    `over_budget` (as is a configuration that inherits from it or needs it as its previous stage), so
    the others can still be planned and trained. Raises BudgetTooSmall when no configuration fits
    (stating the cheapest one's minimum), or when one of the named `configurations` does not.
    """
    names = configurations or trainable_configurations(plans)
    decisions: dict[str, BudgetDecision] = {}
    too_small: dict[str, BudgetTooSmall] = {}
    for name in names:
        try:
            decisions[name] = best_decision(plans, name, time_budget_seconds,
                                            speeds[plans.configuration(name).dimension], num_training_cases)
        except BudgetTooSmall as error:
            if configurations:
                raise
            too_small[name] = error
            continue
        plans = apply_budget(plans, name, decisions[name])
    if not decisions:
        raise min(too_small.values(), key=lambda e: e.minimum_seconds)
    return mark_over_budget(plans, time_budget_seconds, too_small), decisions


def mark_over_budget(plans: Plans, time_budget_seconds: float, too_small: dict[str, BudgetTooSmall]) -> Plans:
    """A copy of `plans` whose configurations in `too_small`, and those inheriting from one of them or
    reading one of them as previous stage, carry `over_budget` (the budget and the minimum)."""
    entries = {name: dict(entry) for name, entry in plans.configurations.items()}

    def blocking(name: str) -> BudgetTooSmall | None:
        """The too-small configuration `name` depends on (itself, a parent, a previous stage), if any."""
        if name in too_small:
            return too_small[name]
        entry = entries[name]
        network_parent = None if has_own_network(entry) else entry.get("inherits_from")
        for parent in (network_parent, plans.configuration(name).previous_stage):
            if parent and parent in entries and (found := blocking(parent)) is not None:
                return found
        return None

    for name in entries:
        error = blocking(name)
        if error is not None:
            entries[name]["over_budget"] = OverBudget(float(time_budget_seconds), float(error.minimum_seconds),
                                                      error.device, error.precision).to_json()
    return replace(plans, configurations=entries)


def best_decision(plans: Plans, name: str, time_budget_seconds: float, measured: list[DeviceSpeed],
                  num_training_cases: int) -> BudgetDecision:
    """The budget decision at the precision that loses the least quality (a faster precision buys a larger
    patch, a wider network or more iterations); fp32 on a tie. Each decision records the predicted
    seconds per iteration of its network at every measured precision."""
    ordered = sorted(measured, key=lambda s: s.precision != "fp32")  # fp32 first: it wins ties
    candidates = []
    errors = []
    for speed in ordered:
        others = tuple(s for s in measured if s is not speed)
        try:
            candidates.append(solve_budget(plans, name, time_budget_seconds, speed,
                                           num_training_cases=num_training_cases, compare_speeds=others))
        except BudgetTooSmall as error:  # too small a budget at this precision; another may fit
            errors.append(error)
    if not candidates:  # the precision that comes closest to fitting states the minimum
        raise min(errors, key=lambda e: e.minimum_seconds)
    return min(candidates, key=decision_quality_loss)


@dataclass(frozen=True)
class TrainingSchedule:
    """How long and at which precision `autoseg train` runs, and the epoch time it expects."""

    epochs: int
    iterations_per_epoch: int
    validation_iterations: int
    precision: str  # auto | fp32 | bf16 | fp16
    confirm_precision: bool  # check a mixed precision on the first epochs (not when the user asked for it)
    expected_epoch_seconds: float | None  # from the plan's cost model; None without a budget
    final_validation_mirroring: bool = True  # the budget may drop mirroring from the fold's final validation


def training_schedule(budget: BudgetDecision | None, *, epochs: int | None = None, iterations: int | None = None,
                      validation_iterations_per_epoch: int | None = None, precision: str = "auto") -> TrainingSchedule:
    """The schedule of a configuration: what the user gave, else its budget decision's, else nnU-Net's
    (1000 epochs x 250 iterations, 50 validation iterations). With a budget, the expected epoch time is
    the cost model's for the iterations and precision actually used."""
    if budget is None:
        iterations = iterations or DEFAULT_ITERATIONS_PER_EPOCH
        return TrainingSchedule(epochs or DEFAULT_EPOCHS, iterations,
                                validation_iterations_per_epoch or validation_iterations(iterations),
                                precision, confirm_precision=precision == "auto", expected_epoch_seconds=None)
    iterations = iterations or budget.iterations_per_epoch
    validation = validation_iterations_per_epoch or (
        budget.validation_iterations_per_epoch if iterations == budget.iterations_per_epoch
        else validation_iterations(iterations))
    chosen = budget.precision if precision == "auto" else precision
    per_iteration = budget.seconds_per_iteration_by_precision.get(chosen, budget.seconds_per_iteration)
    return TrainingSchedule(epochs or budget.epochs, iterations, validation, chosen,
                            confirm_precision=precision == "auto" and chosen != "fp32",
                            expected_epoch_seconds=predicted_epoch_seconds(per_iteration, iterations, validation),
                            final_validation_mirroring=budget.final_validation_mirroring)
