"""Training and validation augmentation, in nnU-Net's order and with its probabilities (nnunet.md §5.4).

The pipelines are batchgenerators `Compose` objects called as `pipeline(data=..., seg=..., case_ids=...)` on a
batch from `PatchSampler.sample_batch`: data float32 (B, C, *read_patch), seg int16 (B, 1, *read_patch) with -1
outside the nonzero region. They return data float32 (B, C, *patch) and seg int16 (B, 1, *patch) with values
0..K only (the -1 marker becomes background). Other keys (case_ids) pass through.

Randomness: batchgenerators draws from the global `np.random` and `random` states; `autoseg.training.loader`
seeds and isolates them per worker.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import SpatialTransform
from batchgenerators.transforms.utility_transforms import RemoveLabelTransform

from autoseg.cropping import OUTSIDE_NONZERO

# --- Rotation / dummy-2D / mirroring setup (nnU-Net's configure_rotation_dummyDA_mirroring_and_inital_patch_size)
# A 3D patch whose largest axis exceeds 3x its first (coarsest) axis is augmented slice-wise ("dummy 2D"):
# spatial transforms act in-plane only, so nothing is interpolated across thick slices.
DUMMY_2D_ANISOTROPY_THRESHOLD = 3.0
ROTATION_3D_DEG = 30.0
ROTATION_IN_PLANE_FULL_DEG = 180.0
# 2D patches that are far from square rotate little, so the long axis is not rotated out of the patch.
ROTATION_2D_ELONGATED_DEG = 15.0
ELONGATED_2D_PATCH_RATIO = 1.5

# --- Transform parameters (nnU-Net v2 get_training_transforms); p_* are per-sample probabilities.
SCALE_RANGE = (0.7, 1.4)
P_ROTATION = 0.2
P_SCALE = 0.2
NOISE_VARIANCE = (0.0, 0.1)
P_NOISE = 0.1
BLUR_SIGMA = (0.5, 1.0)
P_BLUR, P_BLUR_PER_CHANNEL = 0.2, 0.5
BRIGHTNESS_MULTIPLIER = (0.75, 1.25)
P_BRIGHTNESS = 0.15
CONTRAST_RANGE = (0.75, 1.25)
P_CONTRAST = 0.15
LOW_RESOLUTION_ZOOM = (0.5, 1.0)
P_LOW_RESOLUTION, P_LOW_RESOLUTION_PER_CHANNEL = 0.25, 0.5
GAMMA_RANGE = (0.7, 1.5)
P_GAMMA_INVERTED = 0.1
P_GAMMA = 0.3
P_MIRROR_PER_AXIS = 0.5
# Linear interpolation of the image (nnU-Net v2; v1 used cubic) and of the one-hot seg, then argmax.
IMAGE_INTERPOLATION_ORDER = 1
SEG_INTERPOLATION_ORDER = 1


class SpatialAugmentationSetup(NamedTuple):
    """Rotation ranges per rotation axis in degrees ((low, high) about axis 0, 1, 2 for 3D; one range for 2D),
    whether to augment 3D patches slice-wise, and the spatial axes to mirror."""

    rotation_range_deg: tuple[tuple[float, float], ...]
    do_dummy_2d: bool
    mirror_axes: tuple[int, ...]

    @property
    def rotation_range_rad(self) -> tuple[tuple[float, float], ...]:
        return tuple((math.radians(lo), math.radians(hi)) for lo, hi in self.rotation_range_deg)


def rotation_and_dummy_2d_for(patch_size: Sequence[int], dimension: int) -> SpatialAugmentationSetup:
    """nnU-Net's choice of rotation, dummy-2D and mirroring for a patch (z, y, x) or (y, x) in voxels."""
    if dimension != len(patch_size):
        raise ValueError(f"patch_size {tuple(patch_size)} does not have dimension {dimension}")
    if dimension == 2:
        elongated = max(patch_size) / min(patch_size) > ELONGATED_2D_PATCH_RATIO
        angle = ROTATION_2D_ELONGATED_DEG if elongated else ROTATION_IN_PLANE_FULL_DEG
        return SpatialAugmentationSetup(((-angle, angle),), False, (0, 1))
    do_dummy_2d = max(patch_size) / patch_size[0] > DUMMY_2D_ANISOTROPY_THRESHOLD
    if do_dummy_2d:
        in_plane = (-ROTATION_IN_PLANE_FULL_DEG, ROTATION_IN_PLANE_FULL_DEG)
        return SpatialAugmentationSetup((in_plane, (0.0, 0.0), (0.0, 0.0)), True, (0, 1, 2))
    full = (-ROTATION_3D_DEG, ROTATION_3D_DEG)
    return SpatialAugmentationSetup((full, full, full), False, (0, 1, 2))


