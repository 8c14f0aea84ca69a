"""Training loss of nnU-Net for label maps: soft Dice + cross-entropy, with deep supervision.

Shapes (dimension-generic, 2D or 3D):
- logits: (B, C, *spatial) float, C = number of classes including background.
- target: (B, 1, *spatial) integer labels 0..C-1 (the channel axis of size 1 is required; it is what
  the data loader yields for segmentations). Labels < 0 (the preprocessed store's -1 outside the
  nonzero region) are ignored by both Dice and CE, so a caller may keep them or convert them to 0
  (background) as nnU-Net does.
- ignore_mask: optional bool tensor shaped like target, True where a voxel must not count.

All losses are computed in float32 even under bf16/fp16 autocast: the sums over a whole patch lose
too much precision in 16 bits, and the loss is a negligible share of the step's cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool,
                   ignore_mask: torch.Tensor | None = None, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Minus the mean soft Dice of the foreground classes (minimum about -1, at a perfect prediction).

    dice_c = (2 * sum(p_c * g_c) + smooth) / (sum(g_c) + sum(p_c) + smooth), p = softmax(logits),
    g = one-hot target, sums over the spatial axes and, with `batch_dice`, also over the batch (one
    Dice per class for the whole batch instead of one per sample and class). Returns a 0-d tensor.
    """
    _check_shapes(logits, target)
    if logits.shape[1] < 2:
        raise ValueError(f"soft Dice needs background + at least one class, got {logits.shape[1]} channels")
    probabilities = torch.softmax(logits.float(), dim=1)[:, 1:]
    with torch.no_grad():
        labels = target.long().clamp_min(0)
        one_hot = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, labels, 1.0)[:, 1:]
        valid = _valid_voxels(target, ignore_mask).float()
        one_hot = one_hot * valid
    probabilities = probabilities * valid
    sum_axes = tuple(range(2, logits.ndim))
    if batch_dice:
        sum_axes = (0,) + sum_axes
    intersection = (probabilities * one_hot).sum(sum_axes)
    sum_pred = probabilities.sum(sum_axes)
    sum_gt = one_hot.sum(sum_axes)
    dice = (2 * intersection + smooth) / (sum_gt + sum_pred + smooth).clamp_min(DICE_DENOMINATOR_FLOOR)
    return -dice.mean()


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


def loss_for_architecture(architecture, batch_dice: bool, distributed: bool = False) -> nn.Module:
    """The training loss of a network built from `architecture`: with deep supervision it returns a list of
    one output per decoder stage (a list even for a single stage), scored by DeepSupervisionLoss."""
    if not architecture.deep_supervision:
        return DiceCELoss(batch_dice)
    n_outputs = architecture.num_stages - 1
    return DeepSupervisionLoss(DiceCELoss(batch_dice), deep_supervision_loss_weights(n_outputs, distributed))
