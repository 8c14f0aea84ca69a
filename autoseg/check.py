"""`autoseg check`: find every problem in a dataset, naming case and file; never stop at the first."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.dataset import Case, Dataset
from autoseg.errors import ImageReadError
from autoseg.io import read_image, read_segmentation


@dataclass(frozen=True)
class Problem:
    case_id: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.case_id}: {self.file}: {self.message}"


def check_case(case: Case, dataset: Dataset) -> list[Problem]:
    """All problems of one training case (image and label read once each)."""
    problems: list[Problem] = []

    def add(file, message):
        problems.append(Problem(case.case_id, str(file), message))

    image = geometry = None
    missing = [f for f in case.image_files if not f.is_file()]
    for file in missing:
        add(file, "image file not found")
    if not missing:
        try:
            image, geometry = read_image(case.image_files, case.pixel_spacing)
        except ImageReadError as e:
            add(case.image_files[0], str(e).split(": ", 1)[-1])
    if image is not None:
        if image.shape[0] != dataset.num_channels:
            add(case.image_files[0], f"{image.shape[0]} channels, but dataset.json 'modality' names {dataset.num_channels}")
        if not np.all(np.isfinite(image)):
            add(case.image_files[0], f"{int(np.size(image) - np.isfinite(image).sum())} NaN or inf voxels")
    if case.label_file is None:
        return problems
    if not case.label_file.is_file():
        add(case.label_file, "label file not found")
        return problems
    try:
        label, label_geometry = read_segmentation(case.label_file, case.pixel_spacing)
    except ImageReadError as e:
        add(case.label_file, str(e).split(": ", 1)[-1])
        return problems
    unknown = sorted(set(np.unique(label).tolist()) - set(dataset.labels))
    if unknown:
        add(case.label_file, f"label values {unknown} not in dataset.json labels {sorted(dataset.labels)}")
    if geometry is not None and (difference := label_geometry.agrees_with(geometry)):
        add(case.label_file, f"label does not match its image (label's != image's): {difference}")
    return problems


def dataset_json_problems(dataset: Dataset) -> list[Problem]:
    """Problems of dataset.json's entries: unusable entries (from `load_dataset(strict=False)`) and a
    `numTraining` that disagrees with the number of training entries."""
    json_file = str(dataset.root / "dataset.json")
    problems = [Problem(entry.case_id, json_file, f"{entry.where}: {entry.message}") for entry in dataset.invalid_entries]
    listed = len(dataset.cases) + len({e.index for e in dataset.invalid_entries if e.kind == "training"})
    if dataset.declared_num_training is not None and dataset.declared_num_training != listed:
        problems.append(Problem("dataset", json_file, f"numTraining is {dataset.declared_num_training}, "
                                                      f"but {listed} training cases are listed"))
    return problems


def check_dataset(dataset: Dataset, workers: int = 1, on_case_done=None) -> list[Problem]:
    """Check dataset.json's entries and every training case; `on_case_done()` is called after each case (progress).

    Pass a dataset loaded with `load_dataset(folder, strict=False)` to have unusable entries reported
    here rather than raised by the loader.
    """
    def run(case):
        result = check_case(case, dataset)
        if on_case_done:
            on_case_done()
        return result

    problems = dataset_json_problems(dataset)
    # Reading is I/O and decompression bound (SimpleITK releases the GIL): threads suffice.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        per_case = list(pool.map(run, dataset.cases))
    problems += [p for case_problems in per_case for p in case_problems]
    for case in dataset.test_cases:
        for file in case.image_files:
            if not Path(file).is_file():
                problems.append(Problem(case.case_id, str(file), "test image file not found"))
    return problems
