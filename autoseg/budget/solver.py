"""Shrink a configuration until one fold trains within a time budget: the degradation ladder.

nnU-Net plans for an 8 GB GPU and 1000 epochs x 250 iterations whatever the machine. Here a
`DeviceSpeed` (autoseg.budget.speed: a cost model measured on this machine) predicts the seconds
of any candidate's iteration (autoseg.budget.time_model), and `solve_budget` picks the candidate
and schedule to train.

How a candidate is chosen: the *degradation ladder*. Starting from the plan (its patch, base width
32, its batch, nnU-Net's 1000 x 250 iterations), each rung makes one move that saves time:
fewer total iterations (x0.8), the next smaller patch (nnU-Net's shrinking rule: the axis with the
largest patch / median-shape ratio loses one divisibility step, topology recomputed), the next
narrower base width (32, 16, 8), or a halved batch. Each rung takes the move with the least
quality loss per halving of the fold's time, where

    quality loss = sum over d of WEIGHT[d] * (halvings along d)^2,
    halvings: coverage  log2(planned patch volume / patch volume)  (same spacing, so physical volume),
              width     log2(32 / base width),
              training  log2(ITERATIONS_TARGET / total iterations)  (0 at or above the target),
              batch     log2(planned batch / batch).

Squares make every further halving along one axis dearer than the last, so the solver spreads the
loss over the axes instead of exhausting one. The ladder is a chain (no move ever grows anything)
whose fold time strictly decreases, and the budget picks the first rung that fits; so as the budget
shrinks the patch, width, batch and iterations never grow. Within a rung reached by an iteration
move the iterations stretch to use the whole budget (up to the rung above). After a patch, width
or batch move they cannot (a smaller budget would then get more iterations than a larger one), so
up to one move's saving may stay unused (a patch or batch step saves less than 2x; a width step,
32 -> 16 -> 8, about 2x, but it comes late: its loss weight makes the solver shrink the patch and the
iterations first).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np

from autoseg.budget.candidates import (BASE_WIDTHS, Candidate, batch_sizes, candidate_architecture,
                                       patch_chain)
from autoseg.budget.speed import DeviceSpeed
from autoseg.budget.time_model import (ITERATIONS_TARGET, MIN_EPOCHS, MIN_ITERATIONS_PER_EPOCH, CandidateCost,
                                       candidate_cost, epoch_seconds, fold_seconds, fold_total_seconds,
                                       max_total_iterations, schedule_for, validation_iterations)
from autoseg.errors import BudgetTooSmall, PlanError
from autoseg.network.cost import network_cost
from autoseg.planning import rules
from autoseg.planning.plans import Configuration, Plans
from autoseg.planning.time_budget import BudgetDecision, format_duration

ITERATIONS_STEP = 0.8  # an iteration move keeps this share of the total iterations
# Quality-loss weights per halving (see module docstring). A halved width loses more than a halved
# patch volume; a halved batch (with the same iterations) costs little: nnU-Net trains with 2.
LOSS_WEIGHTS = {"coverage": 1.0, "width": 4.0, "training": 0.5, "batch": 0.1}
# The fold's final validation mirrors every window 2^dimension times (as nnU-Net's), which sharpens the
# cross-validation estimate but not the model. It predicts without mirroring when mirroring would take
# more than this share of the budget, or when only then a fold fits: on a 2-core CPU, the 27 validation
# CTs of Liver take 9h47m mirrored with the smallest 3d_fullres network.
MIRRORED_FINAL_VALIDATION_MAX_SHARE = 0.25


@dataclass(frozen=True)
class Rung:
    candidate: Candidate
    total_iterations: int
    fold_seconds: float
    loss: float
    move: str  # the move that led here ("plan" for the top rung)


# --- the ladder -------------------------------------------------------------------------------------
def _halvings(planned: float, value: float) -> float:
    return max(0.0, math.log2(planned / value))


def _quality_loss(candidate: Candidate, total_iterations: int, planned_voxels: float, planned_batch: int) -> float:
    halvings = {
        "coverage": _halvings(planned_voxels, float(math.prod(candidate.patch_size))),
        "width": _halvings(rules.BASE_FEATURES, candidate.base_features),
        "training": _halvings(ITERATIONS_TARGET, total_iterations),
        "batch": _halvings(planned_batch, candidate.batch_size),
    }
    return sum(LOSS_WEIGHTS[name] * value**2 for name, value in halvings.items())


def decision_quality_loss(decision: BudgetDecision) -> float:
    """The quality loss (module docstring) of a decision against its unconstrained plan: lower is better.
    Compares decisions made at different precisions for the same configuration and budget."""
    candidate = Candidate(tuple(decision.patch_size), decision.base_features, decision.batch_size)
    return _quality_loss(candidate, decision.epochs * decision.iterations_per_epoch,
                         float(math.prod(decision.planned_patch_size)), decision.planned_batch_size)


def build_ladder(configuration: Configuration, speed: DeviceSpeed, num_training_cases: int,
                 min_epochs: int = MIN_EPOCHS, mirror_final_validation: bool = True) -> list[Rung]:
    """All rungs from the plan down to the cheapest candidate; fold time strictly decreasing."""
    chain = [tuple(p) for p in patch_chain(configuration)]
    batches = batch_sizes(configuration.batch_size)
    widths = [w for w in BASE_WIDTHS if w <= rules.BASE_FEATURES]
    planned_voxels = float(np.prod(configuration.patch_size, dtype=np.float64))
    min_total = min_epochs * MIN_ITERATIONS_PER_EPOCH
    costs: dict[Candidate, CandidateCost] = {}

    def rung(indices: tuple[int, int, int], total: int, move: str) -> Rung:
        candidate = Candidate(chain[indices[0]], widths[indices[1]], batches[indices[2]])
        if candidate not in costs:
            costs[candidate] = candidate_cost(configuration, candidate, speed, num_training_cases,
                                              mirror_final_validation)
        loss = _quality_loss(candidate, total, planned_voxels, configuration.batch_size)
        return Rung(candidate, total, fold_seconds(costs[candidate], total, min_epochs), loss, move)

    indices, current = (0, 0, 0), rung((0, 0, 0), ITERATIONS_TARGET, "plan")
    ladder = [current]
    while True:
        options = []
        if current.total_iterations > min_total:
            total = max(min_total, int(current.total_iterations * ITERATIONS_STEP))
            options.append((indices, rung(indices, total, "iterations")))
        for axis, (move, limit) in enumerate((("patch", len(chain)), ("width", len(widths)), ("batch", len(batches)))):
            # Skip steps that do not save time (a smaller patch can lose a pooling and cost as much).
            for index in range(indices[axis] + 1, limit):
                moved = tuple(index if a == axis else i for a, i in enumerate(indices))
                option = rung(moved, current.total_iterations, move)
                if option.fold_seconds < current.fold_seconds:
                    options.append((moved, option))
                    break
        options = [(i, r) for i, r in options if r.fold_seconds < current.fold_seconds]
        if not options:
            return ladder
        indices, current = min(options, key=lambda o: (o[1].loss - current.loss)
                               / math.log2(current.fold_seconds / o[1].fold_seconds))
        ladder.append(current)


def solve_budget(plans: Plans, config_name: str, time_budget_seconds: float, speed: DeviceSpeed, *,
                 num_training_cases: int, min_epochs: int = MIN_EPOCHS, mirror_final_validation: bool | None = None,
                 compare_speeds: tuple[DeviceSpeed, ...] = ()) -> BudgetDecision:
    """The candidate and schedule of the first ladder rung (see module docstring) that trains one fold of
    `config_name` within `time_budget_seconds` on the device `speed` describes.

    `num_training_cases`: cases in the dataset (a fold validates 1/5 of them at the end);
    `mirror_final_validation`: whether that final prediction mirrors (2^dimension passes per window);
    None: when the budget reaches `mirroring_threshold_seconds`.
    `compare_speeds`: other measurements (e.g. fp32 when `speed` is bf16) whose predicted seconds per
    iteration of the chosen candidate are recorded for comparison.
    Raises BudgetTooSmall (a PlanError) stating the minimum budget when even the cheapest rung does not fit.
    """
    if mirror_final_validation is None:
        mirror_final_validation = time_budget_seconds >= mirroring_threshold_seconds(
            plans.configuration(config_name), speed, num_training_cases, min_epochs)
    return _solve_budget(plans, config_name, time_budget_seconds, speed, num_training_cases=num_training_cases,
                         min_epochs=min_epochs, mirror_final_validation=mirror_final_validation,
                         compare_speeds=compare_speeds)


def mirroring_threshold_seconds(configuration: Configuration, speed: DeviceSpeed, num_training_cases: int,
                                min_epochs: int = MIN_EPOCHS) -> float:
    """The smallest budget whose fold validation mirrors: the cheapest mirrored rung must fit, and its
    final validation take at most MIRRORED_FINAL_VALIDATION_MAX_SHARE of the budget. One threshold per
    configuration, so mirroring is only ever dropped as the budget shrinks; the time it frees goes back
    into training (so just below the threshold the network may be larger than just above it)."""
    cheapest = build_ladder(configuration, speed, num_training_cases, min_epochs, mirror_final_validation=True)[-1]
    cost = candidate_cost(configuration, cheapest.candidate, speed, num_training_cases, mirror_final_validation=True)
    final_validation = cost.windows_final_validation * cost.seconds_per_window
    return max(cheapest.fold_seconds, final_validation / MIRRORED_FINAL_VALIDATION_MAX_SHARE)


def _solve_budget(plans: Plans, config_name: str, time_budget_seconds: float, speed: DeviceSpeed, *,
                  num_training_cases: int, min_epochs: int, mirror_final_validation: bool,
                  compare_speeds: tuple[DeviceSpeed, ...]) -> BudgetDecision:
    configuration = plans.configuration(config_name)
    if speed.dimension != configuration.dimension:
        raise PlanError(f"configuration '{config_name}' is {configuration.dimension}D but the device speed was "
                        f"measured on {speed.dimension}D networks; measure with this configuration's probes")
    if min_epochs < 1 or num_training_cases < 1:
        raise PlanError(f"min_epochs ({min_epochs}) and num_training_cases ({num_training_cases}) must be >= 1")
    ladder = build_ladder(configuration, speed, num_training_cases, min_epochs, mirror_final_validation)
    fitting = [k for k, r in enumerate(ladder) if r.fold_seconds <= time_budget_seconds]
    cheapest = ladder[-1]
    if not fitting:
        c = cheapest.candidate
        epochs, iterations = schedule_for(cheapest.total_iterations, min_epochs)
        raise BudgetTooSmall(
            f"time budget {format_duration(time_budget_seconds)} is too small for configuration '{config_name}': "
            f"the smallest network (patch {list(c.patch_size)}, base width {c.base_features}, batch {c.batch_size}, "
            f"{epochs} epochs x {iterations} iterations) needs at least {format_duration(cheapest.fold_seconds)} "
            f"on this device ({speed.device}, {speed.precision}); give a budget of at least that",
            config_name, cheapest.fold_seconds, speed.device, speed.precision)
    k = fitting[0]
    chosen = ladder[k]
    # Stretch the iterations into the budget, never past the rung above when it has the same network
    # (past it, a smaller budget could get more iterations than a larger one).
    upper = ladder[k - 1].total_iterations if k > 0 and ladder[k - 1].candidate == chosen.candidate else chosen.total_iterations
    cost = candidate_cost(configuration, chosen.candidate, speed, num_training_cases, mirror_final_validation)
    total = max_total_iterations(cost, time_budget_seconds, chosen.total_iterations, upper, min_epochs)
    return _decision(plans, config_name, configuration, chosen.candidate, total, cost, speed, time_budget_seconds,
                     cheapest.fold_seconds, min_epochs, compare_speeds, mirror_final_validation)


def _decision(plans: Plans, config_name: str, configuration: Configuration, candidate: Candidate, total: int,
              cost: CandidateCost, speed: DeviceSpeed, budget: float, minimum: float, min_epochs: int,
              compare_speeds: tuple[DeviceSpeed, ...], mirror_final_validation: bool) -> BudgetDecision:
    epochs, iterations = schedule_for(total, min_epochs)
    architecture = candidate_architecture(configuration, list(candidate.patch_size), candidate.base_features)
    by_precision = {s.precision: s.seconds_per_iteration(architecture, list(candidate.patch_size), candidate.batch_size)
                    for s in (speed, *compare_speeds)}
    per_epoch = epoch_seconds(cost, iterations)
    final = cost.windows_final_validation * cost.seconds_per_window
    return BudgetDecision(
        configuration=config_name, time_budget_seconds=float(budget), device=speed.device, precision=speed.precision,
        patch_size=list(candidate.patch_size), batch_size=candidate.batch_size, base_features=candidate.base_features,
        features_per_stage=list(architecture.features_per_stage), epochs=epochs, iterations_per_epoch=iterations,
        validation_iterations_per_epoch=validation_iterations(iterations),
        seconds_per_iteration=cost.seconds_per_iteration, seconds_per_epoch=per_epoch,
        seconds_final_validation=final, seconds_per_fold=fold_total_seconds(epochs, per_epoch, final),
        minimum_budget_seconds=minimum,
        planned_patch_size=list(configuration.patch_size), planned_batch_size=configuration.batch_size,
        planned_seconds_per_iteration=speed.seconds_per_iteration(configuration.architecture, configuration.patch_size,
                                                                  configuration.batch_size),
        patch_coverage=float(np.prod(candidate.patch_size, dtype=np.float64)
                             / np.prod(configuration.patch_size, dtype=np.float64)),
        cost_model_max_relative_error=speed.max_relative_error, seconds_per_iteration_by_precision=by_precision,
        final_validation_mirroring=mirror_final_validation,
    )


# --- applying a decision ----------------------------------------------------------------------------
def apply_budget(plans: Plans, config_name: str, decision: BudgetDecision) -> Plans:
    """New plans whose `config_name` has the decision's patch, batch and network (the input is not changed).

    The decision's schedule (epochs, iterations, precision) is stored under the entry's "budget" key.
    """
    configuration = plans.configuration(config_name)
    if decision.configuration != config_name:
        raise PlanError(f"budget decision is for configuration '{decision.configuration}', not '{config_name}'")
    architecture = candidate_architecture(configuration, decision.patch_size, decision.base_features)
    elements = network_cost(architecture, decision.patch_size).feature_map_elements
    entries = copy.deepcopy(plans.configurations)
    entry = entries[config_name]
    entry.update(patch_size=list(decision.patch_size), batch_size=int(decision.batch_size),
                 architecture=architecture.to_json(),
                 estimated_memory_gb=round(rules.estimated_memory_gb(
                     elements, decision.batch_size, configuration.dimension,
                     rules.memory_reference(architecture.name, plans.preset)), 3))
    entry["budget"] = decision.to_json()
    budgeted = replace(plans, configurations=entries)
    budgeted.configuration(config_name)  # validates: divisibility, architecture
    return budgeted
