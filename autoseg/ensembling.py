"""Probability files and the ensembling of several prediction folders.

Probability file format (one case = two files next to each other):
    CASE.npz   numpy archive (no pickles) holding one array `probabilities`: float16 or float32,
               shape (K, z, y, x), the softmax probability of each of the K classes in the case's
               ORIGINAL geometry (the grid of the input image), summing to 1 over K per voxel.
    CASE.json  {"schema_version": 1, "geometry": Geometry.to_json(), "labels": [l_0, ..., l_K-1]}:
               the geometry to write the segmentation with, and the label value of each channel.
Ensembling several models (e.g. two configurations) averages these probabilities per case (float32)
and takes the argmax, so the members must share the case set, geometry and labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from autoseg.artifacts import read_json, write_atomic, write_json
from autoseg.errors import AutosegError
from autoseg.io import Geometry

PROBABILITIES_SCHEMA_VERSION = 1
PROBABILITIES_ARRAY_NAME = "probabilities"


def _without_ending(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".npz", ".json") else path


def save_probabilities(path_without_ending: str | Path, probabilities: np.ndarray, geometry: Geometry,
                       labels: Sequence[int] | None = None) -> tuple[Path, Path]:
    """Write `PATH.npz` (compressed, atomic) and its `PATH.json` sidecar; returns both paths.

    probabilities: float16/float32 (K, z, y, x) on `geometry`'s grid; labels: label value of each
    channel (default 0..K-1).
    """
    probabilities = np.asarray(probabilities)
    if probabilities.dtype not in (np.float16, np.float32):
        probabilities = probabilities.astype(np.float32)
    if probabilities.ndim != 4 or tuple(probabilities.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"probabilities of shape {probabilities.shape} do not fit (K, *{list(geometry.shape)})")
    labels = list(range(probabilities.shape[0])) if labels is None else [int(v) for v in labels]
    if len(labels) != probabilities.shape[0]:
        raise ValueError(f"{len(labels)} labels for {probabilities.shape[0]} probability channels")
    base = _without_ending(path_without_ending)

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temporary name
            np.savez_compressed(f, **{PROBABILITIES_ARRAY_NAME: probabilities})

    npz = write_atomic(base.with_name(base.name + ".npz"), dump)
    sidecar = write_json(base.with_name(base.name + ".json"), {"schema_version": PROBABILITIES_SCHEMA_VERSION,
                                                               "geometry": geometry.to_json(), "labels": labels})
    return npz, sidecar


_save_probabilities = save_probabilities  # ensemble_folders has a flag of the same name


def load_probability_sidecar(path: str | Path) -> tuple[Geometry, list[int]]:
    """(geometry, channel labels) from `PATH.json` (`path` with or without ending)."""
    base = _without_ending(path)
    sidecar = base.with_name(base.name + ".json")
    data = read_json(sidecar)
    if data.get("schema_version") != PROBABILITIES_SCHEMA_VERSION:
        raise AutosegError(f"{sidecar}: schema_version {data.get('schema_version')!r}, "
                           f"expected {PROBABILITIES_SCHEMA_VERSION}")
    try:
        return Geometry.from_json(data["geometry"]), [int(v) for v in data["labels"]]
    except (KeyError, TypeError, ValueError) as e:
        raise AutosegError(f"{sidecar}: malformed probability sidecar ({e})") from None


def load_probabilities(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """(probabilities (K, z, y, x) as stored, geometry) of `PATH.npz` + `PATH.json`."""
    base = _without_ending(path)
    npz = base.with_name(base.name + ".npz")
    geometry, labels = load_probability_sidecar(base)
    try:
        with np.load(npz, allow_pickle=False) as archive:
            probabilities = archive[PROBABILITIES_ARRAY_NAME]
    except FileNotFoundError:
        raise AutosegError(f"{npz}: file not found") from None
    except (KeyError, ValueError, OSError) as e:
        raise AutosegError(f"{npz}: not a probability file ({e})") from None
    if probabilities.shape != (len(labels), *geometry.shape):
        raise AutosegError(f"{npz}: probabilities of shape {list(probabilities.shape)} do not match the sidecar "
                           f"({len(labels)} labels, geometry shape {list(geometry.shape)})")
    return probabilities, geometry


def average_probabilities(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Voxel-wise mean (float32) of equally shaped arrays; an iterator is consumed one array at a time."""
    total, count = None, 0
    for array in arrays:
        if total is None:
            total = np.array(array, dtype=np.float32)
        elif array.shape != total.shape:
            raise ValueError(f"cannot average arrays of shapes {list(total.shape)} and {list(array.shape)}")
        else:
            total += array
        count += 1
    if total is None:
        raise ValueError("average_probabilities needs at least one array")
    total /= count
    return total


