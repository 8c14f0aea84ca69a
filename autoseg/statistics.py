"""Measurements of a segmentation: per label, its size, the input's intensities inside it and where it lies.

    case = case_statistics("case_01", segmentation, image, geometry, {1: "liver", 2: "tumour"}, ["CT"])
    table = StatisticsTable.from_cases([case], label_names, channel_names)
    table.save(folder)                         # statistics.json (versioned) and statistics.csv

Conventions (docs/contracts.md repeats them):
- volume_ml: voxel count x the product of the (z, y, x) spacing in mm, / 1000; pictures (one slice of
  a 2D image) have no volume but an area, area_mm2 (pixel count x the (y, x) pixel size).
- intensity: per input channel, mean / median / standard deviation (population, ddof=0) of the
  image's own values (as read from the file, before any normalization) over the label's voxels;
  null for a label with no voxels.
- bounding box: in physical coordinates, mm, ITK's convention (x, y, z; origin + direction x
  (index x spacing), LPS for DICOM and for NIfTI read through ITK): the smallest box aligned with the
  physical axes that holds every voxel of the label, each voxel taken as its full extent (its centre
  +/- half a spacing). Pictures: (x, y) of the pixel grid in mm. Null for a label with no voxels.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.artifacts import build_versioned, load_artifact, write_atomic, write_json
from autoseg.io import Geometry

STATISTICS_SCHEMA_VERSION = 1
STATISTICS_JSON = "statistics.json"
STATISTICS_CSV = "statistics.csv"
INTENSITY_MEASURES = ("mean", "median", "std")


@dataclass
class LabelStatistics:
    label: int
    name: str
    voxels: int
    volume_ml: float | None  # None for pictures (see area_mm2)
    area_mm2: float | None  # pictures only
    intensity: dict[str, dict[str, float | None]]  # channel name -> mean / median / std
    bbox_min_mm: list[float] | None  # (x, y, z) physical mm ((x, y) for pictures); None without voxels
    bbox_max_mm: list[float] | None


@dataclass
class CaseStatistics:
    case_id: str
    labels: list[LabelStatistics]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "CaseStatistics":
        return cls(str(data["case_id"]), [LabelStatistics(**entry) for entry in data["labels"]])


def case_statistics(case_id: str, segmentation: np.ndarray, image: np.ndarray, geometry: Geometry,
                    label_names: Mapping[int, str], channel_names: Sequence[str]) -> CaseStatistics:
    """Statistics of every foreground label of `label_names` (and any other label found) in one case.

    segmentation: integer (z, y, x); image: (C, z, y, x) in the file's own intensities, on the same grid;
    geometry: that grid's (the output's). One pass over the labelled voxels (sorted by label), so a
    case with a hundred labels costs about as much as one with one.
    """
    if segmentation.shape != image.shape[1:]:
        raise ValueError(f"segmentation {segmentation.shape} and image {image.shape[1:]} differ in shape")
    names = [str(c) for c in channel_names] if len(channel_names) == image.shape[0] else \
        [str(c) for c in range(image.shape[0])]
    voxels_of = _voxels_per_label(segmentation)
    values = sorted({int(v) for v in label_names if int(v) != 0} | set(voxels_of))
    channels = image.reshape(image.shape[0], -1)
    labels = []
    for value in values:
        flat_indices = voxels_of.get(value, np.empty(0, np.int64))
        labels.append(_label_statistics(value, str(label_names.get(value, value)), flat_indices, channels,
                                        geometry, names))
    return CaseStatistics(case_id, labels)


def _voxels_per_label(segmentation: np.ndarray) -> dict[int, np.ndarray]:
    """label value -> flat indices of its voxels, for every nonzero label present."""
    flat = segmentation.ravel()
    labelled = np.flatnonzero(flat)
    labelled = labelled[np.argsort(flat[labelled], kind="stable")]
    sorted_values = flat[labelled]
    starts = np.flatnonzero(np.diff(sorted_values, prepend=sorted_values[:1] - 1)) if labelled.size else []
    stops = [*starts[1:], labelled.size]
    return {int(sorted_values[a]): labelled[a:b] for a, b in zip(starts, stops)}


def _label_statistics(value: int, name: str, flat_indices: np.ndarray, channels: np.ndarray, geometry: Geometry,
                      channel_names: list[str]) -> LabelStatistics:
    count = int(flat_indices.size)
    spacing = geometry.spacing_zyx
    picture = geometry.is_natural_2d
    intensity = {}
    for channel_name, channel in zip(channel_names, channels):
        inside = channel[flat_indices].astype(np.float64)
        intensity[channel_name] = {m: None for m in INTENSITY_MEASURES} if not count else {
            "mean": float(inside.mean()), "median": float(np.median(inside)), "std": float(inside.std())}
    box = _physical_box(flat_indices, geometry) if count else None
    return LabelStatistics(
        label=value, name=name, voxels=count,
        volume_ml=None if picture else count * math.prod(spacing) / 1000.0,
        area_mm2=count * spacing[1] * spacing[2] if picture else None,
        intensity=intensity,
        bbox_min_mm=None if box is None else box[0], bbox_max_mm=None if box is None else box[1])


def _physical_box(flat_indices: np.ndarray, geometry: Geometry) -> tuple[list[float], list[float]]:
    """(min, max) physical corners of the voxels' extent, see the module docstring."""
    zyx = np.unravel_index(flat_indices, geometry.shape)
    low = np.array([axis.min() for axis in zyx], np.float64)[::-1] - 0.5  # continuous (x, y, z) index
    high = np.array([axis.max() for axis in zyx], np.float64)[::-1] + 0.5
    spacing_xyz = np.asarray(geometry.spacing_zyx[::-1], np.float64)
    if geometry.is_natural_2d:  # pixel grid: (x, y) mm, no physical placement
        return (low[:2] * spacing_xyz[:2]).tolist(), (high[:2] * spacing_xyz[:2]).tolist()
    corners = np.array([[(low, high)[bit >> axis & 1][axis] for axis in range(3)] for bit in range(8)])
    direction = np.asarray(geometry.direction, np.float64).reshape(3, 3)
    points = np.asarray(geometry.origin_xyz) + (corners * spacing_xyz) @ direction.T
    return points.min(axis=0).tolist(), points.max(axis=0).tolist()


