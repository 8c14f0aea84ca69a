"""What one fold costs: the schedule for a number of iterations and the predicted seconds of a candidate.

With t = predicted seconds of a training iteration (`DeviceSpeed`, autoseg.budget.speed):
    epochs x [(iterations x t + validation_iterations x t x FORWARD_SHARE) x (1 + EPOCH_OVERHEAD_SHARE)
              + EPOCH_BOOKKEEPING_SECONDS] + FOLD_STARTUP_SECONDS
    + final validation: the fold's cases predicted by sliding window with mirroring, each window one
      batch-1 forward pass (t at batch 1 x FORWARD_SHARE).
On a GPU data loading is assumed to keep up (workers run on otherwise idle cores); on a CPU, t
includes the sampling and augmentation of the batch (`DeviceSpeed.data_pipeline`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoseg.budget.candidates import Candidate, candidate_architecture
from autoseg.budget.speed import DeviceSpeed
from autoseg.inference.sliding_window import padded_shape, window_starts
from autoseg.planning.plans import Configuration
from autoseg.training.splits import NUM_FOLDS
from autoseg.training.job import DEFAULT_EPOCHS, DEFAULT_ITERATIONS_PER_EPOCH

# --- schedule ------------------------------------------------------------------------------------
MIN_EPOCHS = 20  # fewer epochs leave the poly learning-rate schedule and the EMA Dice too coarse
MIN_ITERATIONS_PER_EPOCH = 25
# Iterations per epoch stay at 250 until the epochs would drop below this; then iterations per
# epoch shrink (down to 25) before the epochs do.
PREFERRED_MIN_EPOCHS = 50
# nnU-Net's schedule is the top of the ladder.
ITERATIONS_TARGET = DEFAULT_EPOCHS * DEFAULT_ITERATIONS_PER_EPOCH  # no training-amount loss at or above it

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

# --- schedule and time ------------------------------------------------------------------------------
def schedule_for(total_iterations: int, min_epochs: int = MIN_EPOCHS) -> tuple[int, int]:
    """(epochs, iterations per epoch) for a total, both non-decreasing in it (see PREFERRED_MIN_EPOCHS)."""
    preferred = max(PREFERRED_MIN_EPOCHS, min_epochs)
    n = min(int(total_iterations), ITERATIONS_TARGET)
    if n >= preferred * DEFAULT_ITERATIONS_PER_EPOCH:
        return n // DEFAULT_ITERATIONS_PER_EPOCH, DEFAULT_ITERATIONS_PER_EPOCH
    if n >= preferred * MIN_ITERATIONS_PER_EPOCH:
        return preferred, n // preferred
    return max(min_epochs, n // MIN_ITERATIONS_PER_EPOCH), MIN_ITERATIONS_PER_EPOCH


def validation_iterations(iterations_per_epoch: int) -> int:
    return max(1, int(math.ceil(iterations_per_epoch * VALIDATION_ITERATIONS_SHARE)))


def sliding_windows(image_shape: list[float], patch_size: list[int]) -> int:
    """Windows of a sliding-window prediction at the default step over an image (voxels)."""
    padded = padded_shape([int(round(size)) for size in image_shape], patch_size)
    return math.prod(len(starts) for starts in window_starts(padded, patch_size))


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
    validation_cases = int(math.ceil(num_training_cases / NUM_FOLDS))
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
