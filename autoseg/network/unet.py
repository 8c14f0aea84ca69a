"""The plain convolutional U-Net of nnU-Net, built from an `Architecture` alone.

Dimension-generic: `architecture.dimension` (2 or 3) picks Conv2d/Conv3d, InstanceNorm2d/3d and
ConvTranspose2d/3d; nothing else differs between 2D and 3D.

Tensors: input (B, input_channels, *patch_size) float; logits (B, num_classes, *spatial) float.
The patch size must be a multiple of `architecture.total_downsampling()` per axis so that every
transposed convolution gives back exactly the shape of its skip connection.

Deep supervision: `PlainUNet.deep_supervision` (initialised from the architecture, toggle it freely,
e.g. off for inference) decides whether `forward` returns one logits tensor per decoder stage
(highest resolution first, len = num_stages - 1) or only the full-resolution logits. It does not
depend on train/eval mode, because validation during training uses the same outputs as training.
"""

from __future__ import annotations

import torch
from torch import nn

from autoseg.errors import PlanError
from autoseg.network.architecture import CONV_BLOCKS, Architecture
from autoseg.network.rep import RepConv

# nnU-Net's PlainConvUNet settings (reference section 3.5).
NORM_EPS = 1e-5
LEAKY_RELU_SLOPE = 1e-2
HE_INIT_NEGATIVE_SLOPE = 1e-2

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
TRANSPOSED_CONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def conv_norm_nonlin(dimension: int, in_channels: int, out_channels: int, kernel_size: list[int],
                     stride: list[int], block: str = "plain", dilation: int = 1) -> nn.Sequential:
    """conv (padding dilation * (k // 2), so the output is ceil(input / stride)) -> InstanceNorm -> LeakyReLU.

    `block` "rep" trains the conv as parallel KxK + 1x1 (+ identity) branches summed before the norm
    (`autoseg.network.rep.RepConv`; `fuse_rep_blocks` turns it back into this plain conv).
    """
    if block == "rep":
        conv = RepConv(CONV[dimension], in_channels, out_channels, kernel_size, stride, dilation)
    else:
        padding = [dilation * (k // 2) for k in kernel_size]
        conv = CONV[dimension](in_channels, out_channels, kernel_size, stride, padding, dilation, bias=True)
    return nn.Sequential(
        conv,
        INSTANCE_NORM[dimension](out_channels, eps=NORM_EPS, affine=True),
        nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True),
    )


def conv_stack(dimension: int, in_channels: int, out_channels: int, kernel_size: list[int],
               first_stride: list[int], num_convs: int, block: str = "plain") -> nn.Sequential:
    """`num_convs` conv blocks; only the first one strides (nnU-Net downsamples by strided conv)."""
    blocks = [conv_norm_nonlin(dimension, in_channels, out_channels, kernel_size, first_stride, block)]
    ones = [1] * dimension
    blocks += [conv_norm_nonlin(dimension, out_channels, out_channels, kernel_size, ones, block)
               for _ in range(num_convs - 1)]
    return nn.Sequential(*blocks)


class PlainUNet(nn.Module):
    """Encoder of strided conv stacks, decoder of transposed conv + skip concat + conv stack,
    a 1x1 segmentation head per decoder stage."""

    def __init__(self, architecture: Architecture):
        super().__init__()
        validate_architecture(architecture)
        dim, features = architecture.dimension, architecture.features_per_stage
        self.deep_supervision = architecture.deep_supervision
        self.encoder_stages = nn.ModuleList()
        in_channels = architecture.input_channels
        for stage in range(architecture.num_stages):
            self.encoder_stages.append(conv_stack(
                dim, in_channels, features[stage], architecture.kernel_sizes[stage],
                architecture.strides[stage], architecture.convs_per_stage, architecture.conv_block))
            in_channels = features[stage]
        self.upsamplers, self.decoder_stages, self.segmentation_heads = plain_decoder(
            architecture, architecture.convs_per_stage)
        self.apply(he_initialise)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder_stages:
            x = stage(x)
            skips.append(x)
        return run_decoder(self, skips, self.deep_supervision, self.skip_connection)

    def skip_connection(self, decoder_index: int, skip: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
        """What decoder stage `decoder_index` concatenates from the encoder: the skip itself here; the
        attention U-Net (`autoseg.network.attention_unet`) gates it with `below`, the coarser decoder input."""
        return skip


def plain_decoder(architecture: Architecture, convs_per_stage: int) -> tuple[nn.ModuleList, nn.ModuleList,
                                                                             nn.ModuleList]:
    """(upsamplers, decoder stages, segmentation heads) of nnU-Net's decoder, indexed from the stage just
    above the bottleneck upwards (decoder index i works at encoder stage num_stages - 2 - i): a transposed
    conv (kernel = stride) from the stage below, `convs_per_stage` convs on the concatenated skip, a 1x1 head."""
    dim, features = architecture.dimension, architecture.features_per_stage
    upsamplers, decoder_stages, heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
    for stage in range(architecture.num_stages - 2, -1, -1):
        up_stride = architecture.strides[stage + 1]
        upsamplers.append(TRANSPOSED_CONV[dim](features[stage + 1], features[stage], up_stride, up_stride, bias=True))
        decoder_stages.append(conv_stack(dim, 2 * features[stage], features[stage], architecture.kernel_sizes[stage],
                                         [1] * dim, convs_per_stage, architecture.conv_block))
        heads.append(CONV[dim](features[stage], architecture.num_classes, 1, 1, 0, bias=True))
    return upsamplers, decoder_stages, heads


def run_decoder(network: nn.Module, skips: list[torch.Tensor], deep_supervision: bool,
                skip_connection=None) -> torch.Tensor | list[torch.Tensor]:
    """The decoder of `plain_decoder` (held by `network` as upsamplers, decoder_stages, segmentation_heads)
    on the encoder's outputs, finest first (the last is the bottleneck; the list is consumed).
    With deep supervision the logits of every decoder stage, highest resolution first, else the top one.
    skip_connection(decoder index, skip, decoder input below) -> what is concatenated (default: the skip)."""
    x = skips.pop()  # bottleneck
    logits_low_to_high = []
    last = len(network.decoder_stages) - 1
    for index, (upsample, decode, head) in enumerate(
            zip(network.upsamplers, network.decoder_stages, network.segmentation_heads)):
        skip = skips.pop()
        if skip_connection is not None:
            skip = skip_connection(index, skip, x)
        x = decode(torch.cat((upsample(x), skip), dim=1))
        # Without deep supervision only the full-resolution head runs (saves its activations).
        if deep_supervision or index == last:
            logits_low_to_high.append(head(x))
    if not deep_supervision:
        return logits_low_to_high[-1]
    return logits_low_to_high[::-1]


def he_initialise(module: nn.Module) -> None:
    """Kaiming-normal weights for the LeakyReLU slope, zero biases (nnU-Net's InitWeights_He)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=HE_INIT_NEGATIVE_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def validate_architecture(architecture: Architecture) -> None:
    """Raise PlanError naming the field when the architecture cannot describe a U-Net."""
    dim, stages = architecture.dimension, architecture.num_stages
    if dim not in CONV:
        raise PlanError(f"architecture.dimension must be 2 or 3, got {dim!r}")
    if stages < 2:
        raise PlanError(f"architecture.features_per_stage needs at least 2 stages, got {stages}")
    if architecture.conv_block not in CONV_BLOCKS:
        raise PlanError(f"architecture.conv_block {architecture.conv_block!r} is not one of {', '.join(CONV_BLOCKS)}")
    if architecture.convs_per_stage < 1:
        raise PlanError(f"architecture.convs_per_stage must be >= 1, got {architecture.convs_per_stage}")
    for field in ("kernel_sizes", "strides"):
        per_stage = getattr(architecture, field)
        if len(per_stage) != stages:
            raise PlanError(f"architecture.{field} has {len(per_stage)} entries for {stages} stages")
        for stage, values in enumerate(per_stage):
            if len(values) != dim or any(int(v) < 1 for v in values):
                raise PlanError(f"architecture.{field}[{stage}] = {values} must be {dim} positive ints")
    if architecture.conv_block == "rep" and any(k % 2 == 0 for kernel in architecture.kernel_sizes for k in kernel):
        raise PlanError(f"architecture.conv_block 'rep' needs odd kernel sizes, got {architecture.kernel_sizes}")


def build_plain_unet(architecture: Architecture) -> PlainUNet:
    return PlainUNet(architecture)
