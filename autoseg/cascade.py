"""The 3d_lowres -> 3d_cascade_fullres cascade.

The low-res model's segmentation is brought onto the full-res preprocessed grid and appended to the
image as one one-hot channel per foreground label. For training, every case needs a low-res
prediction made by a model that never saw it: the low-res fold validation writes them to
`results/TASK/3d_lowres/predicted_next_stage/CASE.npy` (int16, full-res grid). At inference the
low-res model runs first, without the user doing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.errors import AutosegError

PREDICTED_NEXT_STAGE = "predicted_next_stage"


def segmentation_to_grid(segmentation: np.ndarray, properties) -> np.ndarray:
    """A (z, y, x) label map in a case's original grid -> the grid of its preprocessed arrays."""
    from autoseg.preprocessing.resampling import resample_segmentation, separate_axis_for

    permutation = list(properties.transpose_forward)
    transposed = segmentation.transpose(permutation)
    crop = tuple(slice(*properties.crop_box[axis]) for axis in permutation)
    original_spacing = [properties.original_geometry.spacing_zyx[axis] for axis in permutation]
    separate_axis = separate_axis_for(original_spacing, properties.spacing_after_resampling)
    return resample_segmentation(np.ascontiguousarray(transposed[crop]), properties.shape_after_resampling,
                                 separate_axis).astype(np.int16)


def one_hot(segmentation: np.ndarray, foreground_labels: Sequence[int]) -> np.ndarray:
    """(z, y, x) labels -> float32 (L, z, y, x), one channel per foreground label."""
    return np.stack([segmentation == label for label in foreground_labels]).astype(np.float32)


def foreground_labels_of(plans) -> list[int]:
    return sorted(int(v) for v in plans.labels if int(v) != 0)


def predictions_folder(results_folder: Path, previous_stage: str) -> Path:
    return Path(results_folder) / previous_stage / PREDICTED_NEXT_STAGE


def save_for_next_stage(segmentation: np.ndarray, next_stage_properties, folder: Path, case_id: str) -> Path:
    """Called by the low-res fold validation for each held-out case."""
    from autoseg.artifacts import save_npy

    return save_npy(Path(folder) / f"{case_id}.npy", segmentation_to_grid(segmentation, next_stage_properties))


def check_previous_stage_ready(folder: Path, case_ids: Sequence[str], splits: list[dict], previous_stage: str) -> None:
    """A clear error naming the low-res folds still to train when any case lacks its prediction."""
    missing = sorted(c for c in case_ids if not (Path(folder) / f"{c}.npy").is_file())
    if not missing:
        return
    folds = sorted({index for index, split in enumerate(splits) for c in missing if c in split["val"]})
    raise AutosegError(f"cascade training needs {previous_stage} predictions for every case; {len(missing)} are "
                       f"missing (e.g. {missing[0]}) in {folder}. Train {previous_stage} fold(s) "
                       f"{', '.join(map(str, folds)) or '?'} first: `autoseg train {previous_stage} --fold N`")


def append_stored_previous_stage(data: np.ndarray, folder: Path, case_id: str, foreground_labels) -> np.ndarray:
    previous = np.load(Path(folder) / f"{case_id}.npy")
    return np.concatenate([data, one_hot(previous, foreground_labels)])


def append_predicted_previous_stage(model, data: np.ndarray, properties, image, geometry, settings) -> np.ndarray:
    """Run the low-res model on the raw image and append its one-hot segmentation to `data`."""
    from dataclasses import replace

    from autoseg.inference.predictor import predict_image

    low_res = predict_image(model.previous_stage, image, geometry,
                            replace(settings, save_probabilities=False, postprocess=False))
    previous = segmentation_to_grid(low_res.segmentation, properties)
    return np.concatenate([data, one_hot(previous, foreground_labels_of(model.plans))])


# ---------------------------------------------------------------------------------------- training


class StackedChannels:
    """Image channels (memory-mapped) plus the one-hot previous stage, sliced lazily per patch.

    Behaves like a (C + L, z, y, x) array for the patch sampler's reads, so nothing is loaded whole.
    """

    def __init__(self, data: np.ndarray, previous: np.ndarray, foreground_labels: Sequence[int]):
        self.data, self.previous, self.labels = data, previous, list(foreground_labels)
        self.shape = (data.shape[0] + len(self.labels), *data.shape[1:])
        self.ndim = data.ndim
        self.dtype = np.float32

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        channels, spatial = (slice(None), key[1:]) if key[0] is Ellipsis else (key[0], key[1:])
        stacked = np.concatenate([np.asarray(self.data[(slice(None), *spatial)], dtype=np.float32),
                                  one_hot(np.asarray(self.previous[spatial]), self.labels)])
        return stacked[channels]


class CascadeCases:
    """A patch-sampler case source that appends the previous stage's one-hot segmentation."""

    def __init__(self, base, predictions: Path, foreground_labels: Sequence[int]):
        self.base, self.predictions, self.labels = base, Path(predictions), list(foreground_labels)

    def arrays(self, case_id: str):
        data, seg = self.base.arrays(case_id)
        previous = np.load(self.predictions / f"{case_id}.npy", mmap_mode="r")
        return StackedChannels(data, previous, self.labels), seg

    def foreground_locations(self, case_id: str):
        return self.base.foreground_locations(case_id)
