"""Training losses for label maps, with deep supervision: nnU-Net's soft Dice + cross-entropy (the default)
and the registry `LOSSES` a plan's `loss` entry names (`autoseg.planning.loss_choice`):

- "dice_ce": weight_ce * CE + weight_dice * soft Dice (nnU-Net);
- "generalized_dice": generalized Dice (Sudre et al. 2017), every class weighted by 1 / (its reference volume)^2;
- "tversky": Tversky index TP / (TP + alpha FP + beta FN) (Salehi et al. 2017);
- "focal_dice": weight_focal * focal loss (CE scaled by (1 - p_t)^gamma; Lin et al. 2017) + weight_dice * soft Dice.

The region losses (soft Dice, generalized Dice, Tversky) are minus their index, as nnU-Net's soft Dice:
-1 at a perfect prediction, 0 at a disjoint one.

Shapes (dimension-generic, 2D or 3D):
- logits: (B, C, *spatial) float, C = number of classes including background.
- target: (B, 1, *spatial) integer labels 0..C-1 (the channel axis of size 1 is required; it is what
  the data loader yields for segmentations). Labels < 0 (the preprocessed store's -1 outside the
  nonzero region) are ignored by every loss, so a caller may keep them or convert them to 0
  (background) as nnU-Net does.
- ignore_mask: optional bool tensor shaped like target, True where a voxel must not count.

All losses are computed in float32 even under bf16/fp16 autocast: the sums over a whole patch lose
too much precision in 16 bits, and the loss is a negligible share of the step's cost.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.network import deep_supervision_outputs
from autoseg.planning.loss_choice import default_loss

# nnU-Net's constants (reference section 5.2).
DICE_SMOOTH = 1e-5
DICE_DENOMINATOR_FLOOR = 1e-8  # keeps 0/0 away when smooth is set to 0
IGNORE_LABEL = -1


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if target.ndim != logits.ndim or target.shape[1] != 1 or target.shape[0] != logits.shape[0] \
            or target.shape[2:] != logits.shape[2:]:
        raise ValueError(f"target must be (B, 1, *spatial) matching logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")


def _valid_voxels(target: torch.Tensor, ignore_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, *spatial) bool: voxels that count (label >= 0 and not in the ignore mask)."""
    valid = target >= 0
    if ignore_mask is not None:
        valid = valid & ~ignore_mask.bool()
    return valid


