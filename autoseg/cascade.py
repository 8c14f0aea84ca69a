"""The 3d_lowres -> 3d_cascade_fullres cascade.

The low-res model's segmentation is brought onto the full-res preprocessed grid and appended to the
image as one one-hot channel per foreground label, so the cascade network reads
`len(modality) + number of foreground labels` channels.

Training: every case needs a low-res prediction made by a model that never saw it. The low-res
fold validation (`autoseg train 3d_lowres --fold N`) writes one for each held-out case to
`TaskResults.predicted_next_stage_folder("3d_lowres")`/CASE.npy (int16 label map, the next stage's
preprocessed grid); after every fold all training cases have one. Cascade training refuses to
start until they all exist, naming the low-res folds still to train. The cascade's own fold
validation reads the same files.
Inference: the low-res model runs first on the raw image, without the user doing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.errors import WorkspaceError
from autoseg.workspace import TaskResults


def segmentation_to_grid(segmentation: np.ndarray, properties) -> np.ndarray:
    """An int (z, y, x) label map in a case's original grid -> int16 on the grid of its preprocessed
    arrays (`properties`: that case's CaseProperties): transposed, cropped, resampled."""
    from autoseg.preprocessing.resampling import resample_segmentation, separate_axis_for

    permutation = list(properties.transpose_forward)
    transposed = segmentation.transpose(permutation)
    crop = tuple(slice(*properties.crop_box[axis]) for axis in permutation)
    original_spacing = [properties.original_geometry.spacing_zyx[axis] for axis in permutation]
    separate_axis = separate_axis_for(original_spacing, properties.spacing_after_resampling)
    return resample_segmentation(np.ascontiguousarray(transposed[crop]), properties.shape_after_resampling,
                                 separate_axis).astype(np.int16)


def one_hot(segmentation: np.ndarray, foreground_labels: Sequence[int]) -> np.ndarray:
    """(z, y, x) labels -> float32 (L, z, y, x), one 0/1 channel per foreground label, in that order."""
    return np.stack([segmentation == label for label in foreground_labels]).astype(np.float32)


def foreground_labels_of(plans) -> list[int]:
    return sorted(int(v) for v in plans.labels if int(v) != 0)


def save_for_next_stage(segmentation: np.ndarray, next_stage_properties, folder: Path, case_id: str) -> Path:
    """Store a held-out case's low-res segmentation (original grid) on the next stage's grid.

    Called by the low-res fold validation for each of its cases; `next_stage_properties` are the
    case's CaseProperties in the next stage's preprocessed folder.
    """
    from autoseg.artifacts import save_npy

    return save_npy(Path(folder) / f"{case_id}.npy", segmentation_to_grid(segmentation, next_stage_properties))


def _read_splits(results: TaskResults) -> list[dict]:
    path = results.splits_file
    if not path.is_file():
        return []
    from autoseg.artifacts import read_json

    splits = read_json(path)
    return splits if isinstance(splits, list) else []


def check_previous_stage_ready(results: TaskResults, previous_stage: str, case_ids: Sequence[str]) -> None:
    """Raise a WorkspaceError naming the `previous_stage` folds to train when a case lacks its prediction.

    A missing case is attributed to the fold of the task's splits that validates it.
    """
    folder = results.predicted_next_stage_folder(previous_stage)
    missing = sorted(c for c in case_ids if not (folder / f"{c}.npy").is_file())
    if not missing:
        return
    splits = _read_splits(results)
    folds = sorted({index for index, split in enumerate(splits) for c in missing if c in split.get("val", [])})
    in_no_fold = [c for c in missing if not any(c in split.get("val", []) for split in splits)]
    examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    message = (f"cascade training needs a {previous_stage} prediction of every training case, made by a model "
               f"that never saw it; {len(missing)} of {len(case_ids)} are missing from {folder} ({examples}).")
    if len(folds) == 1:
        message += f" Train {previous_stage} fold {folds[0]} first: `autoseg train {previous_stage} --fold {folds[0]}`"
    elif folds:
        message += (f" Train {previous_stage} folds {', '.join(map(str, folds))} first: "
                    f"`autoseg train {previous_stage} --fold N` for N in {', '.join(map(str, folds))}")
    if folds:
        message += " (its fold validation writes them; for a fold trained with --no-validate, add --resume)."
    if in_no_fold:
        message += (f" Case(s) {', '.join(in_no_fold[:3])} are in no fold's validation set of "
                    f"{results.splits_file}, so no {previous_stage} model left them out: add them to a fold.")
    raise WorkspaceError(message)


def previous_stage_inputs(plans, configuration_name: str, results: TaskResults, case_ids: Sequence[str]) -> dict:
    """Keyword arguments of `make_training_loaders` for `configuration_name`.

    {} for a configuration without previous stage; for a cascade stage, the folder of the previous
    stage's predictions and the foreground labels, after checking (`check_previous_stage_ready`) that
    every case of `case_ids` has one.
    """
    configuration = plans.configuration(configuration_name)
    if not configuration.previous_stage:
        return {}
    check_previous_stage_ready(results, configuration.previous_stage, case_ids)
    return {"previous_stage_predictions": results.predicted_next_stage_folder(configuration.previous_stage),
            "foreground_labels": foreground_labels_of(plans)}


def _load_stored(folder: Path, case_id: str, spatial_shape: Sequence[int], mmap: bool) -> np.ndarray:
    path = Path(folder) / f"{case_id}.npy"
    if not path.is_file():
        raise WorkspaceError(f"{path}: missing; train the previous stage's fold that validates {case_id} first")
    previous = np.load(path, mmap_mode="r" if mmap else None)
    if tuple(previous.shape) != tuple(spatial_shape):
        raise WorkspaceError(f"{path}: shape {list(previous.shape)} differs from the preprocessed case "
                             f"{list(spatial_shape)}; it is stale (preprocessed again since?): re-run the previous "
                             "stage's validation")
    return previous


def append_stored_previous_stage(data: np.ndarray, folder: Path, case_id: str, foreground_labels) -> np.ndarray:
    """data (C, z, y, x) + the stored previous-stage one-hot channels -> float32 (C + L, z, y, x)."""
    previous = _load_stored(folder, case_id, data.shape[1:], mmap=False)
    return np.concatenate([np.asarray(data, dtype=np.float32), one_hot(previous, foreground_labels)])


# ---------------------------------------------------------------------------------------- training


class StackedChannels:
    """Image channels (memory-mapped) plus the one-hot previous stage, sliced lazily per patch.

    Behaves like a float32 (C + L, z, y, x) array for the patch sampler's reads
    (`array[..., z0:z1, y0:y1, x0:x1]`), so nothing is loaded whole.
    """

    def __init__(self, data: np.ndarray, previous: np.ndarray, foreground_labels: Sequence[int]):
        self.data, self.previous, self.labels = data, previous, list(foreground_labels)
        self.shape = (data.shape[0] + len(self.labels), *data.shape[1:])
        self.ndim = data.ndim
        self.dtype = np.dtype(np.float32)

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
        previous = _load_stored(self.predictions, case_id, data.shape[1:], mmap=True)
        return StackedChannels(data, previous, self.labels), seg

    def foreground_locations(self, case_id: str):
        return self.base.foreground_locations(case_id)
