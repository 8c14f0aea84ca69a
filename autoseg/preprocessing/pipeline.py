"""One case from its original grid to the network's grid, and predictions back.

Forward (`preprocess_case`), in nnU-Net's order: transpose (coarsest axis first) -> crop to the
nonzero box -> normalize (before resampling, so statistics come from the original voxels) ->
resample to the target spacing -> sample foreground voxel locations for oversampling.
Inverse (`restore_to_original`): resample to the cropped shape -> paste into the full shape ->
transpose back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from autoseg.cropping import crop_to_nonzero
from autoseg.errors import WorkspaceError
from autoseg.io import Geometry
from autoseg.preprocessing.normalization import normalize
from autoseg.preprocessing.resampling import (new_shape_for, resample_image, resample_probabilities,
                                              resample_segmentation, separate_axis_for)

CASE_PROPERTIES_SCHEMA_VERSION = 1
# Foreground voxels remembered per label so the trainer can centre patches on foreground
# (nnU-Net samples 10,000 per class with seed 1234).
FOREGROUND_SAMPLES_PER_LABEL = 10_000
FOREGROUND_SAMPLE_SEED = 1234


@dataclass
class CaseProperties:
    """What was done to one case: enough to put a prediction back onto the original grid.

    crop_box and shape_after_crop are in the original (z, y, x) order; shape_after_resampling,
    spacing_after_resampling (mm) and foreground_locations ([z, y, x] voxel indices of the stored
    arrays, per label value as str; labels absent from the case have no key) in transposed order.
    """

    case_id: str
    original_geometry: Geometry
    transpose_forward: list[int]
    crop_box: list[list[int]]
    shape_after_crop: list[int]
    shape_after_resampling: list[int]
    spacing_after_resampling: list[float]
    foreground_locations: dict[str, list[list[int]]] = field(default_factory=dict)
    source_signature: str = ""
    schema_version: int = CASE_PROPERTIES_SCHEMA_VERSION

    @property
    def transpose_backward(self) -> list[int]:
        return [int(a) for a in np.argsort(self.transpose_forward)]

    def to_json(self) -> dict:
        data = asdict(self)
        data["original_geometry"] = self.original_geometry.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "case properties") -> "CaseProperties":
        if data.get("schema_version") != CASE_PROPERTIES_SCHEMA_VERSION:
            raise WorkspaceError(f"{where}: schema_version {data.get('schema_version')!r}, expected "
                                 f"{CASE_PROPERTIES_SCHEMA_VERSION}; re-run `autoseg preprocess`")
        try:
            fields = dict(data)
            fields["original_geometry"] = Geometry.from_json(data["original_geometry"])
            return cls(**fields)
        except (KeyError, TypeError) as e:
            raise WorkspaceError(f"{where}: malformed case properties ({e}); re-run `autoseg preprocess`") from None


def _check_permutation(transpose_forward: Sequence[int]) -> list[int]:
    permutation = [int(a) for a in transpose_forward]
    if sorted(permutation) != [0, 1, 2]:
        raise ValueError(f"transpose_forward {list(transpose_forward)} is not a permutation of [0, 1, 2]")
    return permutation


def target_spacing_for(spacing_t: Sequence[float], target_spacing: Sequence[float], is_2d_config: bool) -> list[float]:
    """The spacing (mm, transposed order) a case at `spacing_t` is resampled to: the configuration's
    `target_spacing`, except that a 2d configuration keeps the case's own spacing along transposed
    axis 0 (its slices are never resampled across)."""
    target = [float(t) for t in target_spacing]
    if is_2d_config:
        target[0] = float(spacing_t[0])
    return target


def sample_foreground_locations(segmentation: np.ndarray, seed: int = FOREGROUND_SAMPLE_SEED,
                                samples_per_label: int = FOREGROUND_SAMPLES_PER_LABEL) -> dict[str, list[list[int]]]:
    """Up to `samples_per_label` voxel indices per label > 0 present in segmentation (z, y, x),
    drawn without replacement with a fixed seed, sorted in memory order."""
    rng = np.random.default_rng(seed)
    flat = segmentation.ravel()
    locations: dict[str, list[list[int]]] = {}
    for label in range(1, int(segmentation.max(initial=0)) + 1):
        indices = np.flatnonzero(flat == label)  # 1-D int64: 3x smaller than argwhere's coordinates
        if indices.size == 0:
            continue
        if indices.size > samples_per_label:
            indices = np.sort(rng.choice(indices, samples_per_label, replace=False))
        locations[str(label)] = np.stack(np.unravel_index(indices, segmentation.shape), axis=1).tolist()
    return locations


def preprocess_case(image: np.ndarray, segmentation: np.ndarray | None, geometry: Geometry, *,
                    transpose_forward: Sequence[int], target_spacing: Sequence[float],
                    normalization: Sequence[str], use_mask_for_norm: Sequence[bool],
                    intensity_stats: Mapping[Any, Any], is_2d_config: bool = False,
                    case_id: str = "") -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Bring one case into a configuration's grid.

    image: (C, z, y, x) as read; segmentation: (z, y, x) integer labels or None (inference).
    target_spacing: (3,) mm in transposed order (plans.json `spacing`), see `target_spacing_for`.
    Returns data float32 (C, z', y', x'), segmentation int16 (z', y', x') with -1 outside the nonzero
    region (None when none was given), and the CaseProperties (source_signature left empty).
    """
    permutation = _check_permutation(transpose_forward)
    image_t = image.transpose(0, *(1 + a for a in permutation))
    segmentation_t = None if segmentation is None else segmentation.transpose(permutation)
    spacing_t = [float(geometry.spacing_zyx[a]) for a in permutation]

    cropped_image, cropped_seg, box_t = crop_to_nonzero(image_t, segmentation_t)
    data = np.array(cropped_image, dtype=np.float32, order="C")  # own copy, normalized in place
    mask = cropped_seg >= 0 if any(use_mask_for_norm) else None
    data = normalize(data, normalization, use_mask_for_norm, intensity_stats, mask, out=data)
    del mask

    target = target_spacing_for(spacing_t, target_spacing, is_2d_config)
    new_shape = new_shape_for(data.shape[1:], spacing_t, target)
    separate_axis = separate_axis_for(spacing_t, target)
    cropped_shape_t = data.shape[1:]
    data = resample_image(data, new_shape, separate_axis)
    seg = None if segmentation is None else resample_segmentation(cropped_seg, new_shape, separate_axis)

    backward = [int(a) for a in np.argsort(permutation)]
    properties = CaseProperties(
        case_id=case_id,
        original_geometry=geometry,
        transpose_forward=permutation,
        crop_box=[list(box_t[backward[axis]]) for axis in range(3)],
        shape_after_crop=[int(cropped_shape_t[backward[axis]]) for axis in range(3)],
        shape_after_resampling=[int(n) for n in new_shape],
        spacing_after_resampling=target,
        foreground_locations={} if seg is None else sample_foreground_locations(seg),
    )
    return data, seg, properties


