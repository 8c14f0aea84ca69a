"""The network as a plan describes it: plain data, registered by key, no import paths.

An `Architecture` is everything needed to build the U-Net (see `autoseg.network.unet`) and to
estimate its activation memory without building it, which is what the planner does many times.
Kernel sizes and strides are per stage and per spatial axis, in the plan's (transposed) axis order.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

import math

import numpy as np

# Registered network builders; a plan names one of these keys, never a module path.
ARCHITECTURES = ("plain_unet", "resenc", "attention_unet", "unetpp", "u2net")
# The conv block every network builds its convs from: "plain" (conv -> norm -> nonlin) or "rep" (parallel
# KxK + 1x1 + identity branches summed before the norm, fused into one plain conv for inference;
# `autoseg.network.rep`).
CONV_BLOCKS = ("plain", "rep")


@dataclass
class Architecture:
    name: str  # key in ARCHITECTURES
    dimension: int  # 2 or 3
    input_channels: int
    num_classes: int  # including background
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]  # per stage, per axis
    strides: list[list[int]]  # per stage, per axis; stage 0 is all ones
    convs_per_stage: int = 2  # per conv stack: plain_unet's encoder and decoder stages, resenc's decoder stages
    deep_supervision: bool = True
    conv_block: str = "plain"  # one of CONV_BLOCKS
    # resenc: residual blocks per encoder stage (nnU-Net's 1, 3, 4, 6, 6, ...); None for networks without.
    blocks_per_stage: list[int] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)

    def total_downsampling(self) -> list[int]:
        """Product of the strides per axis: the patch must be a multiple of it."""
        return [int(v) for v in np.prod(np.asarray(self.strides), axis=0)]

    def to_json(self) -> dict:
        """Every field of the first schema, and the later optional ones only when they differ from their
        default: a plain U-Net's JSON (plans.json, a checkpoint's identity) stays what it always was."""
        data = asdict(self)
        return {name: value for name, value in data.items()
                if name in FIRST_SCHEMA_FIELDS or value != ARCHITECTURE_DEFAULTS.get(name)}

    @classmethod
    def from_json(cls, data: dict) -> "Architecture":
        return cls(**data)


FIRST_SCHEMA_FIELDS = ("name", "dimension", "input_channels", "num_classes", "features_per_stage", "kernel_sizes",
                       "strides", "convs_per_stage", "deep_supervision")
ARCHITECTURE_DEFAULTS = {f.name: f.default for f in fields(Architecture) if f.default is not MISSING}


def stage_shapes(architecture: Architecture, patch_size: list[int]) -> list[list[int]]:
    """Spatial shape of the feature maps at each stage for a given patch."""
    shapes, current = [], np.asarray(patch_size, dtype=np.int64)
    for stride in architecture.strides:
        current = np.ceil(current / np.asarray(stride)).astype(np.int64)
        shapes.append([int(v) for v in current])
    return shapes


def feature_map_elements(architecture: Architecture, patch_size: list[int]) -> int:
    """Number of activation elements one sample stores for the backward pass.

    Sums the outputs of every convolution (encoder convs, transposed convs, decoder convs,
    segmentation heads), which is what nnU-Net's reference values (560e6 for 8 GB at batch 2)
    are calibrated against. Multiply by the batch size for a batch.
    """
    shapes = stage_shapes(architecture, patch_size)
    sizes = [int(np.prod(s)) for s in shapes]
    features = architecture.features_per_stage
    total = 0
    for stage, size in enumerate(sizes):  # encoder: convs_per_stage convs each
        total += architecture.convs_per_stage * features[stage] * size
    for stage in range(len(sizes) - 2, -1, -1):  # decoder, from just above the bottleneck upwards
        size = sizes[stage]
        total += features[stage] * size  # transposed conv output
        total += architecture.convs_per_stage * features[stage] * size
        if architecture.deep_supervision or stage == 0:
            total += architecture.num_classes * size
    total += architecture.input_channels * sizes[0]
    return int(total)


def forward_peak_elements(architecture: Architecture, tile_size: list[int]) -> int:
    """Activation elements alive at the peak of one sample's forward pass without autograd (inference).

    Without a backward pass only the encoder outputs are kept (as skip connections). In a stage's conv
    stack a block's input, its conv output and its norm output are alive together (3 maps of the stage;
    the LeakyReLU works in place); a decoder stage also holds its concatenated input (2 maps) for the
    whole stack and the stage below's output it upsampled, and the skips of the stages above it are
    still waiting. The peak is the largest of these sums over the stages, plus the input tile.
    Multiply by the batch size and the bytes per element (4 in fp32, 2 under fp16/bf16 autocast).
    """
    shapes = stage_shapes(architecture, tile_size)
    maps = [features * int(np.prod(shape)) for features, shape in zip(architecture.features_per_stage, shapes)]
    in_stack = 3 if architecture.convs_per_stage > 1 else 2
    encoder = max(sum(maps[:stage]) + in_stack * maps[stage] for stage in range(len(maps)))
    decoder = max(sum(maps[:stage]) + (2 + in_stack) * maps[stage] + maps[stage + 1]
                  for stage in range(len(maps) - 1))
    return int(max(encoder, decoder) + architecture.input_channels * int(np.prod(tile_size)))


def parameter_count(architecture: Architecture) -> int:
    """Number of scalar parameters of the U-Net `autoseg.network.unet` builds, without building it.

    Per conv block: weights in * out * prod(kernel), out biases, 2 * out instance-norm affine values.
    Per decoder stage: a transposed conv (kernel = stride) from the stage below, a conv stack on the
    concatenated skip (2x features in), and a 1x1 segmentation head (every stage has one; deep
    supervision only decides which of them run).
    """
    features, convs = architecture.features_per_stage, architecture.convs_per_stage

    def conv_stack(in_channels: int, out_channels: int, kernel: list[int]) -> int:
        size = int(np.prod(kernel))
        first = in_channels * out_channels * size + 3 * out_channels
        return first + (convs - 1) * (out_channels * out_channels * size + 3 * out_channels)

    total, in_channels = 0, architecture.input_channels
    for stage in range(architecture.num_stages):
        total += conv_stack(in_channels, features[stage], architecture.kernel_sizes[stage])
        in_channels = features[stage]
    for stage in range(architecture.num_stages - 2, -1, -1):
        up = int(np.prod(architecture.strides[stage + 1]))
        total += features[stage + 1] * features[stage] * up + features[stage]
        total += conv_stack(2 * features[stage], features[stage], architecture.kernel_sizes[stage])
        total += features[stage] * architecture.num_classes + architecture.num_classes
    return int(total)


def convolution_macs(architecture: Architecture, patch_size: list[int]) -> int:
    """Multiply-accumulates of one sample's forward pass through the U-Net's convolutions.

    Counts what `autoseg.network.unet.PlainUNet` runs: per encoder stage `convs_per_stage` convs (the
    first strided, from the previous stage's features), per decoder stage a transposed conv
    (kernel = stride) from the stage below, then convs on the concatenated skip (2x features) and a
    1x1 segmentation head (every decoder stage with deep supervision, else only the top one).
    """
    shapes = stage_shapes(architecture, patch_size)
    voxels = [math.prod(s) for s in shapes]
    features, kernels = architecture.features_per_stage, architecture.kernel_sizes
    total, in_channels = 0, architecture.input_channels
    for stage, size in enumerate(voxels):
        kernel = math.prod(kernels[stage])
        total += size * kernel * in_channels * features[stage]
        total += (architecture.convs_per_stage - 1) * size * kernel * features[stage] ** 2
        in_channels = features[stage]
    for stage in range(len(voxels) - 2, -1, -1):
        size, kernel = voxels[stage], math.prod(kernels[stage])
        up_kernel = math.prod(architecture.strides[stage + 1])
        total += voxels[stage + 1] * up_kernel * features[stage + 1] * features[stage]
        total += size * kernel * 2 * features[stage] * features[stage]
        total += (architecture.convs_per_stage - 1) * size * kernel * features[stage] ** 2
        if architecture.deep_supervision or stage == 0:
            total += size * features[stage] * architecture.num_classes
    return int(total)
