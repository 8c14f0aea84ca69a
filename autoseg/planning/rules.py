"""The planner's decisions, one small pure function each, with nnU-Net v2's constants.

Every rule works on plain lists (spacings in mm, shapes and patches in voxels) in the axis order
it is given; the planner calls them in transposed order (coarsest axis first). The rules are
dimension-generic: a 2D configuration passes 2 spacings and a 2-long patch.

Constants follow nnU-Net v2's `ExperimentPlanner` (see docs of the method in
/work/shared/reference/nnunet.md, section 3). Where autoseg departs from it, the constant's comment
says why.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import numpy as np

from autoseg.errors import PlanError
from autoseg.network.architecture import Architecture
from autoseg.network.cost import network_cost
from autoseg.preprocessing.resampling import ANISOTROPY_THRESHOLD

# --- transpose and target spacing ---------------------------------------------------------------
# An axis is anisotropic when its spacing exceeds ANISOTROPY_THRESHOLD times the others' (the same
# threshold as resampling's, as in nnU-Net) and its median size (voxels) is below 1 / this of every
# other axis' size.
ANISOTROPY_SIZE_RATIO = 3.0
# Added when the coarse axis' 10th percentile falls below the other axes' spacing, so it stays the coarsest.
ANISOTROPIC_SPACING_MARGIN_MM = 1e-5

# --- normalization ------------------------------------------------------------------------------
# z-scoring inside the nonzero mask only pays off when cropping removed a lot of background: a quarter
# or more of the median volume, i.e. it kept <= this share (nnU-Net: strictly < 0.75; the same but at 0.75).
USE_MASK_MAX_RELATIVE_SIZE = 0.75
CT_NAMES = ("ct",)
NO_NORMALIZATION_NAMES = ("nonorm", "none")
RGB_NAMES = ("r", "g", "b", "rgb", "rgb_to_0_1")

# --- network topology ---------------------------------------------------------------------------
# Smallest feature-map edge (voxels) at the bottleneck: an axis is pooled only while it is >= 2x this.
MIN_FEATURE_MAP_EDGE = 4
# An axis counts as "same resolution" as the finest one while its spacing is < this factor of it:
# only such axes are pooled, and they get 3-wide kernels (else 1: 1x3x3 kernels on thick slices).
SAME_RESOLUTION_SPACING_RATIO = 2.0
# nnU-Net has no cap beyond the size rule; these keep absurd patches from making absurd networks
# (256^3 -> 6 pools -> 7 stages in 3D; 512^2 -> 7 pools -> 8 stages in 2D).
MAX_STAGES = {2: 8, 3: 7}
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
CONVS_PER_STAGE = 2
NETWORK_NAME = "plain_unet"
# nnU-Net's ResEnc presets: residual blocks per encoder stage (1, 3, 4, 6, then 6 for every deeper stage)
# and one conv per decoder stage.
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6)
RESENC_DECODER_CONVS = 1

# --- patch size, GPU memory and batch size ------------------------------------------------------
# The initial patch holds this many voxels with the same physical extent along every axis.
INITIAL_PATCH_VOXELS = {2: 2048**2, 3: 256**3}
# nnU-Net's calibration: a per-sample feature-map size of REFERENCE_FEATURE_MAP_ELEMENTS trained at
# REFERENCE_BATCH_SIZE uses about REFERENCE_GPU_MEMORY_GB (measured by its authors, mixed precision,
# weights, optimizer state and cuDNN workspace included). Budgets scale linearly with the GPU memory.
REFERENCE_FEATURE_MAP_ELEMENTS = {2: 85e6, 3: 560e6}
REFERENCE_BATCH_SIZE = {2: 12, 3: 2}
REFERENCE_GPU_MEMORY_GB = 8.0
MIN_BATCH_SIZE = 2
# One batch never covers more than this share of all the dataset's voxels (limits overfitting on
# small datasets with big batches).
MAX_DATASET_COVERED = 0.05


class MemoryReference(NamedTuple):
    """A calibration point: `elements` (per sample, by dimension) at REFERENCE_BATCH_SIZE train in
    `gpu_memory_gb`; memory scales linearly from it. `max_dataset_covered`: the batch-size cap's share."""

    elements: dict[int, float]
    gpu_memory_gb: float
    max_dataset_covered: float


