"""Checks of a training run against what its plan expected: time per epoch, and mixed precision.

Compute-aware planning (`autoseg plan --time-budget`) predicts the seconds of an epoch from a cost
model of this machine and proposes a mixed precision when it is faster. The trainer confirms both
on the run itself, with these pure rules:

- timing: the measured epoch time against the predicted one; off by more than TIMING_WARNING_SHARE
  is worth a warning (another process sharing the CPU, a GPU other than the one measured, a plan
  edited by hand).
- precision: a few epochs in, the same validation batches are segmented with the mixed-precision
  forward and with the fp32 forward of the same weights; mixed precision is kept only when its
  pseudo Dice is not lower than fp32's by more than PRECISION_DICE_TOLERANCE.
"""

from __future__ import annotations

import math

import numpy as np

TIMING_WARNING_SHARE = 0.30
PRECISION_DICE_TOLERANCE = 0.01  # absolute mean foreground pseudo Dice
# The precision check runs after this share of the epochs (at least epoch 1, at most epoch 5), when
# the network segments well enough for the comparison to mean something, and early enough that
# falling back to fp32 keeps most of the training.
PRECISION_CHECK_SHARE = 0.05
PRECISION_CHECK_MAX_EPOCH = 5


def precision_check_epoch(epochs: int) -> int:
    """The epoch (1-based) after which the mixed-precision check runs."""
    return max(1, min(PRECISION_CHECK_MAX_EPOCH, int(round(epochs * PRECISION_CHECK_SHARE))))


def mean_dice(counts: np.ndarray) -> float:
    """Mean over foreground classes of 2tp / (2tp + fp + fn), from counts of shape (classes, 3);
    classes absent from both prediction and reference are left out; 0.0 when all are absent."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    present = 2 * tp + fp + fn > 0
    if not present.any():
        return 0.0
    return float(np.mean(2 * tp[present] / (2 * tp + fp + fn)[present]))


def mixed_precision_holds(dice_fp32: float, dice_mixed: float,
                          tolerance: float = PRECISION_DICE_TOLERANCE) -> bool:
    return dice_mixed >= dice_fp32 - tolerance


def timing_deviation(predicted_seconds: float, measured_seconds: float) -> float:
    """(measured - predicted) / predicted; +0.5 means 50% slower than predicted."""
    if predicted_seconds <= 0 or not math.isfinite(predicted_seconds):
        return math.nan
    return (measured_seconds - predicted_seconds) / predicted_seconds


def timing_report(what: str, predicted_seconds: float, measured_seconds: float) -> tuple[str, bool]:
    """('epoch: measured 12.0 s, predicted 10.0 s (+20%)', is_warning)."""
    deviation = timing_deviation(predicted_seconds, measured_seconds)
    warn = math.isfinite(deviation) and abs(deviation) > TIMING_WARNING_SHARE
    text = (f"{what}: measured {measured_seconds:.1f} s, predicted {predicted_seconds:.1f} s "
            f"({deviation:+.0%})")
    if warn:
        text += (f"; more than {TIMING_WARNING_SHARE:.0%} off the plan's cost model (another process on this "
                 "machine, or a device other than the one measured?); re-plan with `autoseg plan --time-budget` "
                 "to fit the budget")
    return text, warn
