"""U²-Net (Qin et al., "U²-Net: going deeper with nested U-structure", Pattern Recognition 2020), 2D and 3D.

Every stage of the outer U is an RSU block, a residual U-block: an input conv, a small U-Net over that
conv's output (encoder convs with max pooling, a dilated conv at the bottom, decoder convs on
concatenations, upsampling by (bi/tri)linear interpolation), plus the input conv's output (the residual).

How deep each inner U is, from the plan's topology: the inner U of outer stage s pools by the strides the
outer network still applies below s (strides[s + 1:], so anisotropic axes pool as the plan says), i.e.
num_stages - 1 - s times (RSU-L with L = pools + 2 in the paper's naming): deeper stages have shallower
inner U's. The last stage has nothing left to pool and is an RSU-4F: dilations 1, 2, 4, bottom 8, no pooling.
Inner widths are half the stage's features (at least 1).

Outer network: max pooling by strides[s] before stage s > 0 (ceil mode, as the paper), a decoder stage
per level on concat(upsampled decoder below, encoder stage) with the encoder stage's RSU type, and a side
output (a conv of the stage's kernel to num_classes logits, interpolated to full resolution) on every
decoder stage and on the bottom encoder stage; a 1x1 conv fuses the num_stages side outputs.

Deep supervision: `forward` returns [fused, side_0, ..., side_{num_stages - 1}] (num_stages + 1 logits,
all full resolution, the fused prediction first, then the sides from the highest-resolution stage down);
the paper sums one loss per output with weight 1, so `autoseg.network.deep_supervision_outputs` weighs
them equally. Without deep supervision: the fused logits only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.network.architecture import Architecture
from autoseg.network.unet import CONV, conv_norm_nonlin, he_initialise, validate_architecture

_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
RSU_F_DILATIONS = (1, 2, 4)  # encoder levels of an RSU-4F; its bottom conv doubles the last one
POOLED_BOTTOM_DILATION = 2  # the bottom conv of a pooled RSU-L


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """x interpolated (bi/tri)linearly onto `like`'s spatial shape (unchanged when already there)."""
    if x.shape[2:] == like.shape[2:]:
        return x
    return F.interpolate(x, size=like.shape[2:], mode=_LINEAR_MODE[x.ndim - 2], align_corners=False)


class RSU(nn.Module):
    """RSU block: (B, in, *spatial) -> (B, out, *spatial). `pool_strides` holds one stride per inner pooling
    step (RSU-L, L = len + 2); empty gives the dilated RSU-4F."""

    def __init__(self, dimension: int, in_channels: int, mid_channels: int, out_channels: int,
                 kernel_size: list[int], pool_strides: list[list[int]], block: str):
        super().__init__()
        ones = [1] * dimension

        def cnn(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
            return conv_norm_nonlin(dimension, cin, cout, kernel_size, ones, block, dilation)

        pooled = len(pool_strides) > 0
        levels = len(pool_strides) + 1 if pooled else len(RSU_F_DILATIONS)
        dilations = [1] * levels if pooled else list(RSU_F_DILATIONS)
        self.pools = nn.ModuleList(_MAX_POOL[dimension](s, s, ceil_mode=True) for s in pool_strides)
        self.input_conv = cnn(in_channels, out_channels)
        self.encoder = nn.ModuleList(cnn(out_channels if level == 0 else mid_channels, mid_channels, dilations[level])
                                     for level in range(levels))
        self.bottom = cnn(mid_channels, mid_channels, POOLED_BOTTOM_DILATION if pooled else 2 * dilations[-1])
        # decoder[level] works at encoder level `level`; level 0 gives the block's output width.
        self.decoder = nn.ModuleList(cnn(2 * mid_channels, out_channels if level == 0 else mid_channels,
                                         dilations[level]) for level in range(levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.input_conv(x)
        skips, x = [], residual
        for level, encode in enumerate(self.encoder):
            if level > 0 and self.pools:
                x = self.pools[level - 1](x)
            x = encode(x)
            skips.append(x)
        x = self.bottom(x)
        for level in range(len(self.decoder) - 1, -1, -1):
            skip = skips[level]
            x = self.decoder[level](torch.cat((resize_to(x, skip), skip), dim=1))
        return x + residual


class U2Net(nn.Module):
    def __init__(self, architecture: Architecture):
        super().__init__()
        validate_architecture(architecture)
        a, dim, features = architecture, architecture.dimension, architecture.features_per_stage
        stages = a.num_stages
        self.deep_supervision = a.deep_supervision

        def rsu(stage: int, in_channels: int) -> RSU:
            return RSU(dim, in_channels, max(1, features[stage] // 2), features[stage], a.kernel_sizes[stage],
                       a.strides[stage + 1:], a.conv_block)

        self.pools = nn.ModuleList(_MAX_POOL[dim](s, s, ceil_mode=True) for s in a.strides)
        self.encoder = nn.ModuleList(rsu(s, a.input_channels if s == 0 else features[s - 1]) for s in range(stages))
        # decoder[s] works at stage s (s = 0 .. stages - 2), reading the stage below and the encoder's skip.
        self.decoder = nn.ModuleList(rsu(s, features[s + 1] + features[s]) for s in range(stages - 1))
        self.sides = nn.ModuleList(
            CONV[dim](features[s], a.num_classes, a.kernel_sizes[s], 1, [k // 2 for k in a.kernel_sizes[s]])
            for s in range(stages))
        self.fuse = CONV[dim](stages * a.num_classes, a.num_classes, 1, 1, 0)
        self.apply(he_initialise)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        full_resolution, skips = x, []
        for pool, encode in zip(self.pools, self.encoder):
            x = encode(pool(x))
            skips.append(x)
        stage_outputs = [skips[-1]]  # bottom first, then the decoder stages upwards
        for stage in range(len(self.decoder) - 1, -1, -1):
            skip = skips[stage]
            stage_outputs.append(self.decoder[stage](torch.cat((resize_to(stage_outputs[-1], skip), skip), dim=1)))
        stage_outputs.reverse()  # stage 0 (highest resolution) first
        sides = [resize_to(side(out), full_resolution) for side, out in zip(self.sides, stage_outputs)]
        fused = self.fuse(torch.cat(sides, dim=1))
        return [fused, *sides] if self.deep_supervision else fused


def build_u2net(architecture: Architecture) -> U2Net:
    return U2Net(architecture)
