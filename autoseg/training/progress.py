"""Training observability: a text log line per epoch and progress.png with the curves.

training_log.txt holds one "epoch N: ..." line per epoch and, between them, "note after epoch N: ..."
lines for what happened to the run itself (resumed, learning-rate schedule recomputed); the notes
are kept in the checkpoint's log (`EpochLog.notes`) so that rewriting the file on resume keeps them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict
from pathlib import Path

from autoseg.artifacts import write_atomic


def format_epoch(record: dict) -> str:
    dice = ", ".join("nan" if math.isnan(d) else f"{d:.3f}" for d in record["pseudo_dice"])
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
            f"pseudo Dice [{dice}] (EMA {record['ema_pseudo_dice']:.3f}), lr {record['learning_rate']:.2e}, "
            f"{record['epoch_seconds']:.1f} s ({record['data_wait_seconds']:.1f} s waiting for data)")


def format_note(epochs_done: int, text: str) -> str:
    return f"note after epoch {epochs_done}: {text}"


def append_log_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(format_epoch(record) + "\n")


def append_note(path: Path, epochs_done: int, text: str) -> None:
    with open(path, "a") as f:
        f.write(format_note(epochs_done, text) + "\n")


def _epoch_history(log) -> dict[str, list]:
    """The per-epoch series of an EpochLog (its notes left out)."""
    history = asdict(log)
    history.pop("notes", None)
    return history


def rewrite_log(path: Path, log) -> None:
    """training_log.txt holding exactly the epochs of `log` (an EpochLog), one line each.

    On resume from a checkpoint older than the last logged epoch (checkpoints every N epochs), the
    lines of the epochs being redone are dropped, so the file never lists an epoch twice.
    """
    history = _epoch_history(log)
    epochs = len(history["train_loss"])
    notes = [(int(done), str(text)) for done, text in getattr(log, "notes", [])]
    lines = []
    for index in range(epochs + 1):
        lines += [format_note(done, text) for done, text in notes if done == index]
        if index < epochs:
            lines.append(format_epoch({"epoch": index + 1, **{name: values[index] for name, values in history.items()}}))

    def write(tmp: str) -> None:
        Path(tmp).write_text("".join(line + "\n" for line in lines))

    write_atomic(path, write)


def plot_progress(log, path: Path) -> None:
    """Three panels: losses and pseudo Dice; epoch time; learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    history = _epoch_history(log)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    figure, (losses, times, rates) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    losses.plot(epochs, history["train_loss"], label="train loss", color="tab:blue")
    losses.plot(epochs, history["val_loss"], label="val loss", color="tab:red")
    losses.set_ylabel("loss")
    dice_axis = losses.twinx()
    dice = np.asarray(history["pseudo_dice"], dtype=float)
    if dice.size:
        dice = dice.reshape(len(epochs), -1)
        if dice.shape[1] > 1:  # one curve per foreground label, then their mean
            for label in range(dice.shape[1]):
                dice_axis.plot(epochs, dice[:, label], lw=0.8, alpha=0.7, label=f"pseudo Dice label {label + 1}")
        with warnings.catch_warnings():  # an epoch where no label was seen: a gap, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            dice_axis.plot(epochs, np.nanmean(dice, axis=1), ":", color="tab:green", label="pseudo Dice")
    dice_axis.plot(epochs, history["ema_pseudo_dice"], color="tab:green", label="pseudo Dice (EMA)")
    dice_axis.set_ylabel("pseudo Dice")
    dice_axis.set_ylim(0, 1)
    losses.legend(loc="upper left")
    dice_axis.legend(loc="upper right")
    times.plot(epochs, history["epoch_seconds"], label="epoch")
    times.plot(epochs, history["data_wait_seconds"], label="waiting for data")
    times.set_ylabel("seconds")
    times.legend()
    rates.plot(epochs, history["learning_rate"])
    rates.set_ylabel("learning rate")
    rates.set_xlabel("epoch")
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=80))
    plt.close(figure)
