"""The history of a training run: one record per epoch (losses, pseudo Dice and its moving average,
learning rate, time), kept in checkpoints, written to the training log and plotted
(`autoseg.training.progress`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EMA_DECAY = 0.9  # pseudo-Dice moving average, which decides checkpoint_best


@dataclass
class EpochLog:
    """Per-epoch history, saved in checkpoints and plotted in progress.png."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    pseudo_dice: list[list[float]] = field(default_factory=list)  # per foreground class
    ema_pseudo_dice: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    data_wait_seconds: list[float] = field(default_factory=list)
    # [epochs done, text]: what happened to the run (resumed, schedule recomputed), also in training_log.txt
    notes: list[list] = field(default_factory=list)


def foreground_counts(outputs, target) -> np.ndarray:
    """[tp, fp, fn] per foreground class (shape (classes - 1, 3)) of the argmax of the highest-resolution
    output against `target` (batch, 1, *spatial)."""
    logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    predicted = logits.argmax(1)
    labels = target[:, 0]
    counts = []
    for label in range(1, logits.shape[1]):
        p, t = predicted == label, labels == label
        counts.append([(p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()])
    return np.asarray(counts, dtype=np.float64).reshape(-1, 3)


def dice_per_class(counts: np.ndarray) -> list[float]:
    """Dice of each foreground class from its summed [tp, fp, fn]; NaN for a class absent from both."""
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return [float(d) for d in dice]


def record_epoch(log: EpochLog, epoch: int, train_loss: float, val_loss: float, dice: list[float], lr: float,
                 seconds: float, waited: float) -> dict:
    """Append epoch `epoch` (1-based) to `log`, with the updated moving average of the mean pseudo Dice;
    returns the epoch's record (what `TrainingEvents.on_epoch_end` and the log line get)."""
    mean_dice = float(np.nanmean(dice)) if not all(np.isnan(dice)) else 0.0
    previous = log.ema_pseudo_dice[-1] if log.ema_pseudo_dice else None
    ema = mean_dice if previous is None else EMA_DECAY * previous + (1 - EMA_DECAY) * mean_dice
    for name, value in (("train_loss", train_loss), ("val_loss", val_loss), ("pseudo_dice", dice),
                        ("ema_pseudo_dice", ema), ("learning_rate", lr), ("epoch_seconds", seconds),
                        ("data_wait_seconds", waited)):
        getattr(log, name).append(value)
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "pseudo_dice": dice,
            "ema_pseudo_dice": ema, "learning_rate": lr, "epoch_seconds": seconds, "data_wait_seconds": waited}
