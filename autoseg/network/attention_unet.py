"""Attention U-Net (Oktay et al., "Attention U-Net: learning where to look for the pancreas", MIDL 2018).

The plain U-Net of `autoseg.network.unet` (same encoder, decoder, heads and deep supervision outputs),
with an additive attention gate on every skip connection. With skip features x (encoder stage s) and
the gating signal g (the coarser decoder input, stage s + 1):

    alpha = sigmoid(psi(ReLU(W_x x + W_g g)))        on g's grid
    skip  = upsample(alpha, x's grid) * x

W_x is a conv whose kernel and stride are the stride between the two stages (it brings x onto g's grid,
as in the paper), W_g and psi 1x1 convs; the intermediate width is half the skip's features (at least 1).
alpha is resampled by (bi/tri)linear interpolation. Cost: a few small convs per level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.network.architecture import Architecture
from autoseg.network.unet import CONV, PlainUNet, he_initialise

_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}


class AttentionGate(nn.Module):
    def __init__(self, dimension: int, skip_channels: int, gating_channels: int, stride: list[int]):
        super().__init__()
        conv = CONV[dimension]
        inner = max(1, skip_channels // 2)
        self.mode = _LINEAR_MODE[dimension]
        self.skip_projection = conv(skip_channels, inner, stride, stride, 0, bias=False)  # W_x
        self.gating_projection = conv(gating_channels, inner, 1, 1, 0, bias=True)  # W_g
        self.psi = conv(inner, 1, 1, 1, 0, bias=True)

    def coefficients(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """skip (B, C_x, *fine), gating (B, C_g, *coarse) -> alpha (B, 1, *fine), in [0, 1]."""
        projected = self.skip_projection(skip)
        gating = self.gating_projection(gating)
        if projected.shape[2:] != gating.shape[2:]:  # ceil vs floor at odd sizes: align on the gating grid
            projected = F.interpolate(projected, size=gating.shape[2:], mode=self.mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(torch.relu(projected + gating)))
        return F.interpolate(alpha, size=skip.shape[2:], mode=self.mode, align_corners=False)

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return skip * self.coefficients(skip, gating)


class AttentionUNet(PlainUNet):
    def __init__(self, architecture: Architecture):
        super().__init__(architecture)
        features = architecture.features_per_stage
        # Decoder index i works at encoder stage num_stages - 2 - i (PlainUNet's order).
        self.attention_gates = nn.ModuleList(
            AttentionGate(architecture.dimension, features[stage], features[stage + 1], architecture.strides[stage + 1])
            for stage in range(architecture.num_stages - 2, -1, -1))
        self.attention_gates.apply(he_initialise)

    def skip_connection(self, decoder_index: int, skip: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
        return self.attention_gates[decoder_index](skip, below)


def build_attention_unet(architecture: Architecture) -> AttentionUNet:
    return AttentionUNet(architecture)