def probabilities_to_segmentation(probabilities: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """int16 (z, y, x) label map: the label of the most probable channel (ties -> first channel)."""
    return np.asarray(labels, dtype=np.int16)[np.argmax(probabilities, axis=0)]


def _probability_cases(folder: Path) -> set[str]:
    if not folder.is_dir():
        raise AutosegError(f"{folder}: folder not found")
    return {p.name[: -len(".npz")] for p in folder.glob("*.npz") if not p.name.startswith(".")}


def common_cases(input_folders: Sequence[str | Path]) -> list[str]:
    """Sorted case ids present in every folder; any case missing from some folder is an error."""
    cases = {Path(f): _probability_cases(Path(f)) for f in input_folders}
    every_case = set().union(*cases.values())
    problems = [f"{folder} lacks {', '.join(sorted(every_case - found))}"
                for folder, found in cases.items() if every_case - found]
    if problems:
        raise AutosegError("ensembling needs the same cases in every folder: " + "; ".join(problems))
    if not every_case:
        raise AutosegError(f"no probability files (*.npz) in {', '.join(map(str, input_folders))}")
    return sorted(every_case)


def _member_probabilities(case_id: str, input_folders: Sequence[Path], geometry: Geometry, labels: list[int]):
    """Yield each folder's probabilities of a case, checking it matches the first member."""
    for folder in input_folders:
        member_geometry, member_labels = load_probability_sidecar(folder / case_id)
        difference = member_geometry.agrees_with(geometry)
        if difference or member_labels != labels:
            raise AutosegError(f"{folder / case_id}.npz: does not match {input_folders[0] / case_id}.npz "
                               f"({difference or f'labels {member_labels} != {labels}'})")
        yield load_probabilities(folder / case_id)[0]


def ensemble_folders(input_folders: Sequence[str | Path], output_folder: str | Path,
                     output_ending: str = ".nii.gz", save_probabilities: bool = False) -> list[str]:
    """Average the probability files of several folders case by case and write the argmax segmentations.

    Only one case (a float32 accumulator plus one member) is in memory at a time. Writes
    `CASE<output_ending>` into `output_folder` (plus `CASE.npz`/`CASE.json` of the averaged probabilities
    when `save_probabilities`) and returns the written segmentation paths, sorted by case.
    """
    from autoseg.io import write_segmentation

    input_folders = [Path(f) for f in input_folders]
    if not input_folders:
        raise AutosegError("ensembling needs at least one input folder")
    output_folder = Path(output_folder)
    written = []
    for case_id in common_cases(input_folders):
        geometry, labels = load_probability_sidecar(input_folders[0] / case_id)
        mean = average_probabilities(_member_probabilities(case_id, input_folders, geometry, labels))
        written.append(str(write_segmentation(probabilities_to_segmentation(mean, labels), geometry,
                                              output_folder / f"{case_id}{output_ending}")))
        if save_probabilities:
            _save_probabilities(output_folder / case_id, mean, geometry, labels)
    return written