class FoldFirstAxisIntoChannels(AbstractTransform):
    """(B, C, Z, Y, X) -> (B, C*first_axis_size, Y, X) for data and seg, so 2D spatial transforms act on every
    slice alike. Axis 0 is first centre-cropped to first_axis_size (it is not enlarged for rotation, but a
    caller may have read it larger). The shapes are kept under a private key for the unfolding."""

    def __init__(self, first_axis_size: int):
        self.first_axis_size = int(first_axis_size)

    def __call__(self, **batch):
        for key in ("data", "seg"):
            start = (batch[key].shape[2] - self.first_axis_size) // 2
            if start < 0:
                raise ValueError(f"{key} has {batch[key].shape[2]} slices, fewer than the patch's "
                                 f"{self.first_axis_size}")
            batch[key] = batch[key][:, :, start:start + self.first_axis_size]
        batch["_unfolded_shapes"] = {key: batch[key].shape for key in ("data", "seg")}
        for key in ("data", "seg"):
            b, c, z, *plane = batch[key].shape
            batch[key] = np.ascontiguousarray(batch[key]).reshape(b, c * z, *plane)
        return batch


class UnfoldFirstAxisFromChannels(AbstractTransform):
    """Inverse of `FoldFirstAxisIntoChannels` (the in-plane size may have changed: cropped to the patch)."""

    def __call__(self, **batch):
        shapes = batch.pop("_unfolded_shapes")
        for key in ("data", "seg"):
            b, c, z = shapes[key][:3]
            batch[key] = batch[key].reshape(b, c, z, *batch[key].shape[2:])
        return batch


class MirrorAxesTransform(AbstractTransform):
    """Flips data and seg of each sample along each of `axes` (spatial axis indices) with p_per_axis."""

    def __init__(self, axes: Sequence[int], p_per_axis: float = P_MIRROR_PER_AXIS):
        self.axes = tuple(axes)
        self.p_per_axis = p_per_axis

    def __call__(self, **batch):
        for b in range(batch["data"].shape[0]):
            for axis in self.axes:
                if np.random.uniform() < self.p_per_axis:
                    # +1: the sample array is (C, *spatial)
                    batch["data"][b] = np.flip(batch["data"][b], axis + 1)
                    batch["seg"][b] = np.flip(batch["seg"][b], axis + 1)
        return batch


class MaskOutsideNonzeroTransform(AbstractTransform):
    """Sets data to 0 where seg < 0 (outside the nonzero region), for channels normalized with that mask."""

    def __init__(self, channels: Sequence[int] | None = None):
        self.channels = None if channels is None else list(channels)

    def __call__(self, **batch):
        outside = batch["seg"][:, 0] < 0
        channels = range(batch["data"].shape[1]) if self.channels is None else self.channels
        for c in channels:
            batch["data"][:, c][outside] = 0
        return batch


class FinalizeBatchTransform(AbstractTransform):
    """Contiguous float32 data and int16 seg (the spatial transform returns whole label values as float32)."""

    def __call__(self, **batch):
        batch["data"] = np.ascontiguousarray(batch["data"], dtype=np.float32)
        batch["seg"] = np.ascontiguousarray(batch["seg"], dtype=np.int16)
        return batch


