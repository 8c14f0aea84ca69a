"""Resampling images, label maps and class probabilities to a new voxel spacing.

All arrays are channels-first (C, z, y, x) or plain (z, y, x); shapes and spacings are given in the
array's own axis order (voxels, mm). Samples lie at voxel centres (a voxel k of an axis resized from
n_old to n_new voxels reads the input at (k + 0.5) * n_old / n_new - 0.5), values beyond the border
repeat the edge voxel, as nnU-Net does with skimage's `resize(mode="edge")`.

When one axis is much coarser than the others (thick slices), interpolating across it smears
structures between slices that have nothing to do with each other. nnU-Net then resamples each
slice in-plane and takes the nearest slice along the coarse ("separate") axis; we do the same, slice
by slice, so no full-volume float64 spline coefficients are ever held in memory.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

# nnU-Net's anisotropy rule: spacing ratio max/min above this means "treat the coarse axis apart"
# (the planner's target spacing uses the same threshold).
ANISOTROPY_THRESHOLD = 3.0
IMAGE_ORDER = 3  # cubic spline in-plane (or in 3D) for intensities
SEGMENTATION_ORDER = 1  # linear interpolation of each label's one-hot mask
PROBABILITY_ORDER = 1  # linear for softmax probabilities / logits going back to the original grid
# Along the separate axis every kind of array takes the nearest slice (order 0).


def new_shape_for(shape: Sequence[float], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape (voxels) of an image of `shape` at `spacing` after resampling to `target_spacing` (mm):
    round(shape * spacing / target_spacing) per axis, at least one voxel. The planner applies it to
    (median) shapes too, which may be fractional."""
    if not len(shape) == len(spacing) == len(target_spacing):
        raise ValueError(f"shape {list(shape)}, spacing {list(spacing)} and target {list(target_spacing)} "
                         "differ in length")
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def _coarse_axis(spacing: Sequence[float], threshold: float) -> int | None | bool:
    """The coarsest axis when `spacing` is anisotropic; None when it is but 2+ axes tie for the
    coarsest (no single axis to treat apart); False when `spacing` is not anisotropic."""
    spacing = np.asarray(spacing, dtype=float)
    if spacing.max() / spacing.min() <= threshold:
        return False
    coarsest = np.flatnonzero(spacing == spacing.max())
    return int(coarsest[0]) if coarsest.size == 1 else None