PLAIN_MEMORY_REFERENCE = MemoryReference(REFERENCE_FEATURE_MAP_ELEMENTS, REFERENCE_GPU_MEMORY_GB, MAX_DATASET_COVERED)
# nnU-Net's ResEncUNetPlanner (no preset): its own calibration, the default's 5% cap.
RESENC_MEMORY_REFERENCE = MemoryReference({2: 135e6, 3: 680e6}, 8.0, MAX_DATASET_COVERED)
# The ResEnc presets (nnU-Net Revisited): named memory targets with their calibration, and no dataset cap.
RESENC_PRESETS = {
    "M": MemoryReference({2: 135e6, 3: 680e6}, 8.0, 1.0),
    "L": MemoryReference({2: 380e6, 3: 2.1e9}, 24.0, 1.0),
    "XL": MemoryReference({2: 560e6, 3: 3.6e9}, 40.0, 1.0),
}
DEFAULT_GPU_MEMORY_GB = 8.0

# --- 3d_lowres ----------------------------------------------------------------------------------
# A low-resolution stage is planned when the full-resolution patch covers less than this share of
# the median image, and its spacing grows until its own patch covers at least this share.
LOWRES_MIN_PATCH_COVERAGE = 0.25
LOWRES_SPACING_STEP = 1.03  # nnU-Net v2 (v1 used 1.01, which is slow for no visible gain)
# While some axis is finer than 1/this of the coarsest, only such fine axes are coarsened.
LOWRES_FINE_AXIS_RATIO = 2.0
# The low-res stage is dropped unless its median image has at least this many times fewer voxels.
LOWRES_MIN_VOXEL_REDUCTION = 2.0
LOWRES_MAX_STEPS = 400  # 1.03**400 ~ 1.4e5: never reached on real data; guards against a loop


class Topology(NamedTuple):
    """Network layout for one patch: per stage and per axis (stage 0 has stride 1 everywhere)."""

    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    patch_size: list[int]  # padded up to a multiple of `divisor`
    divisor: list[int]  # product of the strides per axis


class FittedPatch(NamedTuple):
    """A patch that fits the memory budget at the minimum batch size, with its network."""

    patch_size: list[int]
    architecture: Architecture
    feature_map_elements: int  # per sample


# --- transpose and target spacing ---------------------------------------------------------------
def transpose_for(spacing: list[float]) -> tuple[list[int], list[int]]:
    """Axis permutations putting the coarsest-spacing axis first (others keep their order).

    Returns (forward, backward): `transposed = array.transpose(forward)`, and `backward` undoes it.
    Ties keep the first axis, so isotropic data is not transposed.
    """
    coarsest = int(np.argmax(spacing))
    forward = [coarsest] + [axis for axis in range(len(spacing)) if axis != coarsest]
    backward = [int(i) for i in np.argsort(forward)]
    return forward, backward


def is_anisotropic(median_spacing: list[float], median_shape: list[float]) -> bool:
    """True when the coarsest axis is > 3x coarser than all others and < 1/3 of their size."""
    coarse = int(np.argmax(median_spacing))
    others = [axis for axis in range(len(median_spacing)) if axis != coarse]
    if not others:
        return False
    coarse_spacing_ratio = median_spacing[coarse] / max(median_spacing[a] for a in others)
    coarse_is_short = median_shape[coarse] * ANISOTROPY_SIZE_RATIO < min(median_shape[a] for a in others)
    return bool(coarse_spacing_ratio > ANISOTROPY_THRESHOLD and coarse_is_short)


def fullres_target_spacing(median_spacing: list[float], spacing_percentile_10: list[float],
                           median_shape: list[float]) -> list[float]:
    """Target spacing (mm) of 3d_fullres, in the given axis order.

    The median spacing, except for anisotropic data (see `is_anisotropic`), where the coarse axis
    takes its 10th-percentile spacing (less interpolation along it for the thinner-sliced cases),
    but never finer than the other axes.
    """
    target = [float(s) for s in median_spacing]
    if is_anisotropic(median_spacing, median_shape):
        coarse = int(np.argmax(median_spacing))
        finest_other = max(s for axis, s in enumerate(median_spacing) if axis != coarse)
        target[coarse] = float(spacing_percentile_10[coarse])
        if target[coarse] < finest_other:
            target[coarse] = finest_other + ANISOTROPIC_SPACING_MARGIN_MM
    return target