def spatial_transforms(patch_size: Sequence[int], rotation_range_deg, scale_range, do_dummy_2d: bool) -> list:
    """Rotation + scaling (no elastic deformation), then a centre crop to patch_size."""
    setup_rad = SpatialAugmentationSetup(tuple(rotation_range_deg), do_dummy_2d, ()).rotation_range_rad
    spatial_patch = tuple(patch_size[1:]) if do_dummy_2d else tuple(patch_size)
    angles = setup_rad[:1] if do_dummy_2d else setup_rad
    angle_kwargs = dict(zip(("angle_x", "angle_y", "angle_z"), angles))
    spatial = SpatialTransform(
        spatial_patch, do_elastic_deform=False, do_rotation=True, **angle_kwargs, p_rot_per_axis=1,
        do_scale=True, scale=tuple(scale_range), independent_scale_for_each_axis=False,
        border_mode_data="constant", border_cval_data=0, order_data=IMAGE_INTERPOLATION_ORDER,
        border_mode_seg="constant", border_cval_seg=OUTSIDE_NONZERO, order_seg=SEG_INTERPOLATION_ORDER,
        random_crop=False, p_rot_per_sample=P_ROTATION, p_scale_per_sample=P_SCALE,
    )
    if do_dummy_2d:
        return [FoldFirstAxisIntoChannels(patch_size[0]), spatial, UnfoldFirstAxisFromChannels()]
    return [spatial]


def intensity_transforms(do_dummy_2d: bool) -> list:
    """Noise, blur, brightness, contrast, simulated low resolution and the two gamma transforms."""
    return [
        GaussianNoiseTransform(NOISE_VARIANCE, p_per_sample=P_NOISE, per_channel=False),
        GaussianBlurTransform(BLUR_SIGMA, different_sigma_per_channel=True, different_sigma_per_axis=True,
                              p_isotropic=0, p_per_channel=P_BLUR_PER_CHANNEL, p_per_sample=P_BLUR),
        BrightnessMultiplicativeTransform(BRIGHTNESS_MULTIPLIER, per_channel=True, p_per_sample=P_BRIGHTNESS),
        ContrastAugmentationTransform(CONTRAST_RANGE, preserve_range=True, per_channel=True,
                                      p_per_sample=P_CONTRAST),
        SimulateLowResolutionTransform(zoom_range=LOW_RESOLUTION_ZOOM, per_channel=True,
                                       p_per_channel=P_LOW_RESOLUTION_PER_CHANNEL, order_downsample=0,
                                       order_upsample=IMAGE_INTERPOLATION_ORDER, p_per_sample=P_LOW_RESOLUTION,
                                       # slice-wise augmentation keeps the thick axis at full resolution
                                       ignore_axes=(0,) if do_dummy_2d else None),
        GammaTransform(GAMMA_RANGE, invert_image=True, per_channel=True, retain_stats=True,
                       p_per_sample=P_GAMMA_INVERTED),
        GammaTransform(GAMMA_RANGE, invert_image=False, per_channel=True, retain_stats=True, p_per_sample=P_GAMMA),
    ]


def label_cleanup_transforms(use_mask_for_norm_any: bool, masked_channels: Sequence[int] | None,
                             extra_transforms: Sequence[AbstractTransform]) -> list:
    """Masking (optional), -1 -> 0 in seg, the caller's extra transforms (the cascade hook), dtypes."""
    cleanup = [MaskOutsideNonzeroTransform(masked_channels)] if use_mask_for_norm_any else []
    cleanup.append(RemoveLabelTransform(OUTSIDE_NONZERO, 0))
    return cleanup + list(extra_transforms) + [FinalizeBatchTransform()]


class OnImageChannels(AbstractTransform):
    """Run a transform on the first `image_channels` data channels only: the cascade's one-hot
    channels must not get noise, blur or gamma."""

    def __init__(self, transform: AbstractTransform, image_channels: int):
        self.transform, self.image_channels = transform, image_channels

    def __call__(self, **batch):
        data = batch["data"]
        image, extra = data[:, : self.image_channels], data[:, self.image_channels:]
        batch = self.transform(**{**batch, "data": np.ascontiguousarray(image)})
        batch["data"] = np.concatenate([batch["data"], extra], axis=1)
        return batch


class BinarizeChannels(AbstractTransform):
    """Threshold interpolated one-hot channels (from `first_channel` on) back to 0/1."""

    def __init__(self, first_channel: int):
        self.first_channel = first_channel

    def __call__(self, **batch):
        batch["data"][:, self.first_channel:] = batch["data"][:, self.first_channel:] > 0.5
        return batch


