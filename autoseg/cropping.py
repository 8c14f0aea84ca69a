"""Crop to the nonzero bounding box of all channels (as nnU-Net does before everything else)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes

# Label value given to background voxels outside the nonzero region: ignored by sampling and
# masked normalization, turned back into background before training.
OUTSIDE_NONZERO = -1


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """(C, z, y, x) -> bool (z, y, x): any channel nonzero (holes not filled)."""
    mask = image[0] != 0
    for channel in image[1:]:
        mask |= channel != 0
    return mask


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """[[start, stop), ...] per axis of the True voxels; the whole array when there are none."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, mask.shape[axis]])
    return box


def crop_to_nonzero(image: np.ndarray, segmentation: np.ndarray | None = None):
    """Crop image (C, z, y, x) and segmentation (z, y, x) to the nonzero box of the image.

    Returns (cropped_image, cropped_segmentation, box). In the cropped segmentation, background
    voxels outside the nonzero mask are set to OUTSIDE_NONZERO. Without a segmentation, one is
    made holding only that marker (0 inside, -1 outside), for masked normalization at inference.
    """
    mask = nonzero_mask(image)
    box = bounding_box(mask)
    slices = tuple(slice(a, b) for a, b in box)
    cropped_image = image[(slice(None),) + slices]
    # Holes lie inside the box by definition, so filling only the cropped mask is equivalent and cheaper.
    cropped_mask = binary_fill_holes(mask[slices])
    if segmentation is None:
        cropped_seg = np.zeros(cropped_mask.shape, dtype=np.int16)
    else:
        cropped_seg = segmentation[slices].astype(np.int16, copy=True)
    cropped_seg[(cropped_seg == 0) & ~cropped_mask] = OUTSIDE_NONZERO
    return cropped_image, cropped_seg, box