def restore_to_original(array: np.ndarray, properties: CaseProperties, *, is_segmentation: bool) -> np.ndarray:
    """Put a prediction made in the preprocessed grid back onto the original image grid.

    array: segmentation (z', y', x') integer, or probabilities/logits (K, z', y', x') with class 0 =
    background, in the preprocessed (transposed, cropped, resampled) grid.
    Returns the segmentation as int16 (z, y, x) with 0 outside the crop box, or float32 (K, z, y, x)
    with background 1 and other classes 0 outside the crop box, in the original shape and order.
    Probabilities are resampled one class at a time (linear, nearest slice along the coarse axis)
    straight into the output, so memory is the output plus one cropped class.
    """
    permutation = list(properties.transpose_forward)
    geometry = properties.original_geometry
    spatial = array.shape if is_segmentation else array.shape[1:]
    if list(spatial) != list(properties.shape_after_resampling) or array.ndim != (3 if is_segmentation else 4):
        kind = "(z, y, x) segmentation" if is_segmentation else "(K, z, y, x) probabilities"
        raise ValueError(f"case {properties.case_id}: expected a {kind} of spatial shape "
                         f"{properties.shape_after_resampling}, got {list(array.shape)}")
    cropped_shape_t = [properties.shape_after_crop[a] for a in permutation]
    crop_t = tuple(slice(*properties.crop_box[a]) for a in permutation)
    original_spacing_t = [geometry.spacing_zyx[a] for a in permutation]
    separate_axis = separate_axis_for(properties.spacing_after_resampling, original_spacing_t)

    if is_segmentation:
        out = np.zeros(geometry.shape, dtype=np.int16)
        labels = array.astype(np.int16, copy=False)  # argmax gives int64: 4x the memory per label pass
        out.transpose(permutation)[crop_t] = resample_segmentation(labels, cropped_shape_t, separate_axis)
        return out
    out = np.zeros((array.shape[0], *geometry.shape), dtype=np.float32)
    out_t = out.transpose(0, *(1 + a for a in permutation))  # a view: writes land in `out`
    out_t[0] = 1.0  # everything outside the crop box is background
    for k in range(array.shape[0]):
        out_t[(k, *crop_t)] = resample_probabilities(array[k:k + 1], cropped_shape_t, separate_axis)[0]
    return out
