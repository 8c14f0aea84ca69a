"""Compute-aware planning: shrink a configuration until one fold trains within a time budget.

nnU-Net plans for an 8 GB GPU and 1000 epochs x 250 iterations whatever the machine. Here a
`DeviceSpeed` (autoseg.planning.device_speed: a cost model measured on this machine) predicts the
seconds of any candidate's iteration, and `solve_budget` picks the candidate and schedule to train.

What a fold costs (`fold_seconds`), with t = predicted seconds of a training iteration:
    epochs x [(iterations x t + validation_iterations x t x FORWARD_SHARE) x (1 + EPOCH_OVERHEAD_SHARE)
              + EPOCH_BOOKKEEPING_SECONDS] + FOLD_STARTUP_SECONDS
    + final validation: the fold's cases predicted by sliding window (step 0.5) with mirroring,
      each window one batch-1 forward pass (t at batch 1 x FORWARD_SHARE); without mirroring when
      it would take more than MIRRORED_FINAL_VALIDATION_MAX_SHARE of the budget.
On a GPU data loading is assumed to keep up (workers run on otherwise idle cores); on a CPU, t
includes the sampling and augmentation of the batch (`DeviceSpeed.data_pipeline`).

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

The receptive field follows the patch: each candidate's topology is recomputed by the planner's
rules, so keeping the coverage keeps the number of poolings.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from autoseg.errors import PlanError
from autoseg.network.architecture import Architecture, feature_map_elements
from autoseg.planning import rules
from autoseg.planning.device_speed import DeviceSpeed, Probe
from autoseg.planning.plans import Configuration, Plans

BUDGET_SCHEMA_VERSION = 1

# --- schedule ------------------------------------------------------------------------------------
FULL_EPOCHS, FULL_ITERATIONS_PER_EPOCH = 1000, 250  # nnU-Net's schedule: the top of the ladder
MIN_EPOCHS = 20  # fewer epochs leave the poly learning-rate schedule and the EMA Dice too coarse
MIN_ITERATIONS_PER_EPOCH = 25
# Iterations per epoch stay at 250 until the epochs would drop below this; then iterations per
# epoch shrink (down to 25) before the epochs do.
PREFERRED_MIN_EPOCHS = 50
ITERATIONS_TARGET = FULL_EPOCHS * FULL_ITERATIONS_PER_EPOCH  # no training-amount loss at or above it
ITERATIONS_STEP = 0.8  # an iteration move keeps this share of the total iterations

# --- time model ----------------------------------------------------------------------------------
# nnU-Net validates 50 batches per 250 training iterations.
VALIDATION_ITERATIONS_SHARE = 0.2
# A forward pass without gradients costs about a third of a training step (backward ~ 2x forward).
FORWARD_SHARE = 1.0 / 3.0
# Checkpoints, logs and loader restarts per epoch (the trainer caps checkpointing at 3% of the time).
EPOCH_OVERHEAD_SHARE = 0.03
# Outside the epoch's timed loops: progress.png is redrawn after every epoch (0.5 s with matplotlib on
# the 2-core CPU, 8% of a 6 s epoch of `make demo`), and once per fold the trainer starts (imports,
# network, loader workers) and the final validation loads the model (about 4 s there). Without them
# short-epoch folds ran 20% over the prediction (make demo: 359 s for 300 s).
EPOCH_BOOKKEEPING_SECONDS = 0.5
FOLD_STARTUP_SECONDS = 4.0
FOLDS = 5  # one fold validates 1/5 of the cases
# The fold's final validation mirrors every window 2^dimension times (as nnU-Net's), which sharpens the
# cross-validation estimate but not the model. It predicts without mirroring when mirroring would take
# more than this share of the budget, or when only then a fold fits: on a 2-core CPU, the 27 validation
# CTs of Liver take 9h47m mirrored with the smallest 3d_fullres network.
MIRRORED_FINAL_VALIDATION_MAX_SHARE = 0.25
SLIDING_WINDOW_STEP = 0.5  # windows overlap by half a patch (autoseg.inference)

# --- candidates ----------------------------------------------------------------------------------
# Features at full resolution; 32 is nnU-Net's. Only multiples of 8 that keep every stage a multiple
# of 16 (or 8 at the narrowest): on an AVX-512 CPU a base of 20 or 24 costs as much as 32 (oneDNN's
# fast kernels want channels in multiples of the 16 float lanes; measured on 24x40x32 patches: widths
# 8/16/20/24/32 take 0.057/0.088/0.182/0.206/0.245 s per fp32 iteration), and GPUs' tensor cores want
# multiples of 8. The cost model, fitted to widths 32 and 8, cannot see that, so it is not offered.
BASE_WIDTHS = (32, 16, 8)
MIN_PATCH_EDGE = 16  # voxels: a patch axis is never shrunk below this (or below the plan's, if smaller)
# Quality-loss weights per halving (see module docstring). A halved width loses more than a halved
# patch volume; a halved batch (with the same iterations) costs little: nnU-Net trains with 2.
LOSS_WEIGHTS = {"coverage": 1.0, "width": 4.0, "training": 0.5, "batch": 0.1}

# --- probes for the micro-benchmark --------------------------------------------------------------
# Feature-map elements of the largest probe's batch: big enough that per-step overheads and cache
# effects do not dominate (the candidates are 10-100x bigger), ~1 s per step on a 2-core CPU.
# The smaller probe holds about PROBE_SIZE_RATIO times fewer.
PROBE_ELEMENTS = {"cpu": 2e7, "mps": 1e8, "cuda": 1e9}
PROBE_SIZE_RATIO = 4.0
PROBE_WIDTHS = (32, 8)  # the widest and narrowest candidates: the fit interpolates between them


class BudgetTooSmall(PlanError):
    """Not even the cheapest network and schedule of a configuration trains one fold within the budget."""

    def __init__(self, message: str, configuration: str, minimum_seconds: float, device: str, precision: str):
        super().__init__(message)
        self.configuration = configuration
        self.minimum_seconds = minimum_seconds
        self.device = device
        self.precision = precision


@dataclass(frozen=True)
class Candidate:
    """A network and batch to train: the patch (voxels, a multiple of the downsampling), width, batch."""

    patch_size: tuple[int, ...]
    base_features: int
    batch_size: int


@dataclass(frozen=True)
class Rung:
    candidate: Candidate
    total_iterations: int
    fold_seconds: float
    loss: float
    move: str  # the move that led here ("plan" for the top rung)


@dataclass
class BudgetDecision:
    """What `solve_budget` chose for one configuration and why; stored in plans.json as
    configurations[name]["budget"]. Seconds are predictions of the device's cost model."""

    configuration: str
    time_budget_seconds: float
    device: str
    precision: str
    patch_size: list[int]
    batch_size: int
    base_features: int
    features_per_stage: list[int]
    epochs: int
    iterations_per_epoch: int
    validation_iterations_per_epoch: int
    seconds_per_iteration: float  # predicted, one training iteration of the chosen candidate
    seconds_per_epoch: float  # training + validation + overhead
    seconds_final_validation: float  # sliding-window prediction of the fold's validation cases
    seconds_per_fold: float  # fold_total_seconds: epochs, their bookkeeping, final validation, start-up
    minimum_budget_seconds: float  # the cheapest rung of the ladder
    planned_patch_size: list[int]  # the unconstrained plan's, for comparison
    planned_batch_size: int
    planned_seconds_per_iteration: float
    patch_coverage: float  # patch volume / planned patch volume
    cost_model_max_relative_error: float
    seconds_per_iteration_by_precision: dict[str, float] = field(default_factory=dict)
    final_validation_mirroring: bool = True  # whether the fold's final validation mirrors (see solve_budget)
    schema_version: int = BUDGET_SCHEMA_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "budget") -> "BudgetDecision":
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema_version") != BUDGET_SCHEMA_VERSION:
            raise PlanError(f"{where}: schema_version {data.get('schema_version')!r}, expected "
                            f"{BUDGET_SCHEMA_VERSION}; re-run the planning with a time budget")
        expected = {f.name for f in fields(cls)}
        optional = {"seconds_per_iteration_by_precision", "final_validation_mirroring"}
        missing, unknown = sorted(expected - set(data) - optional), sorted(set(data) - expected)
        if missing or unknown:
            raise PlanError(f"{where}: missing fields {missing}, unknown fields {unknown}")
        return cls(**data)