@dataclass
class StatisticsTable:
    """Statistics of a folder of cases: statistics.json (this, versioned) and statistics.csv."""

    label_names: dict[str, str]  # label value -> name
    channel_names: list[str]
    cases: list[CaseStatistics]
    schema_version: int = STATISTICS_SCHEMA_VERSION

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "label_names": self.label_names,
                "channel_names": self.channel_names, "cases": [case.to_json() for case in self.cases]}

    @classmethod
    def from_json(cls, data: dict, where: str = "statistics") -> "StatisticsTable":
        return build_versioned(data, cls._from_fields, expected_version=STATISTICS_SCHEMA_VERSION, where=where,
                               what="statistics", what_to_do="predict again with --statistics")

    @classmethod
    def _from_fields(cls, data: dict) -> "StatisticsTable":
        return cls(dict(data["label_names"]), list(data["channel_names"]),
                   [CaseStatistics.from_json(case) for case in data["cases"]])

    @classmethod
    def load(cls, path: str | Path) -> "StatisticsTable":
        return load_artifact(path, cls.from_json, STATISTICS_JSON)

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """statistics.json and statistics.csv (one row per case and label) in `folder`, each written atomically."""
        folder = Path(folder)
        json_path = write_json(folder / STATISTICS_JSON, self.to_json())
        return json_path, write_atomic(folder / STATISTICS_CSV, self._write_csv)

    def _write_csv(self, path: str) -> None:
        intensity_columns = [f"{channel}_{m}" for channel in self.channel_names for m in INTENSITY_MEASURES]
        box_columns = [f"bbox_{end}_{axis}_mm" for end in ("min", "max") for axis in "xyz"]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case_id", "label", "name", "voxels", "volume_ml", "area_mm2", *intensity_columns,
                             *box_columns])
            for case in self.cases:
                for entry in case.labels:
                    intensities = [entry.intensity.get(channel, {}).get(m) for channel in self.channel_names
                                   for m in INTENSITY_MEASURES]
                    box = [*_padded(entry.bbox_min_mm), *_padded(entry.bbox_max_mm)]
                    writer.writerow([case.case_id, entry.label, entry.name, entry.voxels,
                                     *(_cell(v) for v in (entry.volume_ml, entry.area_mm2, *intensities, *box))])


def _padded(point: list[float] | None) -> list[float | None]:
    """(x, y, z) of a box corner; None where it has no value (no voxels, or a picture's z)."""
    values = list(point or [])
    return values + [None] * (3 - len(values))


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))
