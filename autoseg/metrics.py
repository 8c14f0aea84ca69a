"""Segmentation metrics of one case: overlap and surface distances per label or region.

Overlap metrics (per label, or per region = union of labels):
    TP, FP, FN (voxels), n_pred = TP+FP, n_ref = TP+FN,
    Dice = 2TP / (2TP+FP+FN), IoU (Jaccard) = TP / (TP+FP+FN), VOE = 1 - IoU,
    RVD = (n_pred - n_ref) / n_ref, precision = TP / n_pred, recall = TP / n_ref.
Surface metrics (millimetres, using the voxel spacing passed in; `autoseg.evaluation` passes the
reference's, or for pictures, whose files hold no pixel size, the `pixel_spacing` given to
`evaluate_folder`, else 1 x 1: then they are pixels):
    The surface of a mask is its voxels that a binary erosion with full connectivity (26 in 3D,
    8 in 2D; the image border counts as outside) removes. For every surface voxel of one mask we
    take the distance to the nearest surface voxel of the other (voxel centres,
    `scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)`); the two directed sets are
    then pooled:
    ASSD_mm = mean of the union of both directed distance sets,
    HD95_mm = 95th percentile (numpy's linear interpolation) of the union of both directed sets,
    MSSD_mm = maximum symmetric surface distance = maximum of the union (the Hausdorff distance).
    Distances are computed inside the bounding box of both masks grown by one voxel: every surface
    voxel lies in that box, so the result is exact, and large volumes stay fast.
    Axes of length 1 are dropped first, so a single-slice (2D) image gets in-plane contours.

Empty-mask conventions:
    both empty      -> Dice = IoU = precision = recall = 1, VOE = RVD = 0, surface distances 0.
    exactly one     -> Dice = IoU = 0, VOE = 1, surface distances NaN; precision (empty prediction)
                       and recall (empty reference) are 0; RVD is NaN when the reference is empty.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

# Percentile of the pooled surface distances reported as HD95.
HAUSDORFF_PERCENTILE = 95.0
# Voxels added around the masks' bounding box so the erosion there equals the full-volume erosion.
SURFACE_BOX_MARGIN = 1

OVERLAP_METRICS = ("Dice", "IoU", "VOE", "RVD", "precision", "recall")
SURFACE_METRICS = ("ASSD_mm", "HD95_mm", "MSSD_mm")
COUNT_METRICS = ("TP", "FP", "FN", "n_pred", "n_ref")
METRIC_NAMES = OVERLAP_METRICS + SURFACE_METRICS + COUNT_METRICS

LabelOrRegion = int | tuple[int, ...]


def label_key(label_or_region: LabelOrRegion) -> str:
    """The key of a label ("1") or region ("1+2") in metric dictionaries and files."""
    if isinstance(label_or_region, (tuple, list)):
        return "+".join(str(int(v)) for v in label_or_region)
    return str(int(label_or_region))


def _mask_of(segmentation: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    if isinstance(label_or_region, (tuple, list)):
        return np.isin(segmentation, np.asarray(label_or_region, dtype=segmentation.dtype))
    return segmentation == label_or_region


# ---------------------------------------------------------------------------------------------- overlap


def overlap_metrics(prediction_mask: np.ndarray, reference_mask: np.ndarray) -> dict[str, float]:
    """Dice, IoU, VOE, RVD, precision, recall and voxel counts of two boolean masks of one shape."""
    tp = int(np.count_nonzero(prediction_mask & reference_mask))
    n_pred = int(np.count_nonzero(prediction_mask))
    n_ref = int(np.count_nonzero(reference_mask))
    fp, fn = n_pred - tp, n_ref - tp
    if n_pred == 0 and n_ref == 0:
        dice = iou = precision = recall = 1.0
        rvd = 0.0
    else:
        dice = 2 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_ref if n_ref else 0.0
        rvd = (n_pred - n_ref) / n_ref if n_ref else math.nan
    return {"Dice": dice, "IoU": iou, "VOE": 1.0 - iou, "RVD": rvd, "precision": precision, "recall": recall,
            "TP": tp, "FP": fp, "FN": fn, "n_pred": n_pred, "n_ref": n_ref}


# ---------------------------------------------------------------------------------------------- surface


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of a non-empty mask, grown by `margin`."""
    box = []
    for axis, size in enumerate(mask.shape):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        occupied = np.flatnonzero(np.any(mask, axis=other_axes))
        box.append(slice(max(int(occupied[0]) - margin, 0), min(int(occupied[-1]) + 1 + margin, size)))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    full_connectivity = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return mask & ~ndimage.binary_erosion(mask, structure=full_connectivity, border_value=0)


