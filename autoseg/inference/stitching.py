"""Sliding-window prediction: run the network(s) on every window of an image (optionally with mirror
test-time augmentation) and stitch the results with the windows' Gaussian weights.

This is nnU-Net v2's `predict_sliding_window_return_logits` (reference section 6) as a pure function:
the caller hands in an already preprocessed image (C, *spatial) float32 in the plan's transposed
axis order and gets back class probabilities (or logits) (num_classes, *spatial) float32 in the
same space. Where the windows lie and how they are weighted is `autoseg.inference.sliding_window`;
reading, preprocessing, restoring the original geometry and choosing folds live elsewhere.

What is averaged: by default the softmax of every pass (each mirror flip of each network) is
averaged, so the result is a probability map that sums to one per voxel; `softmax=False` averages
the raw logits instead (nnU-Net's choice; also what the oracle tests check the stitching with).

Memory: the only full-size buffer is the (num_classes, *spatial) accumulator; each window is added
already divided by the summed weights (`normalized_axis_weights`). Several mirror sets at once
(`predict_sliding_window_mirror_sets`, what the fold validation uses to score TTA choices) share
the network passes but keep one accumulator each.

A 2D patch on a (C, z, y, x) volume (the `2d` configuration) predicts each z-slice on its own, as
nnU-Net does: a slice is a 3D window of depth 1, so the same core serves both. Axes of a (B, C,
*patch) batch: spatial axis i is batch axis i + 2.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from autoseg.errors import AutosegError
from autoseg.inference.sliding_window import (DEFAULT_STEP_FRACTION, axis_profiles, mirror_axes_combinations,
                                              normalized_axis_weights, padded_shape, tile_profiles, tile_starts,
                                              window_starts)

# Voxels per slab when converting a float16 / accelerator accumulator to the float32 CPU result.
_SLAB_VOXELS = 1 << 22

Network = Callable[[torch.Tensor], torch.Tensor]
ProgressCallback = Callable[[int, int], None]


def predict_sliding_window(networks: Sequence[Network], image: torch.Tensor | np.ndarray,
                           patch_size: Sequence[int], *, mirror_axes: Sequence[int] | None = None,
                           **options) -> torch.Tensor:
    """Class probabilities (or logits) (num_classes, *spatial) float32 on the CPU of a whole image
    from overlapping windows, with the mirror passes of `mirror_axes` (None = every spatial axis,
    () = no TTA): `predict_sliding_window_mirror_sets` with one set; `options` are its keyword
    arguments (num_classes is required)."""
    return predict_sliding_window_mirror_sets(networks, image, patch_size, mirror_sets=[mirror_axes], **options)[0]


def predict_sliding_window_mirror_sets(
        networks: Sequence[Network],
        image: torch.Tensor | np.ndarray,
        patch_size: Sequence[int],
        *,
        num_classes: int,
        step_fraction: float = DEFAULT_STEP_FRACTION,
        overlap: Sequence[int] | None = None,
        mirror_sets: Sequence[Sequence[int] | None] = (None,),
        use_gaussian: bool = True,
        softmax: bool = True,
        batch_windows: int = 1,
        device: str | torch.device = "cpu",
        accumulate_on: str | torch.device | None = None,
        accumulate_dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        progress: ProgressCallback | None = None,
) -> list[torch.Tensor]:
    """Class probabilities (or logits) of a whole image from overlapping windows, one result per
    mirror set: the passes of every set run once, each set's mean is accumulated apart.

    networks: one or more callables (B, C, *patch_size) -> (B, num_classes, *patch_size) logits,
        e.g. the nets of several folds in eval mode with deep supervision off; their outputs are
        averaged with equal weight.
    image: (C, *spatial) float, preprocessed, with len(patch_size) spatial axes; spatial axes
        smaller than the patch are zero-padded (centred) and the padding is cut from the output.
        With a 2D patch (y, x) the image may also be a volume (C, z, y, x): each z-slice is then
        tiled in-plane exactly as a 2D image would be, and windows of different slices share
        batches (which matters when a slice holds only one window).
    patch_size: the window the networks run on: the training patch, or a larger tile (any multiple of
        the network's total downsampling: the U-Net is fully convolutional).
    step_fraction: windows lie at most patch * step_fraction voxels apart (nnU-Net's 0.5), and are
        weighted by a Gaussian of sigma patch / 8. Ignored when `overlap` is given.
    overlap: large-tile mode: neighbouring windows overlap by at least this many voxels per axis
        (`tile_starts`) and are weighted by `flat_top_profile`s falling off over the overlap.
    mirror_sets: mirror axes sets for test-time augmentation. A set is the networks' spatial axes
        (0-based, of the patch) to mirror: every subset of it is a pass, the passes' outputs are
        averaged (8 passes for 3 axes, 4 for 2). None = all axes, () = no TTA. Passes shared by
        several sets (the identity is in all) run once: scoring the sets (), (0,), (1,), (2,) and
        None together costs the 8 passes of None. Memory: one accumulator per set (the fold
        validation compares 5 sets in 3D: 5x the accumulator of one prediction).
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

    Returns per mirror set (num_classes, *spatial) float32 on the CPU: the weighted mean over
    windows, the set's TTA passes and networks. With a float32 CPU accumulator the result is that
    buffer itself (no copy).
    """
    patch_size = [int(p) for p in patch_size]
    image = _as_tensor(image, patch_size)
    mirror_sets = [tuple(range(len(patch_size))) if axes is None else tuple(axes) for axes in mirror_sets]
    if overlap is None:
        profiles = axis_profiles(patch_size, use_gaussian)
        place = functools.partial(window_starts, patch_size=patch_size, step_fraction=step_fraction)
    else:
        profiles = tile_profiles(patch_size, overlap, use_gaussian)
        place = functools.partial(tile_starts, tile_size=patch_size, overlap=overlap)
    if image.ndim == len(patch_size) + 1:
        starts = place(padded_shape(image.shape[1:], patch_size))
    else:  # slice by slice: one window of depth 1 per z index, in-plane windows as in 2D
        starts = [list(range(image.shape[1]))] + place(padded_shape(image.shape[2:], patch_size))
        profiles = [np.ones(1, np.float32)] + profiles
        mirror_sets = [tuple(axis + 1 for axis in axes) for axes in mirror_sets]
        networks = [_on_depth_one_windows(network) for network in networks]
        patch_size = [1] + patch_size
    return _stitch_windows(networks, image, patch_size, starts, profiles, num_classes=num_classes,
                           mirror_sets=mirror_sets, softmax=softmax, batch_windows=batch_windows, device=device,
                           accumulate_on=accumulate_on, accumulate_dtype=accumulate_dtype,
                           autocast_dtype=autocast_dtype, channels_last=channels_last, progress=progress)


def _as_tensor(image: torch.Tensor | np.ndarray, patch_size: list[int]) -> torch.Tensor:
    """The image as a float32 tensor, checked to be (C, *spatial) with as many spatial axes as the
    patch, or a (C, z, y, x) volume for a 2D patch."""
    if isinstance(image, np.ndarray):
        # np.load(mmap_mode="r") arrays are read-only, which torch.from_numpy does not accept.
        image = torch.from_numpy(image if image.flags.writeable else np.array(image))
    dimension = len(patch_size)
    if image.ndim != dimension + 1 and not (dimension == 2 and image.ndim == 4):
        volume = " or a (C, z, y, x) volume" if dimension == 2 else ""
        raise ValueError(f"image must be (C, *spatial) with {dimension} spatial axes{volume}, "
                         f"got shape {tuple(image.shape)}")
    return image.float()


def _on_depth_one_windows(network: Network) -> Network:
    """Wrap a 2D network so it takes (B, C, 1, y, x) windows and returns (B, K, 1, y, x)."""
    def run(batch: torch.Tensor) -> torch.Tensor:
        return network(batch.squeeze(2)).unsqueeze(2)
    return run


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


def _window_weights(normalized: list[dict[int, torch.Tensor]], corners: list[tuple[int, ...]]) -> torch.Tensor:
    """(B, 1, *patch) normalized weights of the windows starting at `corners`."""
    weights = []
    for corner in corners:
        axes = [normalized[axis][start] for axis, start in enumerate(corner)]
        weight = functools.reduce(lambda outer, inner: outer[..., None] * inner, axes)
        weights.append(weight)
    return torch.stack(weights)[:, None]


def _stitch_windows(networks: Sequence[Network], image: torch.Tensor, patch_size: list[int],
                    starts: list[list[int]], profiles: list[np.ndarray], *, num_classes: int,
                    mirror_sets: list[tuple[int, ...]], softmax: bool, batch_windows: int,
                    device: str | torch.device, accumulate_on: str | torch.device | None,
                    accumulate_dtype: torch.dtype, autocast_dtype: torch.dtype | None,
                    channels_last: bool, progress: ProgressCallback | None) -> list[torch.Tensor]:
    """The core: run `networks` on every window given by `starts` (per axis, on the padded image)
    and return per mirror set the weighted mean (num_classes, *spatial) float32 on the CPU, padding
    removed."""
    if not networks:
        raise ValueError("predict needs at least one network")
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    for mirror_axes in mirror_sets:
        if any(not 0 <= axis < len(patch_size) for axis in mirror_axes):
            raise ValueError(f"mirror_axes {list(mirror_axes)} must be spatial axes "
                             f"0..{len(patch_size) - 1}")
    device = torch.device(device)
    accumulate_on = torch.device("cpu" if accumulate_on is None else accumulate_on)
    padded, original = _pad_to_patch(image, patch_size)
    spatial = padded.shape[1:]
    # Not created under inference_mode, so callers may modify the result in place afterwards.
    accumulators = [torch.zeros((num_classes, *spatial), dtype=accumulate_dtype, device=accumulate_on)
                    for _ in mirror_sets]
    normalized = [{start: torch.from_numpy(weights).to(device) for start, weights in axis.items()}
                  for axis in normalized_axis_weights(profiles, starts, spatial)]
    corners = list(itertools.product(*starts))
    passes = _mirror_passes(mirror_sets)
    for first in range(0, len(corners), batch_windows):
        batch_corners = corners[first:first + batch_windows]
        windows = [tuple(slice(s, s + p) for s, p in zip(corner, patch_size)) for corner in batch_corners]
        batch = torch.stack([padded[(slice(None), *window)] for window in windows]).to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=_channels_last_format(batch.ndim))
        means = _means_over_passes(networks, batch, passes, len(mirror_sets), num_classes, autocast_dtype, softmax,
                                   batch_windows)
        weights = _window_weights(normalized, batch_corners)
        for accumulator, mean in zip(accumulators, means):
            weighted = (mean * weights).to(device=accumulate_on, dtype=accumulate_dtype)
            for index, window in enumerate(windows):
                accumulator[(slice(None), *window)] += weighted[index]
        if progress is not None:
            progress(first + len(batch_corners), len(corners))
    results = []
    while accumulators:  # each accumulator is released as soon as its result exists
        results.append(_float32_on_cpu(accumulators.pop(0)[(slice(None), *original)]))
        if not torch.isfinite(results[-1].sum()):  # a sum propagates inf/NaN without a full-size mask or copy
            raise AutosegError("sliding-window output contains inf/NaN (a diverged network, or float16 "
                               "overflow of raw logits); retry with accumulate_dtype=torch.float32")
    return results


def mirror_pass_count(mirror_sets: Sequence[Sequence[int] | None], dimension: int) -> int:
    """How many distinct passes the mirror sets need together (None = every one of `dimension` axes)."""
    return len(_mirror_passes([tuple(range(dimension)) if axes is None else tuple(axes) for axes in mirror_sets]))


def mirrored_mean(network: Network, batch: torch.Tensor, mirror_axes: Sequence[int] | None, num_classes: int,
                  autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The mean softmax over the mirror passes of `mirror_axes` (None: every spatial axis) of one batch of
    windows (B, C, *patch) -> (B, num_classes, *patch): each window as the sliding window computes it,
    before the Gaussian weighting."""
    axes = tuple(range(batch.ndim - 2)) if mirror_axes is None else tuple(mirror_axes)
    return _means_over_passes([network], batch, _mirror_passes([axes]), 1, num_classes, autocast_dtype,
                              softmax=True, batch_windows=len(batch))[0]


def _mirror_passes(mirror_sets: list[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    """{flipped axes of a pass: the indices of the mirror sets it belongs to}, each pass once, in
    the order of `mirror_axes_combinations` of the sets (the identity first)."""
    passes: dict[tuple[int, ...], list[int]] = {}
    for index, mirror_axes in enumerate(mirror_sets):
        for flip in mirror_axes_combinations(mirror_axes):
            passes.setdefault(flip, []).append(index)
    return passes


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


def _means_over_passes(networks: Sequence[Network], batch: torch.Tensor,
                       passes: dict[tuple[int, ...], list[int]], num_sets: int, num_classes: int,
                       autocast_dtype: torch.dtype | None, softmax: bool, batch_windows: int) -> list[torch.Tensor]:
    """Per mirror set, the mean over networks and the set's mirror passes of the softmax (or
    logits) of one batch of windows.

    batch (B, C, *patch) on the compute device -> num_sets x (B, num_classes, *patch) float32.
    passes: `_mirror_passes`. A mirror pass flips the input, runs the network and flips its output
    back; each pass runs once and is added to every set it belongs to. When the batch holds fewer
    than `batch_windows` windows (an image of one or a few windows), several passes share one network
    call, so the call still runs the batch the device was sized for: on a CPU a batch of one sends
    PyTorch's conv3d to a kernel several times slower per voxel.
    """
    autocast = (torch.autocast(batch.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())
    totals: list[torch.Tensor | None] = [None] * num_sets
    counts = [0] * num_sets
    flips = list(passes)
    passes_per_call = max(1, batch_windows // len(batch))
    with torch.inference_mode():
        for network in networks:
            for first in range(0, len(flips), passes_per_call):
                packed = flips[first:first + passes_per_call]
                inputs = [batch.flip([axis + 2 for axis in flip]) if flip else batch for flip in packed]
                with autocast:
                    logits = network(inputs[0] if len(inputs) == 1 else torch.cat(inputs))
                _check_logits(logits, inputs[0], num_classes, len(inputs))
                for flip, output in zip(packed, logits.float().split(len(batch))):
                    _add_pass(output, flip, passes[flip], totals, counts, softmax)
        return [total.div_(count) for total, count in zip(totals, counts)]


def _add_pass(output: torch.Tensor, flip: tuple[int, ...], members: list[int], totals: list, counts: list[int],
              softmax: bool) -> None:
    """Add one mirror pass's logits `output`, flipped back, to the running totals of the sets in `members`."""
    dims = [axis + 2 for axis in flip]
    output = torch.softmax(output, dim=1) if softmax else output
    output = output.flip(dims) if dims else output
    # Raw logits may be (a view of) the network's input, and a pass shared by several
    # sets must not become one set's running total: copy before adding in place then.
    shared = len(members) > 1 or not (softmax or dims)
    for index in members:
        if totals[index] is None:
            totals[index] = output.clone() if shared else output
        else:
            totals[index] += output
        counts[index] += 1


def _check_logits(logits: object, batch: torch.Tensor, num_classes: int, passes: int = 1) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"a network returned {type(logits).__name__}, not a tensor; "
                         "turn deep supervision off for inference")
    expected = (batch.shape[0] * passes, num_classes, *batch.shape[2:])
    if tuple(logits.shape) != expected:
        raise ValueError(f"a network returned logits of shape {tuple(logits.shape)} for windows "
                         f"{tuple(batch.shape)}; expected {expected} (num_classes={num_classes})")