def _probabilities_and_one_hot(logits: torch.Tensor, target: torch.Tensor, ignore_mask: torch.Tensor | None,
                               sum_axes_with_batch: bool) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """(softmax probabilities, one-hot target), both (B, C, *spatial) float32 and zero where a voxel does not
    count, and the axes a per-class sum runs over (spatial, and batch too when `sum_axes_with_batch`)."""
    _check_shapes(logits, target)
    if logits.shape[1] < 2:
        raise ValueError(f"region losses need background + at least one class, got {logits.shape[1]} channels")
    probabilities = torch.softmax(logits.float(), dim=1)
    with torch.no_grad():
        labels = target.long().clamp_min(0)
        valid = _valid_voxels(target, ignore_mask).float()
        one_hot = torch.zeros_like(probabilities).scatter_(1, labels, 1.0) * valid
    sum_axes = tuple(range(2, logits.ndim))
    return probabilities * valid, one_hot, ((0,) + sum_axes if sum_axes_with_batch else sum_axes)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool,
                   ignore_mask: torch.Tensor | None = None, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Minus the mean soft Dice of the foreground classes (minimum about -1, at a perfect prediction).

    dice_c = (2 * sum(p_c * g_c) + smooth) / (sum(g_c) + sum(p_c) + smooth), p = softmax(logits),
    g = one-hot target, sums over the spatial axes and, with `batch_dice`, also over the batch (one
    Dice per class for the whole batch instead of one per sample and class). Returns a 0-d tensor.
    """
    probabilities, one_hot, sum_axes = _probabilities_and_one_hot(logits, target, ignore_mask, batch_dice)
    probabilities, one_hot = probabilities[:, 1:], one_hot[:, 1:]
    intersection = (probabilities * one_hot).sum(sum_axes)
    sum_pred = probabilities.sum(sum_axes)
    sum_gt = one_hot.sum(sum_axes)
    dice = (2 * intersection + smooth) / (sum_gt + sum_pred + smooth).clamp_min(DICE_DENOMINATOR_FLOOR)
    return -dice.mean()


def generalized_dice_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool,
                          ignore_mask: torch.Tensor | None = None, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Minus the generalized Dice (Sudre et al. 2017) over all classes, background included:

        GD = (2 * sum_c w_c sum(p_c g_c) + smooth) / (sum_c w_c sum(p_c + g_c) + smooth),  w_c = 1 / sum(g_c)^2

    per sample (mean over the batch), or over the whole batch with `batch_dice`. The weights are normalised
    to sum 1 (GD does not change, but `smooth` stays small next to the sums however large the volume), and a
    class absent from the reference gets the largest weight of the present ones (MONAI's rule) instead of 1/0.
    """
    probabilities, one_hot, sum_axes = _probabilities_and_one_hot(logits, target, ignore_mask, batch_dice)
    reference = one_hot.sum(sum_axes)  # (C,) or (B, C)
    with torch.no_grad():
        weights = 1.0 / reference.square()
        finite = torch.isfinite(weights)
        weights = torch.where(finite, weights, torch.where(finite, weights, 0.0).amax(dim=-1, keepdim=True))
        weights = torch.where(weights.sum(-1, keepdim=True) > 0, weights, 1.0)  # nothing counted: any weights
        weights = weights / weights.sum(dim=-1, keepdim=True)
    intersection = ((probabilities * one_hot).sum(sum_axes) * weights).sum(-1)
    total = ((probabilities + one_hot).sum(sum_axes) * weights).sum(-1)
    return -((2 * intersection + smooth) / (total + smooth).clamp_min(DICE_DENOMINATOR_FLOOR)).mean()


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool, alpha: float, beta: float,
                 ignore_mask: torch.Tensor | None = None, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Minus the mean Tversky index of the foreground classes (Salehi et al. 2017):
    (TP + smooth) / (TP + alpha FP + beta FN + smooth) with soft TP = sum(p g), FP = sum(p (1 - g)),
    FN = sum((1 - p) g); alpha = beta = 0.5 is the soft Dice, beta > alpha favours recall."""
    probabilities, one_hot, sum_axes = _probabilities_and_one_hot(logits, target, ignore_mask, batch_dice)
    probabilities, one_hot = probabilities[:, 1:], one_hot[:, 1:]
    true_positive = (probabilities * one_hot).sum(sum_axes)
    false_positive = probabilities.sum(sum_axes) - true_positive
    false_negative = one_hot.sum(sum_axes) - true_positive
    denominator = true_positive + alpha * false_positive + beta * false_negative + smooth
    return -((true_positive + smooth) / denominator.clamp_min(DICE_DENOMINATOR_FLOOR)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float,
               ignore_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the counted voxels of -(1 - p_t)^gamma log p_t (Lin et al. 2017), p_t the softmax probability
    of the reference class; gamma = 0 is the cross-entropy. 0 (with gradient graph) if no voxel counts."""
    _check_shapes(logits, target)
    valid = _valid_voxels(target, ignore_mask)[:, 0]
    log_p = torch.log_softmax(logits.float(), dim=1).gather(1, target.long().clamp_min(0))[:, 0]
    per_voxel = -(1 - log_p.exp()).pow(gamma) * log_p
    return (per_voxel * valid).sum() / valid.sum().clamp_min(1)


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor,
                       ignore_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean voxel-wise cross-entropy over the counted voxels; 0 (with gradient graph) if none count."""
    _check_shapes(logits, target)
    labels = target.long()
    if ignore_mask is not None:
        labels = labels.masked_fill(ignore_mask.bool(), IGNORE_LABEL)
    labels = labels.clamp_min(IGNORE_LABEL)[:, 0]  # any negative label means ignore
    summed = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="sum")
    counted = (labels != IGNORE_LABEL).sum().clamp_min(1)
    return summed / counted


class DiceCELoss(nn.Module):
    """weight_ce * CE + weight_dice * soft Dice loss (nnU-Net: 1 and 1)."""

    def __init__(self, batch_dice: bool, weight_ce: float = 1.0, weight_dice: float = 1.0,
                 smooth: float = DICE_SMOOTH):
        super().__init__()
        self.batch_dice, self.weight_ce, self.weight_dice, self.smooth = batch_dice, weight_ce, weight_dice, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                ignore_mask: torch.Tensor | None = None) -> torch.Tensor:
        ce = cross_entropy_loss(logits, target, ignore_mask)
        dice = soft_dice_loss(logits, target, self.batch_dice, ignore_mask, self.smooth)
        return self.weight_ce * ce + self.weight_dice * dice


class CompoundLoss(nn.Module):
    """sum of weight * term(logits, target, ignore_mask) over (weight, term) pairs."""

    def __init__(self, terms: list[tuple[float, Callable[..., torch.Tensor]]]):
        super().__init__()
        self.terms = terms

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                ignore_mask: torch.Tensor | None = None) -> torch.Tensor:
        return sum(weight * term(logits, target, ignore_mask=ignore_mask) for weight, term in self.terms)


# name -> builder(parameters, batch_dice); the names and parameters are autoseg.planning.loss_choice's.
LOSSES = {
    "dice_ce": lambda p, batch_dice: DiceCELoss(batch_dice, p["weight_ce"], p["weight_dice"]),
    "generalized_dice": lambda p, batch_dice: CompoundLoss(
        [(1.0, partial(generalized_dice_loss, batch_dice=batch_dice))]),
    "tversky": lambda p, batch_dice: CompoundLoss(
        [(1.0, partial(tversky_loss, batch_dice=batch_dice, alpha=p["alpha"], beta=p["beta"]))]),
    "focal_dice": lambda p, batch_dice: CompoundLoss(
        [(p["weight_focal"], partial(focal_loss, gamma=p["gamma"])),
         (p["weight_dice"], partial(soft_dice_loss, batch_dice=batch_dice))]),
}


def build_loss(loss: dict | None, batch_dice: bool) -> nn.Module:
    """The loss a configuration's complete `loss` entry names (None: the default, Dice + CE), for one output."""
    loss = loss or default_loss()
    parameters = {key: value for key, value in loss.items() if key != "name"}
    return LOSSES[loss["name"]](parameters, batch_dice)


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Weights 1/2^i for outputs ordered highest resolution first, the lowest-resolution one set to 0
    (nnU-Net), normalised to sum 1. A single output gets weight 1."""
    if n_outputs < 1:
        raise ValueError(f"need at least one output, got {n_outputs}")
    if n_outputs == 1:
        return [1.0]
    raw = [1.0 / 2**i for i in range(n_outputs)]
    raw[-1] = 0.0
    total = sum(raw)
    return [w / total for w in raw]


def downsample_target(target: torch.Tensor, shapes: list[tuple[int, ...]] | list[list[int]]) -> list[torch.Tensor]:
    """The (B, 1, *spatial) integer target resized to each spatial shape by nearest neighbour
    ('nearest-exact', the pixel-centre rule nnU-Net uses), keeping its dtype; labels are only picked,
    never mixed, so every output holds a subset of the input's label values."""
    resized = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        if shape == tuple(target.shape[2:]):
            resized.append(target)
            continue
        # interpolate has no integer kernels; labels are small ints, exact in float32.
        picked = F.interpolate(target.float(), size=shape, mode="nearest-exact")
        resized.append(picked.to(target.dtype))
    return resized


