"""The residual-encoder U-Net of nnU-Net's ResEnc presets (Isensee et al., "nnU-Net Revisited", MICCAI 2024).

Encoder: a stem (conv -> InstanceNorm -> LeakyReLU, input channels -> features[0] at full resolution),
then per stage `architecture.blocks_per_stage[s]` basic residual blocks; the first block of a stage
does the striding. Decoder: PlainUNet's (`autoseg.network.unet.plain_decoder`) with
`architecture.convs_per_stage` convs per stage (1 in nnU-Net's presets), transposed-conv upsampling and
a 1x1 head per decoder stage; deep supervision as PlainUNet's (`deep_supervision` attribute, list of
logits highest resolution first, else one tensor).

A basic residual block: conv (stride) -> norm -> LeakyReLU -> conv -> norm, plus the skip, then LeakyReLU.
The skip is the identity, or a 1x1 conv (with the block's stride) and norm when the block changes the
channels or the resolution. Dimension-generic: 2D and 3D differ only by `architecture.dimension`.

Tensors: input (B, input_channels, *patch) float; patch a multiple of `architecture.total_downsampling()`.
"""

from __future__ import annotations

import torch
from torch import nn

from autoseg.errors import PlanError
from autoseg.network.architecture import Architecture
from autoseg.network.unet import (CONV, INSTANCE_NORM, LEAKY_RELU_SLOPE, NORM_EPS, conv_norm_nonlin,
                                  he_initialise, plain_decoder, run_decoder, validate_architecture)


class BasicResidualBlock(nn.Module):
    """Two convs with a skip connection around them (ResNet's basic block, norm before the sum)."""

    def __init__(self, dimension: int, in_channels: int, out_channels: int, kernel_size: list[int],
                 stride: list[int]):
        super().__init__()
        padding = [k // 2 for k in kernel_size]
        self.conv1 = conv_norm_nonlin(dimension, in_channels, out_channels, kernel_size, stride)
        self.conv2 = nn.Sequential(
            CONV[dimension](out_channels, out_channels, kernel_size, 1, padding, bias=True),
            INSTANCE_NORM[dimension](out_channels, eps=NORM_EPS, affine=True))
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels or any(s != 1 for s in stride):
            # A 1x1 conv with stride s gives ceil(n / s) voxels per axis, as the padded main path does.
            self.skip = nn.Sequential(
                CONV[dimension](in_channels, out_channels, 1, stride, 0, bias=True),
                INSTANCE_NORM[dimension](out_channels, eps=NORM_EPS, affine=True))
        self.nonlin = nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.conv2(self.conv1(x)) + self.skip(x))


def residual_stage(dimension: int, in_channels: int, out_channels: int, kernel_size: list[int],
                   stride: list[int], num_blocks: int) -> nn.Sequential:
    """`num_blocks` residual blocks; only the first strides and changes the channels."""
    blocks = [BasicResidualBlock(dimension, in_channels, out_channels, kernel_size, stride)]
    blocks += [BasicResidualBlock(dimension, out_channels, out_channels, kernel_size, [1] * dimension)
               for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResEncUNet(nn.Module):
    """Stem + residual encoder stages, PlainUNet's decoder."""

    def __init__(self, architecture: Architecture):
        super().__init__()
        validate_architecture(architecture)
        blocks = architecture.blocks_per_stage
        if blocks is None or len(blocks) != architecture.num_stages or any(int(b) < 1 for b in blocks):
            raise PlanError(f"architecture.blocks_per_stage = {blocks} must give >= 1 residual block for each of "
                            f"the {architecture.num_stages} stages")
        dim, features = architecture.dimension, architecture.features_per_stage
        self.deep_supervision = architecture.deep_supervision
        self.stem = conv_norm_nonlin(dim, architecture.input_channels, features[0], architecture.kernel_sizes[0],
                                     [1] * dim)
        self.encoder_stages = nn.ModuleList()
        in_channels = features[0]
        for stage in range(architecture.num_stages):
            self.encoder_stages.append(residual_stage(dim, in_channels, features[stage],
                                                      architecture.kernel_sizes[stage], architecture.strides[stage],
                                                      int(blocks[stage])))
            in_channels = features[stage]
        self.upsamplers, self.decoder_stages, self.segmentation_heads = plain_decoder(
            architecture, architecture.convs_per_stage)
        self.apply(he_initialise)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.encoder_stages:
            x = stage(x)
            skips.append(x)
        return run_decoder(self, skips, self.deep_supervision)


def build_resenc_unet(architecture: Architecture) -> ResEncUNet:
    return ResEncUNet(architecture)