# --- normalization ------------------------------------------------------------------------------
def normalization_for(modality_name: str, median_relative_size_after_cropping: float) -> tuple[str, bool]:
    """(scheme, use_mask_for_norm) for one channel, from its name in dataset.json.

    CT -> "ct" (dataset-wide clipping and z-score; the mask is never used, air is information);
    "nonorm"/"none" -> "none"; R/G/B or "rgb" -> "rgb_to_0_1"; anything else -> "zscore"
    per image, inside the nonzero mask only if cropping removed >= 25% (kept <= 75%) of the median volume.
    """
    name = modality_name.strip().casefold()
    if name in CT_NAMES:
        return "ct", False
    if name in NO_NORMALIZATION_NAMES:
        return "none", False
    if name in RGB_NAMES:
        return "rgb_to_0_1", False
    return "zscore", bool(median_relative_size_after_cropping <= USE_MASK_MAX_RELATIVE_SIZE)


# --- network topology ---------------------------------------------------------------------------
def _axes_to_pool(spacing: list[float], size: list[float]) -> list[int]:
    """Axes pooled at the next stage: big enough (>= 2x the minimal edge) and of the finest resolution."""
    big_enough = [a for a in range(len(size)) if size[a] >= 2 * MIN_FEATURE_MAP_EDGE]
    if not big_enough:
        return []
    finest = min(spacing[a] for a in big_enough)
    axes = [a for a in big_enough if spacing[a] / finest < SAME_RESOLUTION_SPACING_RATIO]
    # A lone axis needs room for 3 minimal edges: pooling one axis of a tiny map buys little.
    if len(axes) == 1 and size[axes[0]] < 3 * MIN_FEATURE_MAP_EDGE:
        return []
    return axes


def topology_for(spacing: list[float], patch_size: list[int], dimension: int) -> Topology:
    """Kernel sizes and strides per stage for a patch at a spacing; the patch padded to fit them.

    Stage k's kernel is 3 on the axes whose spacing (after k poolings) is within 2x of the finest,
    1 elsewhere, and stays 3 once 3; the bottleneck kernel is 3 everywhere. An axis is pooled (stride 2)
    while its size stays >= 8 and its spacing is within 2x of the finest poolable one.
    """
    spacing_now = [float(s) for s in spacing]
    size_now = [float(n) for n in patch_size]
    kernel = [1] * dimension
    kernel_sizes: list[list[int]] = []
    strides: list[list[int]] = [[1] * dimension]
    while len(strides) < MAX_STAGES[dimension]:
        axes = _axes_to_pool(spacing_now, size_now)
        if not axes:
            break
        finest = min(spacing_now)
        kernel = [3 if k == 3 or s / finest < SAME_RESOLUTION_SPACING_RATIO else 1
                  for k, s in zip(kernel, spacing_now)]
        kernel_sizes.append(list(kernel))
        stride = [2 if a in axes else 1 for a in range(dimension)]
        strides.append(stride)
        spacing_now = [s * st for s, st in zip(spacing_now, stride)]
        size_now = [math.ceil(n / st) for n, st in zip(size_now, stride)]
    kernel_sizes.append([3] * dimension)
    divisor = [int(v) for v in np.prod(np.asarray(strides), axis=0)]
    padded = [int(math.ceil(n / d) * d) for n, d in zip(patch_size, divisor)]
    return Topology(kernel_sizes, strides, padded, divisor)


def features_per_stage(n_stages: int, dimension: int) -> list[int]:
    """32 features at full resolution, doubling per stage, capped at 320 (3D) / 512 (2D)."""
    return [min(BASE_FEATURES * 2**stage, MAX_FEATURES[dimension]) for stage in range(n_stages)]


def architecture_for(topology: Topology, dimension: int, input_channels: int, num_classes: int,
                     network: str = NETWORK_NAME) -> Architecture:
    """The network `network` (a NETWORK_BUILDERS key) for a topology; `num_classes` includes background."""
    n_stages = len(topology.strides)
    return Architecture(
        name=network, dimension=dimension, input_channels=input_channels, num_classes=num_classes,
        features_per_stage=features_per_stage(n_stages, dimension),
        kernel_sizes=topology.kernel_sizes, strides=topology.strides,
        convs_per_stage=RESENC_DECODER_CONVS if network == "resenc" else CONVS_PER_STAGE, deep_supervision=True,
        blocks_per_stage=encoder_blocks(network, n_stages),
    )