def symmetric_surface_distances_mm(prediction_mask: np.ndarray, reference_mask: np.ndarray,
                                   spacing: Sequence[float]) -> np.ndarray:
    """Pooled directed surface distances (mm, float64, 1D): prediction->reference then reference->prediction.

    Both masks must be non-empty; `spacing` has one value (mm) per array axis.
    """
    from scipy import ndimage

    box = _bounding_box(prediction_mask | reference_mask, SURFACE_BOX_MARGIN)
    prediction_surface = _surface(prediction_mask[box])
    reference_surface = _surface(reference_mask[box])
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing)[prediction_surface]
    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing)[reference_surface]
    return np.concatenate([to_reference, to_prediction])


def surface_metrics(prediction_mask: np.ndarray, reference_mask: np.ndarray,
                    spacing: Sequence[float]) -> dict[str, float]:
    """ASSD, HD95 and maximum symmetric surface distance in mm, with the empty-mask conventions."""
    pred_empty, ref_empty = not prediction_mask.any(), not reference_mask.any()
    if pred_empty and ref_empty:
        return dict.fromkeys(SURFACE_METRICS, 0.0)
    if pred_empty or ref_empty:
        return dict.fromkeys(SURFACE_METRICS, math.nan)
    distances = symmetric_surface_distances_mm(prediction_mask, reference_mask, spacing)
    return {"ASSD_mm": float(distances.mean()),
            "HD95_mm": float(np.percentile(distances, HAUSDORFF_PERCENTILE)),
            "MSSD_mm": float(distances.max())}


def _drop_single_voxel_axes(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, ...], list[float]]:
    """Shape and spacing without axes of length 1 (a single slice has no surface across it)."""
    kept = [axis for axis, size in enumerate(shape) if size > 1] or [len(shape) - 1]
    return tuple(shape[a] for a in kept), [float(spacing[a]) for a in kept]


def case_metrics(prediction: np.ndarray, reference: np.ndarray, labels_or_regions: Iterable[LabelOrRegion],
                 spacing_zyx: Sequence[float]) -> dict[str, dict[str, float]]:
    """All metrics of one case.

    prediction, reference: integer label maps of one shape ((z, y, x) or (y, x)).
    labels_or_regions: label values (int) and/or regions (tuple of label values, scored as their union).
    spacing_zyx: voxel spacing in mm, one value per array axis.
    Returns {label_key: {metric: value}} with METRIC_NAMES as metrics.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    if len(spacing_zyx) != prediction.ndim:
        raise ValueError(f"spacing {list(spacing_zyx)} has {len(spacing_zyx)} values for a {prediction.ndim}D array")
    shape, spacing = _drop_single_voxel_axes(prediction.shape, spacing_zyx)
    prediction, reference = prediction.reshape(shape), reference.reshape(shape)
    results = {}
    for label_or_region in labels_or_regions:
        prediction_mask = _mask_of(prediction, label_or_region)
        reference_mask = _mask_of(reference, label_or_region)
        metrics = overlap_metrics(prediction_mask, reference_mask)
        metrics.update(surface_metrics(prediction_mask, reference_mask, spacing))
        results[label_key(label_or_region)] = {name: metrics[name] for name in METRIC_NAMES}
    return results
