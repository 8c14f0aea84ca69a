"""The network as a plan describes it: plain data, registered by key, no import paths.

An `Architecture` is everything needed to build the U-Net (see `autoseg.network.unet`) and to
estimate its activation memory without building it, which is what the planner does many times.
Kernel sizes and strides are per stage and per spatial axis, in the plan's (transposed) axis order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Registered network builders; a plan names one of these keys, never a module path.
ARCHITECTURES = ("plain_unet",)


@dataclass
class Architecture:
    name: str  # key in ARCHITECTURES
    dimension: int  # 2 or 3
    input_channels: int
    num_classes: int  # including background
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]  # per stage, per axis
    strides: list[list[int]]  # per stage, per axis; stage 0 is all ones
    convs_per_stage: int = 2
    deep_supervision: bool = True

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)

    def total_downsampling(self) -> list[int]:
        """Product of the strides per axis: the patch must be a multiple of it."""
        return [int(v) for v in np.prod(np.asarray(self.strides), axis=0)]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Architecture":
        return cls(**data)


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
