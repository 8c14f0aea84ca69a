"""What every training case must be, checked wherever its files are read.

An image must be readable (`autoseg.io` also refuses empty files and, from the header, images too
large to read), have the channels dataset.json's `modality` names, hold only finite values and be
what the dataset holds: a 3D volume (or a 4D file of channels), or a 2D picture in a dataset of
pictures. Its label map must be readable, integer, hold only dataset.json's label values and lie on
the image's grid (shape, spacing, origin, direction).

`autoseg check` lists every problem of every case (`image_problems`, `label_problems`); the fingerprint
pass and preprocessing read each case with `read_case`, which stops at the case's first problem with
a one-line DatasetError naming the file, before anything is computed or written from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoseg.dataset import Case, Dataset
from autoseg.errors import DatasetError
from autoseg.io import NATURAL_IMAGE_ENDINGS, Geometry, read_image, read_segmentation


@dataclass(frozen=True)
class CaseRequirements:
    """What dataset.json demands of every case; plain values, so worker processes can receive it."""

    num_channels: int  # entries of dataset.json `modality`
    labels: tuple[int, ...]  # the label values of dataset.json `labels`, background 0 included
    pictures: bool  # a dataset of 2D pictures (.png, .jpg, ...); otherwise of 3D volumes

    @classmethod
    def of(cls, dataset: Dataset) -> "CaseRequirements":
        return cls(dataset.num_channels, tuple(sorted(dataset.labels)), dataset.file_ending in NATURAL_IMAGE_ENDINGS)


def image_problems(image: np.ndarray, geometry: Geometry, requirements: CaseRequirements) -> list[str]:
    """Every problem of an image as read (float32 (C, z, y, x) and its geometry), one line each."""
    problems = []
    if problem := _dimensionality_problem("image", geometry, requirements):
        problems.append(problem)
    if image.shape[0] != requirements.num_channels:
        problems.append(f"{image.shape[0]} channels, but dataset.json 'modality' names {requirements.num_channels}")
    if not_finite := _count_not_finite(image):
        problems.append(f"{not_finite} NaN or inf voxels")
    return problems


def label_problems(segmentation: np.ndarray, label_geometry: Geometry, image_geometry: Geometry | None,
                   requirements: CaseRequirements) -> list[str]:
    """Every problem of a label map as read (int16 (z, y, x) and its geometry), one line each;
    image_geometry: its image's, None when the image could not be read."""
    problems = []
    if problem := _dimensionality_problem("label map", label_geometry, requirements):
        problems.append(problem)
    if unknown := unknown_label_values(segmentation, requirements.labels):
        problems.append(f"label values {unknown} not in dataset.json labels {list(requirements.labels)}")
    if image_geometry is not None and (difference := label_geometry.agrees_with(image_geometry)):
        problems.append(f"label does not match its image (label's != image's): {difference}")
    return problems


def read_case(case: Case, requirements: CaseRequirements) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
    """(image float32 (C, z, y, x), its geometry, label map int16 (z, y, x) or None) of a case that
    meets `requirements`; its first problem raises a DatasetError (ImageReadError for an unreadable
    file) naming the file."""
    image, geometry = read_image(case.image_files, case.pixel_spacing)
    _raise_first(case.image_files[0], image_problems(image, geometry, requirements))
    if case.label_file is None:
        return image, geometry, None
    segmentation, label_geometry = read_segmentation(case.label_file, case.pixel_spacing)
    _raise_first(case.label_file, label_problems(segmentation, label_geometry, geometry, requirements))
    return image, geometry, segmentation


def unknown_label_values(segmentation: np.ndarray, labels: tuple[int, ...]) -> list[int]:
    """The values in `segmentation` that are not in `labels`, sorted (negative ones included)."""
    if segmentation.size == 0:
        return []
    allowed = set(labels)
    if set(range(int(segmentation.min()), int(segmentation.max()) + 1)) <= allowed:
        return []  # the usual case, decided without sorting the voxels
    return sorted(set(np.unique(segmentation).tolist()) - allowed)


def _dimensionality_problem(what: str, geometry: Geometry, requirements: CaseRequirements) -> str | None:
    # A 2D slice among volumes would be read as a picture (one slice of 999 mm) and resampled into a
    # smear of hundreds of slices; a volume among pictures has no place in a 2D plan.
    if geometry.is_natural_2d and not requirements.pictures:
        return f"2D {what} in a dataset of 3D volumes"
    if not geometry.is_natural_2d and requirements.pictures:
        return f"3D {what} in a dataset of 2D pictures"
    return None


def _count_not_finite(array: np.ndarray) -> int:
    """NaN and inf values in `array`; a finite array is recognized from its minimum and maximum alone
    (NaN and inf always reach one of them), without an array of flags."""
    if array.size == 0:
        return 0
    with np.errstate(invalid="ignore"):
        if np.isfinite(array.min()) and np.isfinite(array.max()):
            return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _raise_first(file, problems: list[str]) -> None:
    if problems:
        raise DatasetError(f"{file}: {problems[0]}; `autoseg check` lists every problem of the dataset")