class DeepSupervisionLoss(nn.Module):
    """sum_i weights[i] * base_loss(outputs[i], target resized to outputs[i]).

    outputs: list of (B, C, *spatial_i) logits, highest resolution first (the U-Net's order).
    target: the full-resolution (B, 1, *spatial) labels; resizing happens here. Outputs with weight 0
    are skipped. To ignore voxels here, give them label -1 (it survives the nearest-neighbour resize).
    """

    def __init__(self, base_loss: nn.Module, weights: list[float]):
        super().__init__()
        self.base_loss, self.weights = base_loss, list(weights)

    def forward(self, outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if len(outputs) != len(self.weights):
            raise ValueError(f"{len(outputs)} outputs but {len(self.weights)} deep supervision weights")
        used = [(w, out) for w, out in zip(self.weights, outputs) if w != 0]
        targets = downsample_target(target, [out.shape[2:] for _, out in used])
        return sum(w * self.base_loss(out, t) for (w, out), t in zip(used, targets))


def deep_supervision_loss_weights(n_outputs: int, distributed: bool) -> list[float]:
    """The deep supervision weights; under DDP every head must receive a gradient, however small."""
    weights = deep_supervision_weights(n_outputs)
    if distributed:
        weights = [w if w > 0 else 1e-6 for w in weights]
    return weights


def build_training_loss(batch_dice: bool, n_outputs: int, distributed: bool = False) -> nn.Module:
    """nnU-Net's loss for a network with `n_outputs` outputs (1 = no deep supervision).

    With n_outputs > 1 call it as loss(list_of_logits, target); otherwise loss(logits, target).
    """
    base = DiceCELoss(batch_dice)
    if n_outputs == 1:
        return base
    return DeepSupervisionLoss(base, deep_supervision_loss_weights(n_outputs, distributed))


def loss_for_architecture(architecture, batch_dice: bool, distributed: bool = False,
                          loss: dict | None = None) -> nn.Module:
    """The training loss (`loss`: a configuration's entry, None = Dice + CE) of a network built from
    `architecture`. With deep supervision the network returns a list of outputs (a list even of one), scored
    by DeepSupervisionLoss with the weights its registry entry asks for (`autoseg.network.deep_supervision_outputs`:
    nnU-Net's halving per decoder level, or equal weights for UNet++'s top nodes and U²-Net's side outputs)."""
    base = build_loss(loss, batch_dice)
    if not architecture.deep_supervision:
        return base
    n_outputs, weighting = deep_supervision_outputs(architecture)
    if weighting == "equal":
        return DeepSupervisionLoss(base, [1.0 / n_outputs] * n_outputs)
    return DeepSupervisionLoss(base, deep_supervision_loss_weights(n_outputs, distributed))
