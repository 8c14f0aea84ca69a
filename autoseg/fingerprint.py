"""Dataset fingerprint: what the planner needs to know about a dataset, extracted once.

`extract_fingerprint(dataset)` reads every case (a few at a time), crops it to its nonzero box,
and records spacing, shapes, class voxel counts and a seeded sample of foreground intensities.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from autoseg.artifacts import build_versioned, load_artifact, write_json
from autoseg.case_validation import CaseRequirements, read_case
from autoseg.dataset import Case, Dataset
from autoseg.dicom import files_of
from autoseg.errors import AutosegError
from autoseg.io import is_picture_spacing
from autoseg.processes import process_pool

# 2: dataset-level percentiles of spacings and cropped shapes (`spacing_percentiles`, `cropped_shape_percentiles`).
FINGERPRINT_SCHEMA_VERSION = 2
# Foreground voxels sampled per case and channel for the intensity statistics.
INTENSITY_SAMPLES_PER_CASE = 10_000
INTENSITY_SAMPLE_SEED = 1234
# Percentiles of spacings and cropped shapes recorded for the dataset (0 and 100: min and max).
SHAPE_AND_SPACING_PERCENTILES = (0, 10, 50, 90, 100)


@dataclass
class ChannelIntensity:
    """Foreground intensity statistics of one channel over the whole dataset."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float

    @classmethod
    def of(cls, values: np.ndarray) -> "ChannelIntensity":
        if values.size == 0:
            return cls(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        values = values.astype(np.float64)
        low, median, high = np.percentile(values, [0.5, 50.0, 99.5])
        return cls(float(values.mean()), float(values.std()), float(median), float(values.min()),
                   float(values.max()), float(low), float(high))


@dataclass
class CaseFingerprint:
    case_id: str
    spacing: list[float]  # (z, y, x) mm
    original_shape: list[int]  # (z, y, x) voxels
    cropped_shape: list[int]  # after cropping to the nonzero box
    crop_box: list[list[int]]  # [[start, stop), ...] per axis
    class_voxel_counts: dict[str, int]  # label value (as str) -> voxels, in the uncropped label map

    @property
    def relative_size_after_cropping(self) -> float:
        return float(np.prod(self.cropped_shape) / np.prod(self.original_shape))


@dataclass
class Fingerprint:
    """Everything the planner reads. Spacings and shapes are (z, y, x).

    Reference fingerprints built from published statistics have no per-case entries (`cases` is
    empty); the dataset-level fields are then the published medians.
    """

    dataset_name: str
    modality: dict[str, str]  # channel index -> name
    labels: dict[str, str]  # label value -> name
    num_cases: int
    median_spacing: list[float]
    spacing_percentile_10: list[float]
    median_cropped_shape: list[float]
    median_relative_size_after_cropping: float
    intensity_per_channel: dict[str, ChannelIntensity]
    mean_class_fraction: dict[str, float] = field(default_factory=dict)  # label -> mean share of voxels
    # Percentile (str, see SHAPE_AND_SPACING_PERCENTILES) -> (z, y, x) value over the cases; reference
    # fingerprints hold only what was published (e.g. "0", "50", "100": min, median, max).
    spacing_percentiles: dict[str, list[float]] = field(default_factory=dict)
    cropped_shape_percentiles: dict[str, list[float]] = field(default_factory=dict)
    cases: list[CaseFingerprint] = field(default_factory=list)
    dataset_signature: str = ""  # detects added, removed or modified files
    source: str = "autoseg fingerprint"
    schema_version: int = FINGERPRINT_SCHEMA_VERSION

    @property
    def is_2d_images(self) -> bool:
        return is_picture_spacing(self.median_spacing) and self.median_cropped_shape[0] == 1

    @property
    def label_warnings(self) -> list[str]:
        """What in the label maps keeps a model from learning, one line each: no foreground in any case,
        or a foreground label in none. [] without per-case entries (a reference fingerprint)."""
        if not self.cases:
            return []
        present = {label for case in self.cases for label in case.class_voxel_counts if label != "0"}
        if not present:
            return [f"the label maps of all {len(self.cases)} training cases are empty (background only): "
                    "a model trained on them learns to predict nothing"]
        return [f"label {label} ({name!r}) is in no training case's label map: a model cannot learn it"
                for label, name in self.labels.items() if label != "0" and label not in present]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "fingerprint") -> "Fingerprint":
        return build_versioned(data, cls._from_fields, expected_version=FINGERPRINT_SCHEMA_VERSION, where=where,
                               what="fingerprint", what_to_do="re-run `autoseg fingerprint`")

    @classmethod
    def _from_fields(cls, data: dict) -> "Fingerprint":
        data = dict(data)
        data["intensity_per_channel"] = {k: ChannelIntensity(**v) for k, v in data["intensity_per_channel"].items()}
        data["cases"] = [CaseFingerprint(**c) for c in data.get("cases", [])]
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Fingerprint":
        return load_artifact(path, cls.from_json)


def dataset_signature(dataset: Dataset) -> str:
    """Changes when dataset.json or any listed file is added, removed, resized or touched."""
    digest = hashlib.sha256((dataset.root / "dataset.json").read_bytes())
    for case in dataset.cases:
        for path in [file for path in case.image_files for file in files_of(path)] + [case.label_file]:
            if path is None:
                continue
            try:
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
            except FileNotFoundError:
                digest.update(f"{path.name}:missing;".encode())
    return digest.hexdigest()[:16]