def separate_axis_for(current_spacing: Sequence[float], target_spacing: Sequence[float],
                      threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """Axis to resample apart (nearest slice) or None for plain resampling in all axes.

    nnU-Net's rule: if the current spacing is anisotropic (max/min > threshold), its coarsest axis;
    else if the target spacing is, the target's coarsest axis; when the coarsest spacing is shared
    by two or three axes there is no single axis and the answer is None.
    """
    for spacing in (current_spacing, target_spacing):
        axis = _coarse_axis(spacing, threshold)
        if axis is not False:
            return axis
    return None


def nearest_source_indices(old_size: int, new_size: int) -> np.ndarray:
    """Index of the input voxel nearest to each output voxel centre along one axis (int64, new_size)."""
    positions = (np.arange(new_size) + 0.5) * (old_size / new_size)  # = centre + 0.5, so floor rounds
    return np.clip(np.floor(positions).astype(np.int64), 0, old_size - 1)


def _spline_resize(array: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resize an n-D array to new_shape with a spline of `order` (float32 out, voxel-centre grid)."""
    new_shape = tuple(int(n) for n in new_shape)
    if array.shape == new_shape:
        return array.astype(np.float32, copy=True)
    out = np.empty(new_shape, dtype=np.float32)
    factors = [n / o for n, o in zip(new_shape, array.shape)]
    ndimage.zoom(array, factors, output=out, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    return out


def _label_resize(labels: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Resize a label map one label at a time: each label's 0/1 mask is interpolated linearly and
    every output voxel takes the label with the largest interpolated value.

    Linear weights sum to one, so wherever a label reaches 0.5 it wins: this is nnU-Net's
    "assign where >= 0.5" rule, except that voxels where no label reaches 0.5 get the most likely
    label instead of 0, so the output never holds a value the input did not have.
    """
    new_shape = tuple(int(n) for n in new_shape)
    values = np.unique(labels)
    if labels.shape == new_shape or values.size == 1:
        return np.full(new_shape, values[0], labels.dtype) if values.size == 1 else labels.copy()
    out = np.empty(new_shape, dtype=labels.dtype)
    best = np.full(new_shape, -1.0, dtype=np.float32)
    for value in values:
        weight = _spline_resize((labels == value).astype(np.float32), new_shape, SEGMENTATION_ORDER)
        wins = weight > best
        out[wins] = value
        np.maximum(best, weight, out=best)
    return out


def _resample_volume(volume: np.ndarray, new_shape: Sequence[int], separate_axis: int | None,
                     resize: Callable[[np.ndarray, Sequence[int]], np.ndarray], out: np.ndarray) -> np.ndarray:
    """Resample one spatial volume into `out` (shape new_shape) with `resize`, or, when
    separate_axis is given, resize each slice across that axis and take the nearest slice along it.
    Each needed input slice is resized once, even when several output slices copy it."""
    if separate_axis is None:
        out[...] = resize(volume, new_shape)
        return out
    slices_in = np.moveaxis(volume, separate_axis, 0)
    slices_out = np.moveaxis(out, separate_axis, 0)
    plane_shape = slices_out.shape[1:]
    resized, resized_index = None, -1
    for k, source in enumerate(nearest_source_indices(slices_in.shape[0], slices_out.shape[0])):
        if source != resized_index:
            resized, resized_index = resize(slices_in[source], plane_shape), source
        slices_out[k] = resized
    return out


def _check_shape(new_shape: Sequence[int], spatial_ndim: int, separate_axis: int | None) -> tuple[int, ...]:
    new_shape = tuple(int(n) for n in new_shape)
    if len(new_shape) != spatial_ndim:
        raise ValueError(f"new_shape {list(new_shape)} must have {spatial_ndim} axes")
    if separate_axis is not None and not 0 <= separate_axis < spatial_ndim:
        raise ValueError(f"separate_axis {separate_axis} outside 0..{spatial_ndim - 1}")
    return new_shape


def _resample_channels(data: np.ndarray, new_shape: Sequence[int], separate_axis: int | None, order: int) -> np.ndarray:
    new_shape = _check_shape(new_shape, data.ndim - 1, separate_axis)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    resize = partial(_spline_resize, order=order)
    for channel in range(data.shape[0]):
        _resample_volume(data[channel], new_shape, separate_axis, resize, out[channel])
    return out


def resample_image(data: np.ndarray, new_shape: Sequence[int], separate_axis: int | None) -> np.ndarray:
    """Intensities (C, *spatial) -> float32 (C, *new_shape): cubic spline (order 3), nearest slice
    along `separate_axis` when given. One channel and (with a separate axis) one slice at a time."""
    return _resample_channels(data, new_shape, separate_axis, IMAGE_ORDER)


def resample_probabilities(probabilities: np.ndarray, new_shape: Sequence[int],
                           separate_axis: int | None) -> np.ndarray:
    """Class probabilities or logits (K, *spatial) -> float32 (K, *new_shape): linear (order 1),
    nearest slice along `separate_axis`. Pass one class at a time ((1, ...)) to bound memory."""
    return _resample_channels(probabilities, new_shape, separate_axis, PROBABILITY_ORDER)


def resample_segmentation(segmentation: np.ndarray, new_shape: Sequence[int], separate_axis: int | None) -> np.ndarray:
    """Label map (*spatial), any integer dtype incl. the -1 outside marker -> same dtype (*new_shape).

    One-hot linear interpolation per label (see `_label_resize`), nearest slice along
    `separate_axis`. Output values are always a subset of the input values.
    """
    new_shape = _check_shape(new_shape, segmentation.ndim, separate_axis)
    out = np.empty(new_shape, dtype=segmentation.dtype)
    return _resample_volume(segmentation, new_shape, separate_axis, _label_resize, out)
