"""Largest-connected-component postprocessing, chosen on cross-validation predictions.

Connectivity is full (26 in 3D, 8 in 2D): voxels touching only at an edge or a corner belong to the
same component. Removed voxels become background (0). Everything works on segmentations in their
original geometry, as read by `autoseg.io`.

The decision (`determine_postprocessing`, same rule as nnU-Net) compares mean Dice over cases:
  step 1: keep the largest component of the whole foreground (all labels > 0 together) if that
          strictly improves the foreground-mean Dice and lowers no label's mean Dice;
  step 2: on top of step 1's result, for each label: keep the largest component of that label if
          that strictly improves the label's mean Dice. Such a removal only turns voxels of that
          label into background, so no other label's mask (or Dice) can change: the "no other
          label gets worse" condition holds by construction, and the labels can be decided
          independently of each other.
Dice uses the conventions of `autoseg.metrics` (both masks empty -> 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.artifacts import build_versioned, load_artifact, write_json
from autoseg.errors import AutosegError
from autoseg.evaluation import find_segmentations, map_cases, pair_segmentations, read_pair
from autoseg.metrics import overlap_metrics
from autoseg.workspace import TaskResults

POSTPROCESSING_SCHEMA_VERSION = 1
# cc3d connectivity per number of spatial dimensions: every neighbour, corners included.
FULL_CONNECTIVITY = {2: 8, 3: 26}


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest fully connected component of a 2D or 3D boolean mask (bool, same shape).

    An empty mask gives an empty mask; among equally large components the first found is kept.
    """
    import cc3d

    if mask.ndim not in FULL_CONNECTIVITY:
        raise ValueError(f"largest_component needs a 2D or 3D mask, got {mask.ndim}D")
    mask = np.ascontiguousarray(mask, dtype=bool)
    components = cc3d.connected_components(mask, connectivity=FULL_CONNECTIVITY[mask.ndim])
    label = largest_label(components, mask)
    return components == label if label else np.zeros(mask.shape, dtype=bool)


def largest_label(components: np.ndarray, mask: np.ndarray) -> int:
    """The most frequent nonzero value of a component map (0 when `mask`, its nonzero voxels, is empty).

    Sizes come from one bincount over the mask's voxels only (a prediction is mostly background, and
    bincount would otherwise widen every voxel to int64), whatever the number of components.
    """
    sizes = np.bincount(components[mask])
    return int(np.argmax(sizes)) if sizes.size > 1 else 0


def keep_largest_foreground_component(segmentation: np.ndarray) -> np.ndarray:
    """Zero every labelled voxel (> 0) outside the largest component of the whole foreground."""
    return _zero_outside_largest_component(segmentation, segmentation > 0)


def keep_largest_component_of_label(segmentation: np.ndarray, label: int) -> np.ndarray:
    """Zero the voxels of `label` outside that label's largest component; other labels are untouched."""
    return _zero_outside_largest_component(segmentation, segmentation == label)


def _zero_outside_largest_component(segmentation: np.ndarray, mask: np.ndarray) -> np.ndarray:
    removed = mask & ~largest_component(mask)
    return np.where(removed, 0, segmentation).astype(segmentation.dtype, copy=False)


@dataclass
class PostprocessingDecision:
    """Which largest-component steps to apply, and the mean Dice numbers they were chosen on.

    Dice dictionaries map a label value (as str) to its mean Dice over the cases.
    """

    whole_foreground: bool = False
    per_label: list[int] = field(default_factory=list)
    foreground_dice_before: float | None = None
    foreground_dice_after: float | None = None
    label_dice_before: dict[str, float] = field(default_factory=dict)
    label_dice_after: dict[str, float] = field(default_factory=dict)
    schema_version: int = POSTPROCESSING_SCHEMA_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "postprocessing decision") -> "PostprocessingDecision":
        return build_versioned(data, cls._from_fields, expected_version=POSTPROCESSING_SCHEMA_VERSION, where=where,
                               what="postprocessing decision", what_to_do="re-run the postprocessing decision")

    @classmethod
    def _from_fields(cls, data: dict) -> "PostprocessingDecision":
        return cls(whole_foreground=bool(data["whole_foreground"]),
                   per_label=[int(v) for v in data["per_label"]],
                   foreground_dice_before=data.get("foreground_dice_before"),
                   foreground_dice_after=data.get("foreground_dice_after"),
                   label_dice_before=dict(data.get("label_dice_before", {})),
                   label_dice_after=dict(data.get("label_dice_after", {})))

    def save(self, path: str | Path) -> Path:
        """Write the decision to the file `path` (atomically); a task's is `TaskResults.postprocessing_file`."""
        return write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "PostprocessingDecision":
        """Read a decision file, or the one of the task whose results folder is `path`."""
        path = Path(path)
        return load_artifact(TaskResults(path).postprocessing_file if path.is_dir() else path, cls.from_json)