# --- durations -------------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    """'45s', '4m10s', '2h05m', '1d03h' (rounded up to the unit shown)."""
    seconds = int(math.ceil(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    minutes = int(math.ceil(seconds / 60))
    if minutes < 24 * 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    hours = int(math.ceil(minutes / 60))
    return f"{hours // 24}d{hours % 24:02d}h"


def parse_duration(text: str) -> float:
    """Seconds in '90', '45s', '15m', '2h', '1h30m', '1d' (units d, h, m, s; a bare number is seconds)."""
    cleaned = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise PlanError(f"time budget {text!r}: expected e.g. '45m', '2h', '1h30m' or seconds")
    unit_seconds = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return float(sum(float(n) * unit_seconds[u] for n, u in parts))


# --- candidates -------------------------------------------------------------------------------------
def scaled_features(n_stages: int, dimension: int, base_features: int) -> list[int]:
    """nnU-Net's features per stage (base, doubling, capped) with the base and the cap scaled together,
    so a base of 16 is the whole network at half width (cap 160 in 3D)."""
    cap = rules.MAX_FEATURES[dimension] * base_features // rules.BASE_FEATURES
    return [min(base_features * 2**stage, cap) for stage in range(n_stages)]


def candidate_architecture(configuration: Configuration, patch_size: list[int], base_features: int) -> Architecture:
    """The configuration's network re-derived for another patch (topology by the planner's rules) and width."""
    dimension = configuration.dimension
    topology = rules.topology_for(configuration.spacing[-dimension:], list(patch_size), dimension)
    planned = configuration.architecture
    return replace(planned, features_per_stage=scaled_features(len(topology.strides), dimension, base_features),
                   kernel_sizes=topology.kernel_sizes, strides=topology.strides)


def patch_chain(configuration: Configuration) -> list[list[int]]:
    """The planned patch, then ever smaller patches by nnU-Net's shrinking rule (see module docstring).

    Each patch is padded to a multiple of its own topology's downsampling; no axis goes below
    MIN_PATCH_EDGE (or the planned size, if smaller).
    """
    dimension = configuration.dimension
    spacing, median = configuration.spacing[-dimension:], configuration.median_shape[-dimension:]
    patch = list(configuration.patch_size)
    floor = [min(p, MIN_PATCH_EDGE) for p in patch]
    chain, stuck = [list(patch)], set()
    while True:
        ratios = [p / m for p, m in zip(patch, median)]
        axes = [a for a in range(dimension) if a not in stuck and patch[a] > floor[a]]
        if not axes:
            return chain
        axis = max(axes, key=lambda a: (ratios[a], a))
        shorter = list(patch)
        shorter[axis] = max(floor[axis], patch[axis] - rules.topology_for(spacing, patch, dimension).divisor[axis])
        step = rules.topology_for(spacing, shorter, dimension).divisor[axis]
        shorter[axis] = max(floor[axis], patch[axis] - step)
        padded = rules.topology_for(spacing, shorter, dimension).patch_size
        if padded[axis] >= patch[axis] or any(n > p for n, p in zip(padded, patch)):
            stuck.add(axis)  # padding undid the step (or grew another axis): this axis is done
            continue
        patch = padded
        chain.append(list(patch))


def batch_sizes(planned_batch: int) -> list[int]:
    """The planned batch, halved down to the planner's minimum (2)."""
    sizes = [planned_batch]
    while sizes[-1] // 2 >= rules.MIN_BATCH_SIZE:
        sizes.append(sizes[-1] // 2)
    if sizes[-1] > rules.MIN_BATCH_SIZE:
        sizes.append(rules.MIN_BATCH_SIZE)
    return sizes


# --- schedule and time ------------------------------------------------------------------------------
def schedule_for(total_iterations: int, min_epochs: int = MIN_EPOCHS) -> tuple[int, int]:
    """(epochs, iterations per epoch) for a total, both non-decreasing in it (see PREFERRED_MIN_EPOCHS)."""
    preferred = max(PREFERRED_MIN_EPOCHS, min_epochs)
    n = min(int(total_iterations), ITERATIONS_TARGET)
    if n >= preferred * FULL_ITERATIONS_PER_EPOCH:
        return n // FULL_ITERATIONS_PER_EPOCH, FULL_ITERATIONS_PER_EPOCH
    if n >= preferred * MIN_ITERATIONS_PER_EPOCH:
        return preferred, n // preferred
    return max(min_epochs, n // MIN_ITERATIONS_PER_EPOCH), MIN_ITERATIONS_PER_EPOCH


def validation_iterations(iterations_per_epoch: int) -> int:
    return max(1, int(math.ceil(iterations_per_epoch * VALIDATION_ITERATIONS_SHARE)))


def sliding_windows(image_shape: list[float], patch_size: list[int]) -> int:
    """Windows of a sliding-window prediction with half-patch steps over an image (voxels)."""
    count = 1
    for size, patch in zip(image_shape, patch_size):
        size = int(round(size))
        count *= 1 if size <= patch else int(math.ceil((size - patch) / (patch * SLIDING_WINDOW_STEP))) + 1
    return count


@dataclass(frozen=True)
class CandidateCost:
    """Predicted seconds of one candidate, independent of the schedule."""

    seconds_per_iteration: float
    seconds_per_window: float  # one batch-1 forward pass
    windows_final_validation: int  # windows x mirrors x slices x cases of one fold's validation


def candidate_cost(configuration: Configuration, candidate: Candidate, speed: DeviceSpeed,
                   num_training_cases: int, mirror_final_validation: bool = True) -> CandidateCost:
    dimension = configuration.dimension
    architecture = candidate_architecture(configuration, list(candidate.patch_size), candidate.base_features)
    patch = list(candidate.patch_size)
    per_iteration = speed.seconds_per_iteration(architecture, patch, candidate.batch_size)
    per_window = speed.seconds_per_iteration(architecture, patch, 1) * FORWARD_SHARE
    slices = int(np.prod([round(n) for n in configuration.median_shape[: 3 - dimension]]))  # 2D: per slice
    validation_cases = int(math.ceil(num_training_cases / FOLDS))
    mirrors = 2**dimension if mirror_final_validation else 1  # every subset of the axes flipped
    windows = sliding_windows(configuration.median_shape[-dimension:], patch) * mirrors * slices * validation_cases
    return CandidateCost(per_iteration, per_window, windows)


def epoch_seconds(cost: CandidateCost, iterations_per_epoch: int) -> float:
    return predicted_epoch_seconds(cost.seconds_per_iteration, iterations_per_epoch,
                                   validation_iterations(iterations_per_epoch))


def predicted_epoch_seconds(seconds_per_iteration: float, iterations_per_epoch: int,
                            validation_iterations_per_epoch: int) -> float:
    """Training iterations, forward-only validation iterations and the per-epoch overhead."""
    training = iterations_per_epoch * seconds_per_iteration
    validation = validation_iterations_per_epoch * seconds_per_iteration * FORWARD_SHARE
    return (training + validation) * (1 + EPOCH_OVERHEAD_SHARE)


def fold_seconds(cost: CandidateCost, total_iterations: int, min_epochs: int = MIN_EPOCHS) -> float:
    epochs, iterations = schedule_for(total_iterations, min_epochs)
    return fold_total_seconds(epochs, epoch_seconds(cost, iterations),
                              cost.windows_final_validation * cost.seconds_per_window)


def fold_total_seconds(epochs: int, seconds_per_epoch: float, seconds_final_validation: float) -> float:
    """A fold: its epochs with their bookkeeping, the final validation and the start-up."""
    return (epochs * (seconds_per_epoch + EPOCH_BOOKKEEPING_SECONDS) + seconds_final_validation
            + FOLD_STARTUP_SECONDS)


def max_total_iterations(cost: CandidateCost, budget_seconds: float, low: int, high: int, min_epochs: int) -> int:
    """The largest total in [low, high] whose fold fits the budget (fold time is non-decreasing in it)."""
    while low < high:
        middle = (low + high + 1) // 2
        if fold_seconds(cost, middle, min_epochs) <= budget_seconds:
            low = middle
        else:
            high = middle - 1
    return low


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

    The decision's schedule (epochs, iterations, precision) is stored under the entry's "budget" key
    when `Configuration` has a `budget` field; until then the caller passes it to the trainer itself.
    """
    configuration = plans.configuration(config_name)
    if decision.configuration != config_name:
        raise PlanError(f"budget decision is for configuration '{decision.configuration}', not '{config_name}'")
    architecture = candidate_architecture(configuration, decision.patch_size, decision.base_features)
    elements = feature_map_elements(architecture, decision.patch_size)
    entries = copy.deepcopy(plans.configurations)
    entry = entries[config_name]
    entry.update(patch_size=list(decision.patch_size), batch_size=int(decision.batch_size),
                 architecture=architecture.to_json(),
                 estimated_memory_gb=round(rules.estimated_memory_gb(elements, decision.batch_size,
                                                                     configuration.dimension), 3))
    if "budget" in {f.name for f in fields(Configuration)}:
        entry["budget"] = decision.to_json()
    budgeted = replace(plans, configurations=entries)
    budgeted.configuration(config_name)  # validates: divisibility, architecture
    return budgeted


# --- probes -------------------------------------------------------------------------------------------
def benchmark_probes(plans: Plans, config_name: str, device: str,
                     probe_elements: float | None = None) -> list[Probe]:
    """Four networks to time for the cost model of this configuration: two patch sizes from its patch
    chain (the first whose batch of 2 holds <= `probe_elements` feature-map elements at width 32, and
    the first with PROBE_SIZE_RATIO times fewer) at base widths 32 and 8. Two sizes and two widths
    let the fit separate its terms.
    """
    configuration = plans.configuration(config_name)
    limit = PROBE_ELEMENTS.get(device.split(":")[0], PROBE_ELEMENTS["cpu"]) if probe_elements is None else probe_elements
    batch = rules.MIN_BATCH_SIZE
    chain = patch_chain(configuration)

    def elements(patch: list[int]) -> int:
        return feature_map_elements(candidate_architecture(configuration, patch, rules.BASE_FEATURES), patch) * batch

    large = next((p for p in chain if elements(p) <= limit), chain[-1])
    small = next((p for p in chain if elements(p) <= elements(large) / PROBE_SIZE_RATIO), chain[-1])
    sizes = [(large, batch), (small, batch if small != large else 1)]
    return [Probe(candidate_architecture(configuration, patch, width), list(patch), b)
            for patch, b in sizes for width in PROBE_WIDTHS]
