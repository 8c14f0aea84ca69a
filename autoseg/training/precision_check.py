"""Confirming a mixed precision during training: the same validation batches segmented by the
mixed-precision and the fp32 forward of the current weights, their pseudo Dice compared
(`autoseg.training.expectations.mixed_precision_holds`). When mixed precision loses Dice, training
(and inference after it) continues in fp32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from autoseg.training.epoch_log import foreground_counts


@dataclass
class PrecisionVerdict:
    mixed: str  # the mixed precision checked, e.g. "bf16"
    fp32_dice: float  # mean foreground pseudo Dice of the fp32 forward
    mixed_dice: float
    holds: bool  # the mixed precision may stay

    def message(self, epoch: int) -> str:
        outcome = f"keeping {self.mixed}" if self.holds else "continuing in fp32"
        return (f"precision check after epoch {epoch}: {self.mixed} pseudo Dice {self.mixed_dice:.4f} vs fp32 "
                f"{self.fp32_dice:.4f}; {outcome}")


def compare_precisions(network, batches: Iterable[tuple], device_type: str, mixed: str, mixed_dtype,
                       sum_over_ranks: Callable[[np.ndarray], np.ndarray]) -> PrecisionVerdict:
    """Segment each (data, target) of `batches` (on the network's device) in fp32 and in `mixed`
    (autocast to `mixed_dtype`); the pseudo Dice of each over all batches and ranks decides."""
    import torch

    from autoseg.training import expectations

    network.eval()
    counts = {"fp32": 0.0, mixed: 0.0}
    for data, target in batches:
        for name, dtype in (("fp32", None), (mixed, mixed_dtype)):
            with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                outputs = network(data)
            counts[name] = counts[name] + foreground_counts(outputs, target)
    dice = {name: expectations.mean_dice(sum_over_ranks(np.asarray(c, dtype=np.float64)))
            for name, c in counts.items()}
    return PrecisionVerdict(mixed, dice["fp32"], dice[mixed],
                            expectations.mixed_precision_holds(dice["fp32"], dice[mixed]))