def analyze_case(case: Case, requirements: CaseRequirements) -> tuple[CaseFingerprint, np.ndarray]:
    """Fingerprint of one case and its foreground intensity sample, float32 (C, n <= 10,000). A case
    that does not meet `requirements` raises a DatasetError naming the file (see `read_case`)."""
    from autoseg.cropping import bounding_box, nonzero_mask

    image, geometry, segmentation = read_case(case, requirements)
    counts = np.bincount(segmentation.ravel())  # labels are 0..K: read_case refuses any other value
    # Only the box matters here (holes never change it), so the costly hole filling is skipped.
    box = bounding_box(nonzero_mask(image))
    slices = tuple(slice(a, b) for a, b in box)
    cropped_image, cropped_seg = image[(slice(None),) + slices], segmentation[slices]
    foreground = np.flatnonzero(cropped_seg > 0)
    rng = np.random.default_rng(INTENSITY_SAMPLE_SEED)
    if foreground.size > INTENSITY_SAMPLES_PER_CASE:
        foreground = rng.choice(foreground, INTENSITY_SAMPLES_PER_CASE, replace=False)
    sample = cropped_image.reshape(cropped_image.shape[0], -1)[:, foreground]
    fingerprint = CaseFingerprint(
        case_id=case.case_id,
        spacing=list(geometry.spacing_zyx),
        original_shape=list(geometry.shape),
        cropped_shape=list(cropped_seg.shape),
        crop_box=box,
        class_voxel_counts={str(v): int(c) for v, c in enumerate(counts) if c > 0},
    )
    return fingerprint, sample.astype(np.float32)


def axis_percentiles(values: np.ndarray) -> dict[str, list[float]]:
    """(n_cases, 3) values -> {"0": [z, y, x] minimum, "10": ..., "100": maximum} (numpy's linear percentiles)."""
    return {str(q): [float(v) for v in np.percentile(values, q, axis=0)] for q in SHAPE_AND_SPACING_PERCENTILES}


def summarize(dataset: Dataset, cases: list[CaseFingerprint], samples: list[np.ndarray],
              signature: str) -> Fingerprint:
    """Dataset-level fingerprint from the per-case fingerprints and foreground samples (C, n) of every case."""
    spacings = np.array([c.spacing for c in cases], dtype=np.float64)
    shapes = np.array([c.cropped_shape for c in cases], dtype=np.float64)
    intensities = {}
    for channel in range(dataset.num_channels):
        values = np.concatenate([s[channel] for s in samples]) if samples else np.zeros(0)
        intensities[str(channel)] = ChannelIntensity.of(values)
    fractions = {}
    for label in dataset.labels:
        shares = [c.class_voxel_counts.get(str(label), 0) / np.prod(c.original_shape) for c in cases]
        fractions[str(label)] = float(np.mean(shares))
    return Fingerprint(
        dataset_name=dataset.name,
        modality={str(k): v for k, v in dataset.modality.items()},
        labels={str(k): v for k, v in dataset.labels.items()},
        num_cases=len(cases),
        median_spacing=np.median(spacings, axis=0).tolist(),
        spacing_percentile_10=np.percentile(spacings, 10, axis=0).tolist(),
        median_cropped_shape=np.median(shapes, axis=0).tolist(),
        median_relative_size_after_cropping=float(np.median([c.relative_size_after_cropping for c in cases])),
        intensity_per_channel=intensities,
        mean_class_fraction=fractions,
        spacing_percentiles=axis_percentiles(spacings),
        cropped_shape_percentiles=axis_percentiles(shapes),
        cases=cases,
        dataset_signature=signature,
    )


def extract_fingerprint(dataset: Dataset, workers: int = 1,
                        on_case_done: Callable[[str], None] | None = None) -> Fingerprint:
    """Analyse every training case, `workers` processes at a time (memory: about `workers` cases)."""
    signature = dataset_signature(dataset)
    results = []
    analyze = functools.partial(analyze_case, requirements=CaseRequirements.of(dataset))
    for result in _map_cases(analyze, dataset.cases, workers):
        results.append(result)
        if on_case_done:
            on_case_done(result[0].case_id)
    cases = [r[0] for r in results]
    samples = [r[1] for r in results]
    return summarize(dataset, cases, samples, signature)


def _map_cases(function, cases: list[Case], workers: int) -> Iterable:
    """Results in case order; each worker holds one case at a time, so memory is about `workers` cases
    (the results, a fingerprint and a 10,000-voxel sample per case, are small). A worker's own error
    (e.g. an ImageReadError naming the file) comes back as itself; a killed worker as an AutosegError."""
    if workers <= 1:
        yield from map(function, cases)
        return
    from concurrent.futures.process import BrokenProcessPool

    try:
        with process_pool(workers) as pool:
            yield from pool.map(function, cases)
    except BrokenProcessPool:
        raise AutosegError(f"a fingerprint worker process died (killed, most likely out of memory) with "
                           f"{workers} workers; rerun with fewer (-j)") from None


def load_or_extract(dataset: Dataset, path: Path, workers: int = 1, on_case_done=None) -> tuple[Fingerprint, bool]:
    """Reuse `path` when it was made from the same files; otherwise recompute. Returns (fingerprint, reused)."""
    if path.is_file():
        try:
            existing = Fingerprint.load(path)
            if existing.dataset_signature == dataset_signature(dataset):
                return existing, True
        except AutosegError:
            pass  # stale schema or damaged file: recompute
    fingerprint = extract_fingerprint(dataset, workers, on_case_done)
    fingerprint.save(path)
    return fingerprint, False