def encoder_blocks(network: str, n_stages: int) -> list[int] | None:
    """Residual blocks per encoder stage for resenc (RESENC_BLOCKS_PER_STAGE cut or extended to the
    stages); None for networks without residual stages."""
    if network != "resenc":
        return None
    return [RESENC_BLOCKS_PER_STAGE[min(stage, len(RESENC_BLOCKS_PER_STAGE) - 1)] for stage in range(n_stages)]


# --- patch size, memory, batch size ------------------------------------------------------------
def initial_patch_size(spacing: list[float], median_shape: list[float], dimension: int) -> list[int]:
    """Patch of 256^3 (3D) / 2048^2 (2D) voxels with equal physical extent per axis, clipped to the median shape."""
    inverse_spacing = 1.0 / np.asarray(spacing, dtype=np.float64)
    scale = (INITIAL_PATCH_VOXELS[dimension] / np.prod(inverse_spacing)) ** (1.0 / dimension)
    patch = [int(round(v)) for v in inverse_spacing * scale]
    return [max(1, min(p, int(round(m)))) for p, m in zip(patch, median_shape)]


def memory_target_gb(gpu_memory_gb: float | None, preset: str | None) -> float:
    """The GPU memory a plan is sized for: the explicit value, else the preset's, else DEFAULT_GPU_MEMORY_GB."""
    if preset is not None and preset not in RESENC_PRESETS:
        raise PlanError(f"preset {preset!r}: expected one of {', '.join(RESENC_PRESETS)}")
    if gpu_memory_gb is not None:
        return float(gpu_memory_gb)
    return RESENC_PRESETS[preset].gpu_memory_gb if preset else DEFAULT_GPU_MEMORY_GB


def memory_reference(network: str, preset: str | None = None) -> MemoryReference:
    """The calibration a network's memory is estimated with: resenc's own (its preset's, if any), the
    plain U-Net's for every other network (their feature maps are counted, the calibration is nnU-Net's)."""
    if network != "resenc":
        return PLAIN_MEMORY_REFERENCE
    return RESENC_PRESETS[preset] if preset else RESENC_MEMORY_REFERENCE


def memory_budget_elements(dimension: int, gpu_memory_gb: float,
                           reference: MemoryReference = PLAIN_MEMORY_REFERENCE) -> float:
    """Feature-map elements of a whole batch that fit in `gpu_memory_gb` (nnU-Net's calibration)."""
    reference_batch_elements = reference.elements[dimension] * REFERENCE_BATCH_SIZE[dimension]
    return reference_batch_elements * gpu_memory_gb / reference.gpu_memory_gb


def estimated_memory_gb(elements_per_sample: int, batch_size: int, dimension: int,
                        reference: MemoryReference = PLAIN_MEMORY_REFERENCE) -> float:
    """GPU memory (GB) of training with this feature-map size per sample at this batch size.

    Calibration: nnU-Net reports that 560e6 elements per sample at batch 2 (3D), or 85e6 at batch 12
    (2D), train in about 8 GB (a ResEnc: `memory_reference`); memory is taken proportional to
    elements x batch from that point. It is an estimate of the same quantity the budget is in, so a
    plan's value is <= its gpu_memory_gb.
    """
    reference_batch_elements = reference.elements[dimension] * REFERENCE_BATCH_SIZE[dimension]
    return float(elements_per_sample * batch_size / reference_batch_elements * reference.gpu_memory_gb)


def _fit(spacing: list[float], patch_size: list[int], dimension: int, input_channels: int,
         num_classes: int, network: str) -> FittedPatch:
    topology = topology_for(spacing, patch_size, dimension)
    architecture = architecture_for(topology, dimension, input_channels, num_classes, network)
    return FittedPatch(topology.patch_size, architecture,
                       network_cost(architecture, topology.patch_size).feature_map_elements)


