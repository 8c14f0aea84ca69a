"""Sliding-window prediction: tile an image with overlapping patches, run the network(s) on every
tile (optionally with mirror test-time augmentation), and stitch the results with a Gaussian weight.

This is nnU-Net v2's `predict_sliding_window_return_logits` (reference section 6) as pure functions:
the caller hands in an already preprocessed image (C, *spatial) float32 in the plan's transposed
axis order and gets back class probabilities (or logits) (num_classes, *spatial) float32 in the
same space. Reading, preprocessing, restoring the original geometry and choosing folds live elsewhere.

What is averaged: by default the softmax of every pass (each mirror flip of each network) is
averaged, so the result is a probability map that sums to one per voxel; `softmax=False` averages
the raw logits instead (nnU-Net's choice; also what the oracle tests check the stitching with).

Memory: the only full-size buffer is the (num_classes, *spatial) accumulator. The summed window
weights are not stored per voxel: windows lie on a grid (the product of per-axis start lists) and
the Gaussian is separable, so the weight sum is the outer product of one 1-D sum per axis, known
before the first window runs; each window is added already divided by it (`_normalized_axis_weights`).

Dimension-generic: `len(patch_size)` (2 or 3) is the number of spatial axes. The `2d`
configuration on a 3D volume goes through `predict_slices_2d`, which reuses the same core by
treating each z-slice as a window of depth 1.

Axes: "spatial axis i" means axis i of the spatial shape, i.e. axis i + 1 of the (C, *spatial)
image and axis i + 2 of a (B, C, *patch) batch.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from autoseg.errors import AutosegError

# nnU-Net's defaults (reference section 6): windows overlap by half a patch, the Gaussian
# importance map has sigma = patch / 8 per axis, TTA mirrors every subset of the spatial axes.
DEFAULT_STEP_FRACTION = 0.5
DEFAULT_SIGMA_FRACTION = 1.0 / 8.0
# Floor of each axis' Gaussian profile (its maximum is 1): a tiny sigma would underflow to 0 at the
# borders, and every voxel of a window must keep some weight. nnU-Net replaces zeros by the smallest
# non-zero weight; a floor per axis does the same while keeping the map separable. Three axes at the
# floor give 1e-30, still a normal float32. With sigma = patch / 8 the border weight is exp(-8) per
# axis, so the floor never applies.
MIN_AXIS_WEIGHT = 1e-10
# Voxels per slab when converting a float16 / accelerator accumulator to the float32 CPU result.
_SLAB_VOXELS = 1 << 22

Network = Callable[[torch.Tensor], torch.Tensor]
ProgressCallback = Callable[[int, int], None]


def window_starts(image_size: Sequence[int], patch_size: Sequence[int],
                  step_fraction: float = DEFAULT_STEP_FRACTION) -> list[list[int]]:
    """Start index (voxels) of every window along each axis.

    Per axis: n = ceil((size - patch) / (patch * step_fraction)) + 1 windows, evenly spaced from
    0 to size - patch (rounded to the nearest voxel), so the first window touches the start and the last
    one is flush with the far border. size == patch gives [0]. Every axis must have size >= patch
    (pad the image first).
    """
    if len(image_size) != len(patch_size):
        raise ValueError(f"image_size {list(image_size)} and patch_size {list(patch_size)} "
                         "have different numbers of axes")
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    starts_per_axis = []
    for axis, (size, patch) in enumerate(zip(image_size, patch_size)):
        if patch < 1 or size < patch:
            raise ValueError(f"axis {axis}: image size {size} must be >= patch size {patch} >= 1")
        free = size - patch
        num_windows = math.ceil(free / (patch * step_fraction)) + 1
        if num_windows == 1:
            starts_per_axis.append([0])
            continue
        spacing = free / (num_windows - 1)
        starts_per_axis.append([int(round(i * spacing)) for i in range(num_windows)])
    return starts_per_axis


@functools.lru_cache(maxsize=32)
def _cached_profile(patch: int, sigma_fraction: float) -> np.ndarray:
    # Centre at (patch - 1) / 2 so the profile is symmetric also for even patch sizes.
    offsets = np.arange(patch, dtype=np.float64) - (patch - 1) / 2.0
    profile = np.exp(-0.5 * (offsets / (patch * sigma_fraction)) ** 2)
    profile = np.maximum(profile / profile.max(), MIN_AXIS_WEIGHT).astype(np.float32)
    profile.setflags(write=False)  # shared through the cache
    return profile


def gaussian_profile(patch: int, sigma_fraction: float = DEFAULT_SIGMA_FRACTION) -> np.ndarray:
    """The 1-D Gaussian of one axis: float32 (patch,), maximum 1, at least MIN_AXIS_WEIGHT."""
    return _cached_profile(int(patch), float(sigma_fraction))


@functools.lru_cache(maxsize=8)
def _cached_gaussian(patch_size: tuple[int, ...], sigma_fraction: float) -> np.ndarray:
    weights = np.ones((), dtype=np.float32)
    for patch in patch_size:
        weights = np.multiply.outer(weights, gaussian_profile(patch, sigma_fraction))
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    weights.setflags(write=False)  # shared through the cache
    return weights


def gaussian_importance_map(patch_size: Sequence[int],
                            sigma_fraction: float = DEFAULT_SIGMA_FRACTION) -> np.ndarray:
    """Weight of each voxel of a window when stitching: float32 array of shape `patch_size`.

    A separable Gaussian centred on the patch with sigma = patch * sigma_fraction per axis (the
    outer product of `gaussian_profile`s), maximum 1 (nnU-Net scales to 10; only ratios matter
    because the stitched output is divided by the summed weights), strictly positive everywhere.
    Cached per patch size; the returned array is read-only.
    """
    return _cached_gaussian(tuple(int(p) for p in patch_size), float(sigma_fraction))


def mirror_axes_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of `spatial_axes`, the empty one (no flip) first: 8 for 3 axes, 4 for 2."""
    axes = tuple(spatial_axes)
    return [subset for count in range(len(axes) + 1)
            for subset in itertools.combinations(axes, count)]


