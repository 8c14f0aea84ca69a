"""Drawing training patches from the preprocessed store, as nnU-Net's data loader does (nnunet.md §5.3).

A batch holds `batch_size` patches from cases drawn uniformly with replacement. The last third of each
batch is forced to contain foreground: those patches are centred on a stored foreground voxel of a label
chosen uniformly among the labels present in the case. Patches are read larger than the network's patch
(`enlarged_patch_size`) so rotation and scaling in the augmentation find image content in the corners;
the augmentation crops back to the final patch. Only the patch is read from the memory-mapped arrays.

Axis order: data (C, z, y, x) float32, seg (z, y, x) int16, as in docs/contracts.md. A 2D configuration
(patch of length 2 on 3D stored data) reads one z slice: a pseudo-3D patch (1, y, x) with the singleton
axis removed from the batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from autoseg.cropping import OUTSIDE_NONZERO
from autoseg.errors import DatasetError

# Fraction of each batch forced to contain foreground. nnU-Net makes it deterministic: sample j of a
# batch of size bs is forced iff j >= round(bs * (1 - 0.33)), so a batch of 2 has exactly one.
OVERSAMPLE_FOREGROUND_FRACTION = 0.33

# Smallest scale factor the spatial augmentation uses when sizing the enlarged patch (nnU-Net passes
# (0.85, 1.25) to get_patch_size although it scales by (0.7, 1.4): a compromise between context and I/O).
ENLARGED_PATCH_SCALE_RANGE = (0.85, 1.25)

# Value of data voxels padded outside the image; seg padding is OUTSIDE_NONZERO (-1, ignored in sampling
# and turned into background by the augmentation).
DATA_PADDING_VALUE = 0.0


def _largest_extent_after_rotation(extent_a: float, extent_b: float, max_angle_rad: float) -> float:
    """Largest extent along axis a of a rectangle (extent_a, extent_b) rotated by any angle in [0, max_angle].

    The extent is a*cos(t) + b*sin(t), which grows until t* = atan2(b, a) and shrinks after it; rotations
    beyond 90 degrees repeat the same boxes, so the angle is clipped there.
    """
    max_angle_rad = min(abs(max_angle_rad), math.pi / 2)
    worst_angle = min(math.atan2(extent_b, extent_a), max_angle_rad)
    return extent_a * math.cos(worst_angle) + extent_b * math.sin(worst_angle)


def enlarged_patch_size(
    patch_size: Sequence[int],
    rotation_range_rad: Sequence[tuple[float, float]],
    scale_range: tuple[float, float] = ENLARGED_PATCH_SCALE_RANGE,
) -> tuple[int, ...]:
    """Patch size (voxels) to read so that a rotated and scaled `patch_size` patch stays inside it.

    patch_size: (z, y, x) or (y, x) voxels of the final patch.
    rotation_range_rad: one (low, high) range in radians per rotation axis: for 3D three ranges, the
      rotation about axis 0 (in-plane, y-x), axis 1 (z-x) and axis 2 (z-y); for 2D one range (y-x).
      A "dummy 2D" configuration rotates only in-plane: give (0, 0) for axes 1 and 2.
    scale_range: only its minimum matters; the box is divided by it (a zoom-out by 0.85 needs 1/0.85 more).

    As nnU-Net's get_patch_size, each axis of rotation is considered alone and the per-axis results
    combined by maximum, but the bounding box of each rotation is exact (largest over the range).
    Equal to patch_size when every range is (0, 0) and min(scale_range) is 1.
    """
    final = [float(s) for s in patch_size]
    dimension = len(final)
    planes = [(0, 1)] if dimension == 2 else [(1, 2), (0, 2), (0, 1)]
    if len(rotation_range_rad) != len(planes):
        raise ValueError(
            f"rotation_range_rad needs {len(planes)} ranges for a {dimension}D patch, got {len(rotation_range_rad)}"
        )
    enlarged = list(final)
    for (axis_a, axis_b), angle_range in zip(planes, rotation_range_rad):
        max_angle = max(abs(a) for a in angle_range)
        a, b = final[axis_a], final[axis_b]
        enlarged[axis_a] = max(enlarged[axis_a], _largest_extent_after_rotation(a, b, max_angle))
        enlarged[axis_b] = max(enlarged[axis_b], _largest_extent_after_rotation(b, a, max_angle))
    smallest_scale = min(scale_range)
    # The tolerance keeps exact sizes (no rotation, scale 1) from being rounded up by float error.
    return tuple(int(math.ceil(e / smallest_scale - 1e-6)) for e in enlarged)


class CaseSource(Protocol):
    """Where the sampler reads cases from; `PreprocessedFolder` is the implementation for the store."""

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(data (C, z, y, x) float32, seg (z, y, x) int16), ideally memory-mapped: only patches are sliced."""

    def foreground_locations(self, case_id: str) -> dict[int, np.ndarray]:
        """label -> (N, 3) int array of (z, y, x) voxels of that label (N may be 0)."""


