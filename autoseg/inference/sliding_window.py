"""The sliding window's geometry: where the overlapping windows of an image lie, how much each voxel
of a window weighs when they are stitched, and which mirror passes test-time augmentation runs.

nnU-Net v2's rules (reference section 6). Numpy only, so that planning (time budgets) and the
predictor's settings can use the defaults below without importing torch; running the networks on
the windows and stitching their outputs is `autoseg.inference.stitching`.

Dimension-generic: `len(patch_size)` is the number of spatial axes. "Spatial axis i" means axis i
of the spatial shape, i.e. axis i + 1 of a (C, *spatial) image.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

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

# Large tiles (`tile_starts`, `choose_tile_size`): the network is convolutional, so it may run on
# tiles larger than its training patch; neighbouring tiles overlap by DEFAULT_TILE_OVERLAP
# voxels per axis (at most half the training patch), where a flat-top weight falls off so that the
# voxels near a tile's border, which see the zero padding of the convolutions, count little.
TILE_MODES = ("patch", "large")
# Patch mode by default: large tiles are 2.7-5x faster on a CPU but change what the network's
# InstanceNorm layers normalize over (a whole tile instead of a training patch), and their labels
# agreed with patch mode's at Dice 0.52-0.93 only (bench/tiles.py; the bar is 0.99), while
# the flat-top window on patch-sized tiles agreed at 0.999: the stitching is not what differs. On the
# nnU-Net-sized network of bench/versus_nnunet.sh, trained 10 x 25 iterations, large tiles were 1.65x
# faster (one tile per image) but agreed at 0.977 on a 39x69x68 case (one 48x80x80 tile against four
# 48x64x64 windows), and their Dice against the truth fell from 0.985 to 0.965 there.
DEFAULT_TILE_MODE = "patch"
DEFAULT_TILE_OVERLAP = 16
# The fall-off's sigma as a fraction of the margin: the border voxel sits 4 sigma out, as in nnU-Net's
# Gaussian (sigma = patch / 8 at half a patch from the centre).
FLAT_TOP_SIGMA_FRACTION = 1.0 / 4.0


def window_starts(image_size: Sequence[int], patch_size: Sequence[int],
                  step_fraction: float = DEFAULT_STEP_FRACTION) -> list[list[int]]:
    """Start index (voxels) of every window along each axis.

    Per axis: n = ceil((size - patch) / (patch * step_fraction)) + 1 windows, evenly spaced from
    0 to size - patch (rounded to the nearest voxel), so the first window touches the start and the last
    one is flush with the far border. size == patch gives [0]. Every axis must have size >= patch
    (pad the image first, see `padded_shape`).
    """
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    return _evenly_spaced_starts(image_size, patch_size, [patch * step_fraction for patch in patch_size])


def tile_starts(image_size: Sequence[int], tile_size: Sequence[int], overlap: Sequence[int]) -> list[list[int]]:
    """Start index (voxels) of every tile along each axis, neighbouring tiles overlapping by at least
    `overlap` voxels: n = ceil((size - tile) / (tile - overlap)) + 1 tiles per axis, evenly spaced
    as in `window_starts` (so the actual overlap is often larger). Needs 0 <= overlap < tile."""
    if len(overlap) != len(tile_size) or any(not 0 <= o < t for o, t in zip(overlap, tile_size)):
        raise ValueError(f"overlap {list(overlap)} must be >= 0 and smaller than the tile {list(tile_size)} per axis")
    return _evenly_spaced_starts(image_size, tile_size, [t - o for t, o in zip(tile_size, overlap)])


def _evenly_spaced_starts(image_size: Sequence[int], window_size: Sequence[int],
                          max_steps: Sequence[float]) -> list[list[int]]:
    """Per axis the fewest windows whose starts, evenly spaced from 0 to size - window, lie at most
    max_step voxels apart."""
    if len(image_size) != len(window_size):
        raise ValueError(f"image_size {list(image_size)} and patch_size {list(window_size)} "
                         "have different numbers of axes")
    starts_per_axis = []
    for axis, (size, patch, step) in enumerate(zip(image_size, window_size, max_steps)):
        if patch < 1 or size < patch:
            raise ValueError(f"axis {axis}: image size {size} must be >= patch size {patch} >= 1")
        free = size - patch
        num_windows = math.ceil(free / step) + 1
        if num_windows == 1:
            starts_per_axis.append([0])
            continue
        spacing = free / (num_windows - 1)
        starts_per_axis.append([int(round(i * spacing)) for i in range(num_windows)])
    return starts_per_axis


def tile_overlap(patch_size: Sequence[int], overlap: int = DEFAULT_TILE_OVERLAP) -> list[int]:
    """Overlap (voxels) per axis of large tiles: `overlap`, at most half the training patch (a thin
    axis of a few slices then overlaps as in patch mode at step 0.5)."""
    if overlap < 0:
        raise ValueError(f"tile overlap must be >= 0 voxels, got {overlap}")
    return [min(int(overlap), int(patch) // 2) for patch in patch_size]


def choose_tile_size(image_size: Sequence[int], patch_size: Sequence[int], downsampling: Sequence[int],
                     overlap: Sequence[int], tile_bytes: Callable[[list[int]], int], budget_bytes: int,
                     batch: int = 1) -> list[int]:
    """The tile (voxels per axis) to predict an image of `image_size` (already padded to at least
    the patch, see `padded_shape`) with, in batches of `batch` tiles: per axis the training patch or a
    larger multiple of the network's total `downsampling`, at most the image rounded up to one (the
    stitching zero-pads the image to the tile, as it pads an image smaller than the patch: a 66-voxel
    axis under a 64-voxel patch is one tile of 80, not two of 64); among those of which
    `batch` tiles (`tile_bytes` each) fit in `budget_bytes`, the one that computes the fewest voxels
    (tiles x tile voxels, overlaps counted, a last incomplete batch counted as a full one), then the
    largest (fewest network calls). The training patch when no larger tile fits.

    Fewest voxels rather than simply largest: a 300-slice axis with a downsampling of 32 is covered
    by two 160-slice tiles (320 computed) better than by two 288-slice ones (576). Batches counted
    whole: where a batch of one runs slower per voxel than a batch of two (PyTorch's CPU convolutions,
    see `CPU_BATCH_WINDOWS`), an image is better cut into two tiles than computed as one."""
    candidates = []
    for size, patch, step in zip(image_size, patch_size, downsampling):
        if size < patch:
            raise ValueError(f"image size {list(image_size)} is smaller than the patch {list(patch_size)}: "
                             "pad it first")
        larger = range((patch // step + 1) * step, math.ceil(size / step) * step + 1, step)
        candidates.append([int(patch), *larger])
    best, best_key = [int(p) for p in patch_size], None
    for tile in itertools.product(*candidates):
        tiles = math.prod(len(starts) for starts in tile_starts(padded_shape(image_size, tile), tile, overlap))
        key = (math.ceil(tiles / batch) * batch * math.prod(tile), -math.prod(tile))
        if (best_key is None or key < best_key) and batch * tile_bytes(list(tile)) <= budget_bytes:
            best, best_key = list(tile), key
    return best


def padded_shape(spatial_shape: Sequence[int], patch_size: Sequence[int]) -> list[int]:
    """The spatial shape after zero-padding every axis smaller than the patch up to the patch."""
    return [max(int(size), patch) for size, patch in zip(spatial_shape, patch_size)]


def probe_windows(image: np.ndarray, patch_size: Sequence[int], count: int) -> np.ndarray:
    """(count, C, *patch_size) float32: the `count` windows of the sliding window nearest the image's centre
    (where the foreground usually lies), repeated when there are fewer; a patch with one spatial axis fewer
    than the image (the 2d configuration on a volume) takes its windows from the middle slices. The batch a
    runtime is measured on (`autoseg.inference.runtimes.measure_runtimes`)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == len(patch_size) + 2:  # (C, z, y, x) under a 2D patch: slices, as the stitching runs them
        middle = image.shape[1] // 2
        slices = [min(max(middle + offset, 0), image.shape[1] - 1) for offset in range(-(count // 2), count)]
        return np.concatenate([probe_windows(image[:, z], patch_size, 1) for z in slices[:count]])
    shape = padded_shape(image.shape[1:], patch_size)
    before = [(padded - size) // 2 for padded, size in zip(shape, image.shape[1:])]
    padded = np.pad(image, [(0, 0)] + [(b, p - s - b) for b, p, s in zip(before, shape, image.shape[1:])])
    centre = np.array(shape) / 2
    corners = sorted(itertools.product(*window_starts(shape, patch_size)),
                     key=lambda corner: float(np.sum((np.array(corner) + np.array(patch_size) / 2 - centre) ** 2)))
    chosen = [corners[index % len(corners)] for index in range(count)]
    return np.stack([padded[(slice(None), *(slice(s, s + p) for s, p in zip(corner, patch_size)))]
                     for corner in chosen])


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


def axis_profiles(patch_size: Sequence[int], use_gaussian: bool) -> list[np.ndarray]:
    """Per-axis window weights: Gaussian profiles, or 1 everywhere (plain averaging)."""
    if not use_gaussian:
        return [np.ones(patch, np.float32) for patch in patch_size]
    return [gaussian_profile(patch) for patch in patch_size]


@functools.lru_cache(maxsize=32)
def _cached_flat_top_profile(tile: int, margin: int) -> np.ndarray:
    distance_to_border = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float64)
    falloff = np.maximum(margin - distance_to_border, 0.0) / max(margin * FLAT_TOP_SIGMA_FRACTION, 1e-12)
    profile = np.maximum(np.exp(-0.5 * falloff ** 2), MIN_AXIS_WEIGHT).astype(np.float32)
    profile.setflags(write=False)  # shared through the cache
    return profile


def flat_top_profile(tile: int, margin: int) -> np.ndarray:
    """The 1-D weights of a large tile: 1 except within `margin` voxels of either border, where a
    Gaussian of sigma = margin * FLAT_TOP_SIGMA_FRACTION falls to exp(-8) at the border voxel (the
    weight nnU-Net's patch Gaussian gives its border, reached over the margin instead of half the
    patch, so a border voxel weighs as little however large the tile). float32 (tile,), read-only."""
    return _cached_flat_top_profile(int(tile), int(margin))


def tile_profiles(tile_size: Sequence[int], overlap: Sequence[int], use_gaussian: bool) -> list[np.ndarray]:
    """Per-axis weights of a large tile: `flat_top_profile` over the overlap, or 1 everywhere."""
    if not use_gaussian:
        return [np.ones(tile, np.float32) for tile in tile_size]
    return [flat_top_profile(tile, margin) for tile, margin in zip(tile_size, overlap)]


def normalized_axis_weights(profiles: list[np.ndarray], starts: list[list[int]],
                            spatial: Sequence[int]) -> list[dict[int, np.ndarray]]:
    """Per axis and window start, the window's 1-D weights divided by the summed weight of all
    windows along that axis (float32 arrays of the patch length).

    The summed window weights are never stored per voxel: windows lie on a grid (the product of
    the per-axis starts) and their weight is the product of the per-axis profiles, so the summed
    weight at a voxel is the product of per-axis sums, known before the first window runs, and a
    window's weight divided by it is the outer product of these normalized 1-D weights. They sum to
    1 over the windows covering a voxel, so stitching needs no weight buffer and no final division,
    and no weight underflows in float16 (a corner voxel covered by one window gets weight 1, not exp(-24)).
    """
    normalized = []
    for profile, axis_starts, size in zip(profiles, starts, spatial):
        total = np.zeros(int(size), np.float64)
        for start in axis_starts:
            total[start:start + len(profile)] += profile
        normalized.append({start: (profile / total[start:start + len(profile)]).astype(np.float32)
                           for start in axis_starts})
    return normalized


def mirror_axes_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of `spatial_axes`, the empty one (no flip) first: 8 for 3 axes, 4 for 2."""
    axes = tuple(spatial_axes)
    return [subset for count in range(len(axes) + 1)
            for subset in itertools.combinations(axes, count)]