def predict_sliding_window(
        networks: Sequence[Network],
        image: torch.Tensor | np.ndarray,
        patch_size: Sequence[int],
        *,
        num_classes: int,
        step_fraction: float = DEFAULT_STEP_FRACTION,
        mirror_axes: Sequence[int] | None = None,
        use_gaussian: bool = True,
        softmax: bool = True,
        batch_windows: int = 1,
        device: str | torch.device = "cpu",
        accumulate_on: str | torch.device | None = None,
        accumulate_dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Class probabilities (or logits) of a whole image from overlapping windows.

    networks: one or more callables (B, C, *patch_size) -> (B, num_classes, *patch_size) logits,
        e.g. the nets of several folds in eval mode with deep supervision off; their outputs are
        averaged with equal weight.
    image: (C, *spatial) float, preprocessed; spatial axes smaller than the patch are zero-padded
        (centred) and the padding is cut from the output.
    mirror_axes: spatial axes (0-based, see module docstring) to mirror for test-time augmentation;
        every subset of them is run and the outputs averaged (8 passes for 3 axes, 4 for 2).
        None = all spatial axes, () = no TTA.
    use_gaussian: weight each window by `gaussian_importance_map` (else a flat weight of 1).
    softmax: average the softmax (over the class axis) of every pass: the result sums to 1 per
        voxel. False: average the raw logits.
    batch_windows: windows run through the network at once.
    device: where the networks run. accumulate_on: where the stitched output lives while windows
        are added (default CPU, so a large volume never has to fit on the accelerator; pass the
        compute device when it fits).
    accumulate_dtype: float32, or float16 to halve the accumulator memory (nnU-Net does so on GPU;
        safe with softmax, whose values are at most 1). Bytes per voxel: num_classes * itemsize.
    autocast_dtype: run the networks under torch.autocast with this dtype (e.g. torch.float16 on
        CUDA, torch.bfloat16 on CPU); None = full precision.
    channels_last: hand the networks channels-last batches (convert the networks likewise with
        `.to(memory_format=torch.channels_last_3d)`); only memory layout changes, not values.
    progress: called as progress(windows_done, windows_total) after every batch.

    Returns (num_classes, *spatial) float32 on the CPU: the weighted mean over windows, TTA passes
    and networks. With a float32 CPU accumulator the result is that buffer itself (no copy).
    """
    patch_size = [int(p) for p in patch_size]
    image = _as_tensor(image, dimension=len(patch_size))
    starts = window_starts(_padded_shape(image.shape[1:], patch_size), patch_size, step_fraction)
    profiles = _axis_profiles(patch_size, use_gaussian)
    mirror_axes = tuple(range(len(patch_size))) if mirror_axes is None else tuple(mirror_axes)
    options = dict(num_classes=num_classes, mirror_axes=mirror_axes, softmax=softmax,
                   batch_windows=batch_windows, device=device, accumulate_on=accumulate_on,
                   accumulate_dtype=accumulate_dtype, autocast_dtype=autocast_dtype,
                   channels_last=channels_last, progress=progress)
    return _stitch_windows(networks, image, patch_size, starts, profiles, **options)


def predict_slices_2d(
        networks: Sequence[Network],
        image: torch.Tensor | np.ndarray,
        patch_size: Sequence[int],
        *,
        num_classes: int,
        step_fraction: float = DEFAULT_STEP_FRACTION,
        mirror_axes: Sequence[int] | None = None,
        use_gaussian: bool = True,
        softmax: bool = True,
        batch_windows: int = 1,
        device: str | torch.device = "cpu",
        accumulate_on: str | torch.device | None = None,
        accumulate_dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Apply 2D networks slice by slice to a volume: image (C, z, y, x) -> (K, z, y, x).

    Each z-slice is tiled in-plane with `patch_size` (y, x) exactly as `predict_sliding_window`
    would; windows of different slices share batches (`batch_windows`), which matters when a slice
    holds only one window. `mirror_axes` are the 2D network's spatial axes (0 = y, 1 = x);
    None = both (4 passes). Other options and the result as in `predict_sliding_window`.
    """
    patch_size = [int(p) for p in patch_size]
    if len(patch_size) != 2:
        raise ValueError(f"predict_slices_2d needs a 2D patch (y, x), got {patch_size}")
    image = _as_tensor(image, dimension=3)
    # A slice is a 3D window of depth 1: one window per z index, in-plane windows as in 2D.
    in_plane = window_starts(_padded_shape(image.shape[2:], patch_size), patch_size, step_fraction)
    starts = [list(range(image.shape[1]))] + in_plane
    profiles = [np.ones(1, np.float32)] + _axis_profiles(patch_size, use_gaussian)
    mirror_axes = (0, 1) if mirror_axes is None else tuple(mirror_axes)
    options = dict(num_classes=num_classes, mirror_axes=tuple(axis + 1 for axis in mirror_axes),
                   softmax=softmax, batch_windows=batch_windows, device=device,
                   accumulate_on=accumulate_on, accumulate_dtype=accumulate_dtype,
                   autocast_dtype=autocast_dtype, channels_last=channels_last, progress=progress)
    slice_networks = [_on_depth_one_windows(network) for network in networks]
    return _stitch_windows(slice_networks, image, [1] + patch_size, starts, profiles, **options)


def _axis_profiles(patch_size: list[int], use_gaussian: bool) -> list[np.ndarray]:
    """Per-axis window weights: Gaussian profiles, or 1 everywhere (plain averaging)."""
    if not use_gaussian:
        return [np.ones(patch, np.float32) for patch in patch_size]
    return [gaussian_profile(patch) for patch in patch_size]


def _normalized_axis_weights(profiles: list[np.ndarray], starts: list[list[int]],
                             spatial: Sequence[int], device: torch.device) -> list[dict[int, torch.Tensor]]:
    """Per axis and window start, the window's 1-D weights divided by the summed weight of all
    windows along that axis (float32 tensors of the patch length, on `device`).

    Windows are the product of the per-axis starts and their weight is the product of the per-axis
    profiles, so the summed weight at a voxel is the product of per-axis sums: a window's weight
    divided by it is the outer product of these normalized 1-D weights. They sum to 1 over the
    windows covering a voxel, so stitching needs no weight buffer and no final division, and no
    weight underflows in float16 (a corner voxel covered by one window gets weight 1, not exp(-24)).
    """
    normalized = []
    for profile, axis_starts, size in zip(profiles, starts, spatial):
        total = np.zeros(int(size), np.float64)
        for start in axis_starts:
            total[start:start + len(profile)] += profile
        normalized.append({start: torch.tensor(profile / total[start:start + len(profile)],
                                               dtype=torch.float32, device=device)
                           for start in axis_starts})
    return normalized


def _window_weights(normalized: list[dict[int, torch.Tensor]], corners: list[tuple[int, ...]]) -> torch.Tensor:
    """(B, 1, *patch) normalized weights of the windows starting at `corners`."""
    weights = []
    for corner in corners:
        axes = [normalized[axis][start] for axis, start in enumerate(corner)]
        weight = functools.reduce(lambda outer, inner: outer[..., None] * inner, axes)
        weights.append(weight)
    return torch.stack(weights)[:, None]


def _on_depth_one_windows(network: Network) -> Network:
    """Wrap a 2D network so it takes (B, C, 1, y, x) windows and returns (B, K, 1, y, x)."""
    def run(batch: torch.Tensor) -> torch.Tensor:
        return network(batch.squeeze(2)).unsqueeze(2)
    return run


def _as_tensor(image: torch.Tensor | np.ndarray, dimension: int) -> torch.Tensor:
    """The image as a float32 tensor, checked to be (C, *spatial) with `dimension` spatial axes."""
    if isinstance(image, np.ndarray):
        # np.load(mmap_mode="r") arrays are read-only, which torch.from_numpy does not accept.
        image = torch.from_numpy(image if image.flags.writeable else np.array(image))
    if image.ndim != dimension + 1:
        raise ValueError(f"image must be (C, *spatial) with {dimension} spatial axes, "
                         f"got shape {tuple(image.shape)}")
    return image.float()


def _padded_shape(spatial_shape: Sequence[int], patch_size: Sequence[int]) -> list[int]:
    return [max(int(size), patch) for size, patch in zip(spatial_shape, patch_size)]


def _pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple]:
    """Zero-pad spatial axes smaller than the patch, half before and half after (as nnU-Net).

    Returns the padded image and the slices (over spatial axes) that cut the original back out.
    """
    spatial = image.shape[1:]
    before = [max(patch - size, 0) // 2 for size, patch in zip(spatial, patch_size)]
    after = [max(patch - size, 0) - b for size, patch, b in zip(spatial, patch_size, before)]
    original = tuple(slice(b, b + size) for b, size in zip(before, spatial))
    if not any(before) and not any(after):
        return image, original
    # torch.nn.functional.pad lists (before, after) pairs from the last axis backwards.
    pairs = [value for b, a in zip(reversed(before), reversed(after)) for value in (b, a)]
    return torch.nn.functional.pad(image, pairs, mode="constant", value=0.0), original


def _stitch_windows(networks: Sequence[Network], image: torch.Tensor, patch_size: list[int],
                    starts: list[list[int]], profiles: list[np.ndarray], *, num_classes: int,
                    mirror_axes: tuple[int, ...], softmax: bool, batch_windows: int,
                    device: str | torch.device, accumulate_on: str | torch.device | None,
                    accumulate_dtype: torch.dtype, autocast_dtype: torch.dtype | None,
                    channels_last: bool, progress: ProgressCallback | None) -> torch.Tensor:
    """The shared core: run `networks` on every window given by `starts` (per axis, on the padded
    image) and return the weighted mean (num_classes, *spatial) float32 on the CPU, padding removed."""
    if not networks:
        raise ValueError("predict needs at least one network")
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    if any(not 0 <= axis < len(patch_size) for axis in mirror_axes):
        raise ValueError(f"mirror_axes {list(mirror_axes)} must be spatial axes "
                         f"0..{len(patch_size) - 1}")
    device = torch.device(device)
    accumulate_on = torch.device("cpu" if accumulate_on is None else accumulate_on)
    padded, original = _pad_to_patch(image, patch_size)
    spatial = padded.shape[1:]
    # Not created under inference_mode, so callers may modify the result in place afterwards.
    accumulator = torch.zeros((num_classes, *spatial), dtype=accumulate_dtype, device=accumulate_on)
    normalized = _normalized_axis_weights(profiles, starts, spatial, device)
    corners = list(itertools.product(*starts))
    flips = mirror_axes_combinations(mirror_axes)
    for first in range(0, len(corners), batch_windows):
        batch_corners = corners[first:first + batch_windows]
        windows = [tuple(slice(s, s + p) for s, p in zip(corner, patch_size)) for corner in batch_corners]
        batch = torch.stack([padded[(slice(None), *window)] for window in windows]).to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=_channels_last_format(batch.ndim))
        mean = _mean_over_passes(networks, batch, flips, num_classes, autocast_dtype, softmax)
        weighted = (mean * _window_weights(normalized, batch_corners)).to(device=accumulate_on,
                                                                          dtype=accumulate_dtype)
        for index, window in enumerate(windows):
            accumulator[(slice(None), *window)] += weighted[index]
        if progress is not None:
            progress(first + len(batch_corners), len(corners))
    result = _float32_on_cpu(accumulator[(slice(None), *original)])
    del accumulator
    if not torch.isfinite(result.sum()):  # a sum propagates inf/NaN without a full-size mask or copy
        raise AutosegError("sliding-window output contains inf/NaN (a diverged network, or float16 "
                           "overflow of raw logits); retry with accumulate_dtype=torch.float32")
    return result