@dataclass(frozen=True)
class PreprocessedFolder:
    """Reads CASE.npy / CASE_seg.npy (memory-mapped) and CASE.json from one preprocessed data folder.

    Holds only the path, so it travels cheaply to background workers. The JSON is read only when a
    forced-foreground sample needs it, and arrays are opened per sample (opening a memory map costs
    microseconds, and keeping hundreds of them open would cost file descriptors).
    """

    folder: Path

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        data_path = Path(self.folder) / f"{case_id}.npy"
        seg_path = Path(self.folder) / f"{case_id}_seg.npy"
        try:
            data = np.load(data_path, mmap_mode="r")
            seg = np.load(seg_path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read preprocessed case {case_id!r} in {self.folder}: {err}") from err
        if data.ndim != seg.ndim + 1 or data.shape[1:] != seg.shape:
            raise DatasetError(
                f"{data_path} has shape {data.shape} but {seg_path.name} has {seg.shape}; expected (C, *S) and S"
            )
        return data, seg

    def foreground_locations(self, case_id: str) -> dict[int, np.ndarray]:
        path = Path(self.folder) / f"{case_id}.json"
        try:
            properties = json.loads(path.read_text())
            stored = properties["foreground_locations"]
        except (OSError, ValueError, KeyError) as err:
            raise DatasetError(f"cannot read foreground_locations of {path}: {err!r}") from err
        return {int(label): np.asarray(voxels, dtype=np.int64).reshape(-1, 3) for label, voxels in stored.items()}


def is_forced_foreground(sample_index: int, batch_size: int,
                         fraction: float = OVERSAMPLE_FOREGROUND_FRACTION) -> bool:
    """nnU-Net's rule: the last round(batch_size * fraction) samples (by Python rounding) are forced."""
    return sample_index >= round(batch_size * (1 - fraction))


def split_batch(global_batch_size: int, world_size: int) -> list[int]:
    """Samples per rank when a batch is split across `world_size` processes (nnU-Net's DDP rule):
    as equal as possible, the first ranks taking the remainder, at least one sample per rank (a global
    batch smaller than the world is raised to one sample per rank)."""
    if global_batch_size < 1 or world_size < 1:
        raise ValueError(f"batch size and world size must be >= 1, got {global_batch_size} and {world_size}")
    base, remainder = divmod(max(global_batch_size, world_size), world_size)
    return [base + (1 if rank < remainder else 0) for rank in range(world_size)]


def _patch_start_bounds(image_shape: Sequence[int], read_size: Sequence[int], final_size: Sequence[int]):
    """Lowest and highest start voxel per axis of a read patch (nnU-Net's get_bbox bounds).

    The read patch may stick out of the image by half the enlargement on each side, so that the final
    (centre) patch can reach every border; an image smaller than the final patch is padded to it.
    """
    lowest, highest = [], []
    for shape, read, final in zip(image_shape, read_size, final_size):
        need_to_pad = max(read - final, read - shape)
        low = -(need_to_pad // 2)
        lowest.append(low)
        highest.append(shape + need_to_pad // 2 + need_to_pad % 2 - read)
    return lowest, highest


def read_padded_patch(array: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value) -> np.ndarray:
    """Copy array[..., start:start+size] over the trailing len(size) axes, padding outside with pad_value.

    Only the part inside the array is sliced, so a memory-mapped array is read for that region alone.
    """
    leading = array.shape[: array.ndim - len(size)]
    patch = np.full(leading + tuple(size), pad_value, dtype=array.dtype)
    source, target = [Ellipsis], [Ellipsis]
    for begin, length, extent in zip(start, size, array.shape[len(leading):]):
        lo, hi = max(begin, 0), min(begin + length, extent)
        if hi <= lo:
            return patch
        source.append(slice(lo, hi))
        target.append(slice(lo - begin, hi - begin))
    patch[tuple(target)] = array[tuple(source)]
    return patch


class PatchSampler:
    """Draws batches of enlarged patches from the cases of a fold.

    cases: where to read from (`PreprocessedFolder(path)` for the store).
    case_ids: the fold's training cases; drawn uniformly with replacement.
    patch_size: final patch (z, y, x) or (y, x) for a 2D configuration on 3D arrays.
    read_patch_size: the enlarged patch to read (`enlarged_patch_size`); defaults to patch_size.
    first_global_index, global_batch_size: where this batch sits in the global batch when a batch is
      split across ranks (DDP): the forced-foreground rule is applied to global sample indices, so the
      ranks together force exactly what one process would (a batch of 2 on 2 ranks: rank 1's sample).
      Defaults: this batch is the whole batch.
    """

    def __init__(self, cases: CaseSource, case_ids: Sequence[str], patch_size: Sequence[int], batch_size: int,
                 read_patch_size: Sequence[int] | None = None,
                 foreground_fraction: float = OVERSAMPLE_FOREGROUND_FRACTION,
                 first_global_index: int = 0, global_batch_size: int | None = None):
        if not case_ids:
            raise DatasetError("PatchSampler needs at least one case id (the fold's training list is empty)")
        read_patch_size = tuple(patch_size) if read_patch_size is None else tuple(read_patch_size)
        if len(read_patch_size) != len(patch_size) or any(r < p for r, p in zip(read_patch_size, patch_size)):
            raise ValueError(f"read_patch_size {read_patch_size} must be >= patch_size {tuple(patch_size)} per axis")
        self.cases = cases
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.read_patch_size = tuple(int(s) for s in read_patch_size)
        self.batch_size = int(batch_size)
        self.foreground_fraction = foreground_fraction
        self.first_global_index = int(first_global_index)
        self.global_batch_size = self.batch_size if global_batch_size is None else int(global_batch_size)
        if not 0 <= self.first_global_index <= self.global_batch_size - self.batch_size:
            raise ValueError(f"samples {self.first_global_index}..{self.first_global_index + self.batch_size - 1} "
                             f"do not fit in a global batch of {self.global_batch_size}")

    def sample_batch(self, rng: np.random.Generator) -> dict:
        """A batch: {"data": float32 (B, C, *read_patch_size), "seg": int16 (B, 1, *read_patch_size),
        "case_ids": [B str]}. Seg holds -1 outside the nonzero region and outside the image."""
        data, seg, case_ids = [], [], []
        for j in range(self.batch_size):
            case_id = self.case_ids[rng.integers(len(self.case_ids))]
            forced = is_forced_foreground(self.first_global_index + j, self.global_batch_size,
                                          self.foreground_fraction)
            sample_data, sample_seg = self.sample_patch(case_id, forced, rng)
            data.append(sample_data)
            seg.append(sample_seg[None])
            case_ids.append(case_id)
        return {"data": np.stack(data).astype(np.float32, copy=False),
                "seg": np.stack(seg).astype(np.int16, copy=False), "case_ids": case_ids}

    def sample_patch(self, case_id: str, force_foreground: bool,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One patch: (data (C, *read_patch_size), seg (*read_patch_size))."""
        data, seg = self.cases.arrays(case_id)
        # A 2D configuration on 3D arrays reads a pseudo-3D patch of one slice.
        missing_axes = seg.ndim - len(self.patch_size)
        if missing_axes not in (0, 1):
            raise DatasetError(f"case {case_id!r}: a {len(self.patch_size)}D patch cannot be read from "
                               f"arrays of spatial shape {seg.shape}")
        final = (1,) * missing_axes + self.patch_size
        read = (1,) * missing_axes + self.read_patch_size
        lowest, highest = _patch_start_bounds(seg.shape, read, final)
        centre = self._foreground_voxel(case_id, rng) if force_foreground else None
        if centre is None:
            start = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(lowest, highest)]
        else:
            start = [int(np.clip(c - r // 2, lo, hi)) for c, r, lo, hi in zip(centre, read, lowest, highest)]
        data_patch = read_padded_patch(data, start, read, DATA_PADDING_VALUE)
        seg_patch = read_padded_patch(seg, start, read, OUTSIDE_NONZERO)
        spatial_shape = self.read_patch_size
        return (data_patch.reshape(data_patch.shape[:1] + spatial_shape),
                seg_patch.reshape(spatial_shape))

    def _foreground_voxel(self, case_id: str, rng: np.random.Generator) -> np.ndarray | None:
        """A stored voxel (z, y, x) of a label drawn uniformly among those present; None without foreground."""
        locations = self.cases.foreground_locations(case_id)
        present = sorted(label for label, voxels in locations.items() if len(voxels) > 0)
        if not present:
            return None
        voxels = locations[present[rng.integers(len(present))]]
        return voxels[rng.integers(len(voxels))]