def apply_postprocessing(segmentation: np.ndarray, decision: PostprocessingDecision) -> np.ndarray:
    """The segmentation after the decision's steps (whole foreground first, then each label)."""
    if decision.whole_foreground:
        segmentation = keep_largest_foreground_component(segmentation)
    for label in decision.per_label:
        segmentation = keep_largest_component_of_label(segmentation, label)
    return segmentation


# ---------------------------------------------------------------------------------------------- decision


def _dice(prediction: np.ndarray, reference: np.ndarray, label: int) -> float:
    return overlap_metrics(prediction == label, reference == label)["Dice"]


def _candidate_dice(job: tuple[Path, Path, list[int]]) -> dict[str, dict[int, float]]:
    """Dice per label of one case for every candidate the decision may pick.

    "raw"/"foreground": without / with the whole-foreground step; "raw+label"/"foreground+label":
    the Dice of each label after also keeping that label's largest component.
    """
    prediction_file, reference_file, labels = job
    raw, reference, _ = read_pair(prediction_file, reference_file)
    foreground = keep_largest_foreground_component(raw)
    dice = {}
    for name, base in (("raw", raw), ("foreground", foreground)):
        dice[name] = {label: _dice(base, reference, label) for label in labels}
        dice[f"{name}+label"] = {label: _dice(keep_largest_component_of_label(base, label), reference, label)
                                 for label in labels}
    return dice


def _mean_over_cases(per_case: list[dict[str, dict[int, float]]], candidate: str,
                     labels: list[int]) -> dict[int, float]:
    return {label: float(np.mean([case[candidate][label] for case in per_case])) for label in labels}


def determine_postprocessing(prediction_folder: str | Path, reference_folder: str | Path,
                             labels: Mapping[int, str] | Sequence[int], workers: int = 1) -> PostprocessingDecision:
    """Choose the largest-component steps that improve the mean Dice of `prediction_folder`.

    labels: the label values (a {value: name} mapping or a list); background 0 is ignored.
    Every reference case needs a prediction of the same name and geometry. Each case is read once.
    """
    foreground_labels = [int(v) for v in sorted(labels) if int(v) != 0]
    if not foreground_labels:
        raise AutosegError("determine_postprocessing: no foreground label given")
    jobs = [(p, r, foreground_labels) for _, p, r in pair_segmentations(prediction_folder, reference_folder)]
    per_case = map_cases(_candidate_dice, jobs, workers)

    before = _mean_over_cases(per_case, "raw", foreground_labels)
    with_foreground_step = _mean_over_cases(per_case, "foreground", foreground_labels)
    whole_foreground = (np.mean(list(with_foreground_step.values())) > np.mean(list(before.values()))
                        and all(with_foreground_step[v] >= before[v] for v in foreground_labels))

    base = "foreground" if whole_foreground else "raw"
    current = with_foreground_step if whole_foreground else before
    with_label_step = _mean_over_cases(per_case, f"{base}+label", foreground_labels)
    per_label = [v for v in foreground_labels if with_label_step[v] > current[v]]
    after = {v: with_label_step[v] if v in per_label else current[v] for v in foreground_labels}

    return PostprocessingDecision(
        whole_foreground=bool(whole_foreground), per_label=per_label,
        foreground_dice_before=float(np.mean(list(before.values()))),
        foreground_dice_after=float(np.mean(list(after.values()))),
        label_dice_before={str(v): d for v, d in before.items()},
        label_dice_after={str(v): d for v, d in after.items()})


# ---------------------------------------------------------------------------------------------- folders


def _postprocess_file(job: tuple[Path, Path, PostprocessingDecision]) -> Path:
    from autoseg.io import read_segmentation, write_segmentation

    source, target, decision = job
    segmentation, geometry = read_segmentation(source)
    return write_segmentation(apply_postprocessing(segmentation, decision), geometry, target)


def postprocess_folder(in_folder: str | Path, out_folder: str | Path, decision: PostprocessingDecision,
                       workers: int = 1) -> list[Path]:
    """Apply `decision` to every segmentation in `in_folder`; same file names and geometry in `out_folder`."""
    in_folder, out_folder = Path(in_folder), Path(out_folder)
    if in_folder.resolve() == out_folder.resolve():
        raise AutosegError(f"{out_folder}: the output folder must differ from the input folder")
    jobs = [(path, out_folder / path.name, decision) for path in find_segmentations(in_folder).values()]
    return map_cases(_postprocess_file, jobs, workers)