def fit_patch_to_memory(spacing: list[float], median_shape: list[float], patch_size: list[int],
                        input_channels: int, num_classes: int, gpu_memory_gb: float,
                        network: str = NETWORK_NAME, reference: MemoryReference = PLAIN_MEMORY_REFERENCE
                        ) -> FittedPatch:
    """Shrink the patch until a batch of MIN_BATCH_SIZE of `network` fits the memory budget (`reference`'s
    calibration; the network's own feature maps, `autoseg.network.cost`).

    Each step shortens the axis with the largest patch / median-shape ratio (ties: the last such axis,
    as nnU-Net) by the divisibility step it would have after shortening, then re-derives the topology.
    Raises PlanError when the patch cannot shrink further (the GPU memory is too small for any patch).
    """
    dimension = len(spacing)
    budget = memory_budget_elements(dimension, gpu_memory_gb, reference)
    fitted = _fit(spacing, patch_size, dimension, input_channels, num_classes, network)
    stuck_axes: set[int] = set()
    while fitted.feature_map_elements * MIN_BATCH_SIZE > budget:
        patch = list(fitted.patch_size)
        ratios = [p / m for p, m in zip(patch, median_shape)]
        candidates = [a for a in range(dimension) if a not in stuck_axes and patch[a] > 1]
        if not candidates:
            raise PlanError(f"gpu_memory_gb={gpu_memory_gb}: no patch at spacing {spacing} fits "
                            f"a batch of {MIN_BATCH_SIZE}; give more GPU memory")
        axis = max(candidates, key=lambda a: (ratios[a], a))
        shorter = list(patch)
        shorter[axis] -= topology_for(spacing, patch, dimension).divisor[axis]
        shorter[axis] = max(1, shorter[axis])
        step = topology_for(spacing, shorter, dimension).divisor[axis]
        patch[axis] = max(1, patch[axis] - step)
        candidate = _fit(spacing, patch, dimension, input_channels, num_classes, network)
        if candidate.patch_size[axis] >= fitted.patch_size[axis]:
            stuck_axes.add(axis)  # padding undid the step: this axis cannot shrink any more
            continue
        fitted = candidate
    return fitted


def batch_size_for(elements_per_sample: int, patch_size: list[int], dataset_voxels: float,
                   gpu_memory_gb: float, reference: MemoryReference = PLAIN_MEMORY_REFERENCE) -> int:
    """Largest batch that fits the budget, at most what covers 5% of the dataset's voxels (the reference's
    `max_dataset_covered`: all of them for the ResEnc presets), at least 2.

    `dataset_voxels` = median resampled image voxels x number of cases. Departure from nnU-Net: the
    memory bound is rounded down, not to the nearest integer, so the estimate never exceeds the budget.
    """
    dimension = len(patch_size)
    from_memory = int(memory_budget_elements(dimension, gpu_memory_gb, reference) // elements_per_sample)
    from_coverage = int(round(reference.max_dataset_covered * dataset_voxels / float(np.prod(patch_size, dtype=np.float64))))
    return max(min(from_memory, from_coverage), MIN_BATCH_SIZE)


# --- 3d_lowres ----------------------------------------------------------------------------------
def patch_coverage(patch_size: list[int], median_shape: list[float]) -> float:
    """Share of the median image's voxels one patch covers (may exceed 1 after padding)."""
    return float(np.prod(patch_size, dtype=np.float64) / np.prod(median_shape, dtype=np.float64))


def needs_lowres(fullres_patch_size: list[int], fullres_median_shape: list[float]) -> bool:
    return patch_coverage(fullres_patch_size, fullres_median_shape) < LOWRES_MIN_PATCH_COVERAGE


def lowres_spacings(fullres_spacing: list[float]) -> Iterator[list[float]]:
    """Successively coarser candidate spacings for 3d_lowres, x1.03 per step.

    While some axis is more than 2x finer than the coarsest, only those fine axes grow (anisotropic
    data first becomes isotropic-ish); then all axes grow together.
    """
    spacing = np.asarray(fullres_spacing, dtype=np.float64)
    for _ in range(LOWRES_MAX_STEPS):
        fine = spacing.max() / spacing > LOWRES_FINE_AXIS_RATIO
        spacing = np.where(fine, spacing * LOWRES_SPACING_STEP, spacing) if fine.any() else spacing * LOWRES_SPACING_STEP
        yield [float(s) for s in spacing]


def lowres_median_shape(fullres_spacing: list[float], fullres_median_shape: list[float],
                        lowres_spacing: list[float]) -> list[float]:
    """Median image shape (voxels, unrounded) at the low-res spacing."""
    return [float(n * f / s) for n, f, s in zip(fullres_median_shape, fullres_spacing, lowres_spacing)]


def lowres_is_worthwhile(fullres_median_shape: list[float], lowres_median_shape_: list[float]) -> bool:
    """A low-res stage must shrink the median image at least 2x in voxels, else it adds nothing."""
    reduction = np.prod(fullres_median_shape, dtype=np.float64) / np.prod(lowres_median_shape_, dtype=np.float64)
    return bool(reduction >= LOWRES_MIN_VOXEL_REDUCTION)
