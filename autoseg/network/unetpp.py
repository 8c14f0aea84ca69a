"""UNet++ (Zhou et al., "UNet++: a nested U-Net architecture", DLMIA 2018; TMI 2019), dimension-generic.

Nodes X(i, j): depth i (encoder stage, 0 = full resolution), column j. Column 0 is the plain U-Net's
encoder (strided conv stacks); every other node concatenates all earlier nodes of its row and the
upsampled node below-left, then runs a conv stack:

    X(i, j) = conv_stack(concat(X(i, 0), ..., X(i, j - 1), up(X(i + 1, j - 1))))     for i + j <= L

with L = num_stages - 1, `up` a transposed conv with the stride between the two stages (as the plain
U-Net's decoder). A 1x1 head on each top node X(0, j), j = 1..L, gives a full-resolution prediction.

Deep supervision (Zhou: a loss on every top node, averaged): `forward` returns the L heads' logits,
deepest first, [head(X(0, L)), ..., head(X(0, 1))], all at full resolution. That is as many outputs
as the plain U-Net's decoder levels; `autoseg.network.deep_supervision_outputs` tells the loss to weigh
them equally (nnU-Net's halving would leave X(0, 1) untrained, and with it the depth-1 pruned network).
Without deep supervision, `forward` returns head(X(0, L)), or with `prune_to_depth(network, d)`,
head(X(0, d)) computed from the nodes with i + j <= d only: the encoder below depth d and every other
node are skipped (Zhou's pruned inference, trading accuracy for speed).
"""

from __future__ import annotations

import torch
from torch import nn

from autoseg.errors import PlanError
from autoseg.network.architecture import Architecture
from autoseg.network.unet import CONV, TRANSPOSED_CONV, conv_stack, he_initialise, validate_architecture


class UNetPlusPlus(nn.Module):
    def __init__(self, architecture: Architecture):
        super().__init__()
        validate_architecture(architecture)
        a, dim, features = architecture, architecture.dimension, architecture.features_per_stage
        self.depth = a.num_stages - 1  # L
        self.deep_supervision = a.deep_supervision
        self.inference_depth: int | None = None  # set by prune_to_depth; None = L
        # columns[j][i] is node X(i, j); upsamplers[j - 1][i] brings X(i + 1, j - 1) to row i.
        in_channels = [a.input_channels] + features[:-1]
        self.columns = nn.ModuleList([nn.ModuleList(
            conv_stack(dim, in_channels[i], features[i], a.kernel_sizes[i], a.strides[i], a.convs_per_stage,
                       a.conv_block) for i in range(a.num_stages))])
        self.upsamplers = nn.ModuleList()
        for j in range(1, self.depth + 1):
            rows = range(self.depth + 1 - j)
            self.upsamplers.append(nn.ModuleList(
                TRANSPOSED_CONV[dim](features[i + 1], features[i], a.strides[i + 1], a.strides[i + 1], bias=True)
                for i in rows))
            self.columns.append(nn.ModuleList(
                conv_stack(dim, (j + 1) * features[i], features[i], a.kernel_sizes[i], [1] * dim,
                           a.convs_per_stage, a.conv_block) for i in rows))
        self.heads = nn.ModuleList(CONV[dim](features[0], a.num_classes, 1, 1, 0, bias=True)
                                   for _ in range(self.depth))  # heads[j - 1] reads X(0, j)
        self.apply(he_initialise)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        depth = self.depth if self.deep_supervision or self.inference_depth is None else self.inference_depth
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(depth + 1):
            x = self.columns[0][i](x)
            nodes[i, 0] = x
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                below = self.upsamplers[j - 1][i](nodes[i + 1, j - 1])
                nodes[i, j] = self.columns[j][i](torch.cat([nodes[i, k] for k in range(j)] + [below], dim=1))
        if self.deep_supervision:
            return [self.heads[j - 1](nodes[0, j]) for j in range(depth, 0, -1)]
        return self.heads[depth - 1](nodes[0, depth])


def prune_to_depth(network: UNetPlusPlus, depth: int | None) -> UNetPlusPlus:
    """Make the single-output forward (deep supervision off, as in inference) predict from X(0, depth),
    computing only the nodes it depends on; None restores the full depth. Returns the network."""
    if depth is not None and not 1 <= depth <= network.depth:
        raise PlanError(f"UNet++ pruning depth must be 1..{network.depth}, got {depth}")
    network.inference_depth = depth
    return network


def build_unetpp(architecture: Architecture) -> UNetPlusPlus:
    return UNetPlusPlus(architecture)
