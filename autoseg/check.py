"""`autoseg check`: find every problem in a dataset, naming case and file; never stop at the first."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from autoseg.case_validation import CaseRequirements, image_problems, label_problems
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


def check_case(case: Case, requirements: CaseRequirements) -> list[Problem]:
    """All problems of one training case (image and label read once each; see `autoseg.case_validation`)."""
    problems: list[Problem] = []

    def add(file, messages):
        problems.extend(Problem(case.case_id, str(file), message) for message in messages)

    geometry = None
    missing = [f for f in case.image_files if not f.exists()]  # a file, or a folder of DICOM series
    for file in missing:
        add(file, ["image file not found"])
    if not missing:
        try:
            image, geometry = read_image(case.image_files, case.pixel_spacing)
            add(case.image_files[0], image_problems(image, geometry, requirements))
        except ImageReadError as e:
            add(case.image_files[0], [_without_path(e)])
    if case.label_file is None:
        return problems
    if not case.label_file.is_file():
        add(case.label_file, ["label file not found"])
        return problems
    try:
        label, label_geometry = read_segmentation(case.label_file, case.pixel_spacing)
    except ImageReadError as e:
        add(case.label_file, [_without_path(e)])
        return problems
    add(case.label_file, label_problems(label, label_geometry, geometry, requirements))
    return problems


def _without_path(error: ImageReadError) -> str:
    """An io error's message without its leading "path: " (the problem names the file already)."""
    return str(error).split(": ", 1)[-1]


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
    requirements = CaseRequirements.of(dataset)

    def run(case):
        result = check_case(case, requirements)
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
            if not Path(file).exists():
                problems.append(Problem(case.case_id, str(file), "test image file not found"))
    return problems