def _channels_last_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def _float32_on_cpu(result: torch.Tensor) -> torch.Tensor:
    """The result as a contiguous float32 CPU tensor; a float32 CPU accumulator is returned as
    is (a copy only when padding was cut off), anything else is converted slab by slab so no
    second full-size copy exists on the accelerator."""
    if result.dtype == torch.float32 and result.device.type == "cpu":
        return result.contiguous()
    out = torch.empty(result.shape, dtype=torch.float32)
    slab = max(1, _SLAB_VOXELS // max(1, int(np.prod(result.shape[2:]))))
    for start in range(0, result.shape[1], slab):
        out[:, start:start + slab] = result[:, start:start + slab].to(device="cpu", dtype=torch.float32)
    return out


def _mean_over_passes(networks: Sequence[Network], batch: torch.Tensor,
                      flips: list[tuple[int, ...]], num_classes: int,
                      autocast_dtype: torch.dtype | None, softmax: bool) -> torch.Tensor:
    """Mean over networks and mirror passes of the softmax (or logits) of one batch of windows.

    batch (B, C, *patch) on the compute device -> (B, num_classes, *patch) float32. A mirror pass
    flips the input, runs the network and flips its output back.
    """
    autocast = (torch.autocast(batch.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    total = None
    with torch.inference_mode():
        for network in networks:
            for flip in flips:
                dims = [axis + 2 for axis in flip]
                with autocast:
                    logits = network(batch.flip(dims) if dims else batch)
                _check_logits(logits, batch, num_classes)
                output = logits.float()
                output = torch.softmax(output, dim=1) if softmax else output
                output = output.flip(dims) if dims else output
                if total is None:
                    # Raw logits may be (a view of) the network's input: copy before adding in place.
                    total = output if softmax or dims else output.clone()
                else:
                    total += output
        return total.div_(len(networks) * len(flips))


def _check_logits(logits: object, batch: torch.Tensor, num_classes: int) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"a network returned {type(logits).__name__}, not a tensor; "
                         "turn deep supervision off for inference")
    expected = (batch.shape[0], num_classes, *batch.shape[2:])
    if tuple(logits.shape) != expected:
        raise ValueError(f"a network returned logits of shape {tuple(logits.shape)} for windows "
                         f"{tuple(batch.shape)}; expected {expected} (num_classes={num_classes})")