class PerturbOneHotChannels(AbstractTransform):
    """Make the cascade learn to correct its input: per sample and one-hot channel, with modest
    probabilities, a random binary dilation/erosion/opening/closing and the removal of a random
    small connected component (nnU-Net: operator p 0.4, component p 0.2, each per label p 0.5)."""

    def __init__(self, first_channel: int, p_operator: float = 0.4, p_component: float = 0.2,
                 p_per_channel: float = 0.5, max_radius: int = 3, max_component_fraction: float = 0.15):
        self.first_channel, self.p_operator, self.p_component = first_channel, p_operator, p_component
        self.p_per_channel, self.max_radius, self.max_fraction = p_per_channel, max_radius, max_component_fraction

    def __call__(self, **batch):
        from scipy import ndimage

        data = batch["data"]
        for sample in range(data.shape[0]):
            for channel in range(self.first_channel, data.shape[1]):
                mask = data[sample, channel] > 0.5
                if np.random.uniform() < self.p_operator and np.random.uniform() < self.p_per_channel:
                    radius = np.random.randint(1, self.max_radius + 1)
                    structure = ndimage.iterate_structure(ndimage.generate_binary_structure(mask.ndim, 1), radius)
                    operation = [ndimage.binary_dilation, ndimage.binary_erosion, ndimage.binary_opening,
                                 ndimage.binary_closing][np.random.randint(4)]
                    mask = operation(mask, structure)
                if np.random.uniform() < self.p_component and np.random.uniform() < self.p_per_channel:
                    mask = _remove_random_small_component(mask, self.max_fraction)
                data[sample, channel] = mask
        return batch


def _remove_random_small_component(mask: np.ndarray, max_fraction: float) -> np.ndarray:
    import cc3d

    if not mask.any():
        return mask
    components = cc3d.connected_components(mask.astype(np.uint8), connectivity=26 if mask.ndim == 3 else 8)
    sizes = np.bincount(components.ravel())[1:]
    small = np.flatnonzero(sizes <= max_fraction * mask.size) + 1
    if small.size:
        mask = mask & (components != np.random.choice(small))
    return mask


def cascade_transforms(image_channels: int, training: bool) -> list:
    """The cascade's steps after augmentation: binarize the one-hot channels, perturb them (training)."""
    steps: list = [BinarizeChannels(image_channels)]
    if training:
        steps.append(PerturbOneHotChannels(image_channels))
    return steps


def training_transforms(
    patch_size: Sequence[int],
    *,
    dimension: int,
    rotation_range_deg: Sequence[tuple[float, float]],
    scale_range: tuple[float, float] = SCALE_RANGE,
    do_dummy_2d: bool,
    mirror_axes: Sequence[int],
    use_mask_for_norm_any: bool,
    masked_channels: Sequence[int] | None = None,
    extra_transforms: Sequence[AbstractTransform] = (),
    image_channels: int | None = None,
) -> Compose:
    """nnU-Net's training augmentation for batches of enlarged patches, cropping to patch_size (voxels).

    rotation_range_deg, do_dummy_2d, mirror_axes: from `rotation_and_dummy_2d_for(patch_size, dimension)`.
    use_mask_for_norm_any: any channel normalized inside the nonzero mask; then the data outside it is set
      to 0 (in `masked_channels`, all channels when None), as the spatial transform may have moved it.
    extra_transforms: appended after the -1 -> 0 step; the place for the cascade's transforms later
      (previous-stage segmentation as one-hot input with morphological perturbations).
    """
    if dimension != len(patch_size):
        raise ValueError(f"patch_size {tuple(patch_size)} does not have dimension {dimension}")
    if do_dummy_2d and dimension != 3:
        raise ValueError("dummy 2D augmentation needs a 3D patch")
    intensity = intensity_transforms(do_dummy_2d)
    if image_channels is not None:  # extra (cascade one-hot) channels keep their values
        intensity = [OnImageChannels(t, image_channels) for t in intensity]
    return Compose(
        spatial_transforms(patch_size, rotation_range_deg, scale_range, do_dummy_2d)
        + intensity
        + [MirrorAxesTransform(mirror_axes)]
        + label_cleanup_transforms(use_mask_for_norm_any, masked_channels, extra_transforms)
    )


def validation_transforms(extra_transforms: Sequence[AbstractTransform] = ()) -> Compose:
    """Only -1 -> 0 in seg (and the dtype cleanup); validation patches are read at the final size."""
    return Compose(label_cleanup_transforms(False, None, extra_transforms))
