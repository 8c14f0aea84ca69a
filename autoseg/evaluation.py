"""The evaluation of a whole prediction folder against reference segmentations, and its summary.

Each prediction is paired with the reference file of the same name and scored with
`autoseg.metrics.case_metrics` (definitions and empty-mask conventions there).
NaN values are left out of the means (nanmean) and the number of cases left out is recorded per
label and metric (`EvaluationSummary.excluded_cases`).
Only foreground labels are evaluated; `foreground_mean` is the mean over the foreground labels
(not the regions) of the per-label means.

Regions: a dataset.json may name unions of labels to be scored as one mask, e.g. BraTS's
    "regions": {"whole tumour": [1, 2, 3], "tumour core": [2, 3]}
(`regions_of_dataset`); they are reported under the key "1+2+3" next to the labels.

Which labels: the caller names them; `autoseg evaluate` told neither labels nor task scores the labels
found in the files (`labels_found`), named by the planned task when they are all its labels
(`labels_to_score`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.artifacts import build_versioned, load_artifact, read_json, write_atomic, write_json
from autoseg.case_validation import unknown_label_values
from autoseg.errors import AutosegError
from autoseg.io import SUPPORTED_ENDINGS, file_ending
from autoseg.metrics import METRIC_NAMES, LabelOrRegion, case_metrics, label_key
from autoseg.processes import process_pool

EVALUATION_SCHEMA_VERSION = 1
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_CHART = "summary.png"  # `autoseg evaluate`'s Dice chart: a picture, but never a segmentation


# ---------------------------------------------------------------------------------------------- folders


def find_segmentations(folder: str | Path) -> dict[str, Path]:
    """{case_id: file} for every segmentation file (any supported ending) directly in `folder`, but the
    evaluation's own summary.png."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AutosegError(f"{folder}: folder not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        ending = file_ending(path)
        if not path.is_file() or path.name.startswith(".") or ending not in SUPPORTED_ENDINGS \
                or path.name == SUMMARY_CHART:
            continue
        case_id = path.name[: -len(ending)]
        if case_id in files:
            raise AutosegError(f"{folder}: case {case_id!r} has two files ({files[case_id].name}, {path.name})")
        files[case_id] = path
    return files


def pair_segmentations(prediction_folder: str | Path, reference_folder: str | Path,
                       case_ids: Sequence[str] | None = None) -> list[tuple[str, Path, Path]]:
    """[(case_id, prediction_file, reference_file)] sorted by case, paired by file name without ending.

    Without `case_ids` every reference case needs a prediction and every prediction a reference.
    """
    predictions = find_segmentations(prediction_folder)
    references = find_segmentations(reference_folder)
    wanted = sorted(case_ids) if case_ids is not None else sorted(references)
    missing_predictions = [c for c in wanted if c not in predictions]
    if missing_predictions:
        raise AutosegError(f"{prediction_folder}: no prediction for case(s) {', '.join(missing_predictions)}")
    missing_references = [c for c in (wanted if case_ids is not None else predictions) if c not in references]
    if missing_references:
        raise AutosegError(f"{reference_folder}: no reference segmentation for case(s) "
                           f"{', '.join(sorted(missing_references))}")
    if not wanted:
        raise AutosegError(f"{reference_folder}: no segmentation files to evaluate")
    return [(c, predictions[c], references[c]) for c in wanted]


def read_pair(prediction_file: Path, reference_file: Path, pixel_spacing: Sequence[float] | None = None):
    """(prediction, reference, reference geometry); a geometry mismatch is an error naming the prediction.

    pixel_spacing: (y, x) mm of picture pixels (see `autoseg.io.read_segmentation`); volumes ignore it.
    """
    from autoseg.io import read_segmentation

    prediction, prediction_geometry = read_segmentation(prediction_file, pixel_spacing)
    reference, reference_geometry = read_segmentation(reference_file, pixel_spacing)
    difference = prediction_geometry.agrees_with(reference_geometry)
    if difference:
        raise AutosegError(f"{prediction_file}: geometry differs from the reference {reference_file} ({difference})")
    return prediction, reference, reference_geometry


def map_cases(function, items: Sequence, workers: int) -> list:
    """`[function(item) for item in items]`, in `workers` processes when workers > 1 (`process_pool`:
    `function` must be importable, a module-level function).

    A failing worker re-raises its original exception here.
    """
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with process_pool(min(workers, len(items))) as pool:
        return list(pool.map(function, items))


def _evaluate_pair(job: tuple[str, Path, Path, list[LabelOrRegion], tuple[float, float] | None,
                               tuple[int, ...] | None]) -> "CaseEvaluation":
    case_id, prediction_file, reference_file, labels_or_regions, pixel_spacing, allowed_labels = job
    prediction, reference, geometry = read_pair(prediction_file, reference_file, pixel_spacing)
    if allowed_labels is not None and (unknown := unknown_label_values(prediction, allowed_labels)):
        raise AutosegError(f"{prediction_file}: predicted label(s) {unknown} that the task does not have "
                           f"(its labels: {list(allowed_labels)})")
    metrics = case_metrics(prediction, reference, labels_or_regions, geometry.spacing_zyx)
    return CaseEvaluation(case_id, str(prediction_file), str(reference_file), metrics)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def regions_of_dataset(dataset_folder: str | Path, labels: Mapping[int, str] | None = None
                       ) -> dict[str, tuple[int, ...]]:
    """{region name: label values} from the optional "regions" entry of `dataset_folder/dataset.json`.

    {} when the dataset defines none. Every value must be a foreground label of `labels` (when given).
    """
    path = Path(dataset_folder) / "dataset.json"
    regions = read_json(path).get("regions") or {}
    if not isinstance(regions, dict):
        raise AutosegError(f"{path}: 'regions' must map a name to a list of labels, e.g. "
                           '{"whole tumour": [1, 2, 3]}')
    known = None if labels is None else {int(v) for v in labels if int(v) != 0}
    parsed = {}
    for name, members in regions.items():
        if not isinstance(members, list) or not members or not all(str(v).isdigit() for v in members):
            raise AutosegError(f"{path}: region {name!r}: expected a non-empty list of label numbers, got {members!r}")
        values = tuple(int(v) for v in members)
        if len(set(values)) < 2:
            raise AutosegError(f"{path}: region {name!r} needs at least two labels (a single label is scored "
                               "on its own anyway)")
        unknown = [v for v in values if known is not None and v not in known]
        if unknown:
            raise AutosegError(f"{path}: region {name!r} names label(s) {unknown} that are not foreground labels "
                               f"({sorted(known)})")
        parsed[str(name)] = values
    return parsed


def evaluate_folder(prediction_folder: str | Path, reference_folder: str | Path, labels: Mapping[int, str],
                    regions: Sequence[Sequence[int]] | Mapping[str, Sequence[int]] | None = None, workers: int = 1,
                    case_ids: Sequence[str] | None = None, pixel_spacing: Sequence[float] | None = None,
                    refuse_other_labels: bool = False) -> "EvaluationSummary":
    """Evaluate every prediction against the reference file of the same name.

    labels: {label value: name} (background 0 is skipped); regions: label tuples scored as unions,
    or {name: label tuple} (e.g. from `regions_of_dataset`).
    refuse_other_labels: `labels` are all the task's labels, so a prediction holding any other value
    (a model of another task, a damaged file) is an error naming the file and the value; otherwise
    other values are not scored (the caller chose which labels to score).
    case_ids: evaluate only these cases (e.g. one fold's validation cases); default all references.
    Spacing comes from the reference file; picture files (.png, ...) hold none, so their pixels are
    `pixel_spacing` (y, x) mm (the dataset's `pixel_spacing`, when known), else 1 x 1.
    """
    pixel_spacing = tuple(float(v) for v in pixel_spacing) if pixel_spacing is not None else None
    labels = {int(value): name for value, name in labels.items()}  # dataset.json keys may be strings
    foreground = [v for v in sorted(labels) if v != 0]
    if not isinstance(regions, Mapping):  # unnamed regions are named after their labels
        regions = {"+".join(str(labels.get(int(v), v)) for v in r): r for r in (regions or [])}
    region_tuples = [tuple(int(v) for v in r) for r in regions.values()]
    labels_or_regions: list[LabelOrRegion] = [*foreground, *region_tuples]
    names = {str(v): labels[v] for v in foreground}
    names.update({label_key(r): str(name) for name, r in zip(regions, region_tuples)})

    allowed_labels = tuple(sorted({0, *labels})) if refuse_other_labels else None
    jobs = [(c, p, r, labels_or_regions, pixel_spacing, allowed_labels)
            for c, p, r in pair_segmentations(prediction_folder, reference_folder, case_ids)]
    per_case = map_cases(_evaluate_pair, jobs, workers)
    return EvaluationSummary.from_cases(per_case, names, [str(v) for v in foreground])


# ---------------------------------------------------------------------------------------------- which labels


def labels_found(prediction_folder: str | Path, reference_folder: str | Path, workers: int = 1) -> list[int]:
    """The label values other than background (0) in any prediction or reference, sorted.

    Reads every paired file once (`workers` processes at a time); unpaired files are an error, as in
    `evaluate_folder`.
    """
    pairs = pair_segmentations(prediction_folder, reference_folder)
    files = [path for _, prediction_file, reference_file in pairs for path in (prediction_file, reference_file)]
    return sorted(set().union(*map_cases(_labels_in_file, files, workers)))


def _labels_in_file(path: Path) -> set[int]:
    from autoseg.io import read_segmentation

    segmentation, _ = read_segmentation(path)
    return {int(v) for v in np.unique(segmentation) if v != 0}


@dataclass(frozen=True)
class LabelsToScore:
    labels: dict[int, str]  # label value -> name
    from_task: bool  # the task's labels, so its dataset.json regions and pixel spacing apply as well


def labels_to_score(found: Sequence[int], task_labels: Mapping[int, str] | None, where: str) -> LabelsToScore:
    """The labels to score when neither a task nor labels were named.

    found: the labels in the files (`labels_found`); task_labels: {value: name} of the task planned in
    the workspace, or None. The task's labels (all of them, named) when every label found is one of
    them; otherwise the labels found, named by their values: a task planned for other data must not
    decide what is scored in unrelated folders. where: the folders, for the error when no label
    is found and no task applies.
    """
    if task_labels is not None:
        task_foreground = {int(v) for v in task_labels if int(v) != 0}
        if set(found) <= task_foreground:
            return LabelsToScore({int(v): name for v, name in task_labels.items()}, from_task=True)
    if not found:
        raise AutosegError(f"{where}: no label other than background (0) in any file; name the labels to score "
                           "(--labels 1,2)")
    return LabelsToScore({int(v): str(v) for v in found}, from_task=False)


# ---------------------------------------------------------------------------------------------- summary


@dataclass
class CaseEvaluation:
    case_id: str
    prediction_file: str
    reference_file: str
    metrics: dict[str, dict[str, float]]  # label key -> metric -> value


def _to_json_number(value: float):
    return None if isinstance(value, float) and math.isnan(value) else value


def _from_json_number(value):
    return math.nan if value is None else value


def _numbers_to_json(table: dict) -> dict:
    return {k: _numbers_to_json(v) if isinstance(v, dict) else _to_json_number(v) for k, v in table.items()}


def _numbers_from_json(table: dict) -> dict:
    return {k: _numbers_from_json(v) if isinstance(v, dict) else _from_json_number(v) for k, v in table.items()}


@dataclass
class EvaluationSummary:
    """Metrics of a prediction folder. NaN is stored as null in JSON."""

    label_names: dict[str, str]  # label key ("1", region "1+2") -> name
    per_case: list[CaseEvaluation]
    mean: dict[str, dict[str, float]]  # label key -> metric -> nanmean over cases
    excluded_cases: dict[str, dict[str, int]]  # label key -> metric -> cases with NaN, left out of the mean
    foreground_mean: dict[str, float]  # metric -> mean over foreground labels of `mean`
    schema_version: int = EVALUATION_SCHEMA_VERSION
    foreground_labels: list[str] = field(default_factory=list)

    @classmethod
    def from_cases(cls, per_case: list[CaseEvaluation], label_names: dict[str, str],
                   foreground_labels: list[str]) -> "EvaluationSummary":
        mean, excluded = {}, {}
        for key in label_names:
            values = {m: [case.metrics[key][m] for case in per_case] for m in METRIC_NAMES}
            mean[key] = {m: _nanmean(v) for m, v in values.items()}
            excluded[key] = {m: sum(math.isnan(x) for x in v) for m, v in values.items()}
        foreground_mean = {m: _nanmean([mean[k][m] for k in foreground_labels]) for m in METRIC_NAMES}
        return cls(label_names, per_case, mean, excluded, foreground_mean, foreground_labels=foreground_labels)

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "label_names": self.label_names,
            "foreground_labels": self.foreground_labels,
            "foreground_mean": _numbers_to_json(self.foreground_mean),
            "mean": _numbers_to_json(self.mean),
            "excluded_cases": self.excluded_cases,
            "per_case": [{"case_id": c.case_id, "prediction_file": c.prediction_file,
                          "reference_file": c.reference_file, "metrics": _numbers_to_json(c.metrics)}
                         for c in self.per_case],
        }

    @classmethod
    def from_json(cls, data: dict, where: str = "evaluation summary") -> "EvaluationSummary":
        return build_versioned(data, cls._from_fields, expected_version=EVALUATION_SCHEMA_VERSION, where=where,
                               what="evaluation summary", what_to_do="re-run the evaluation")

    @classmethod
    def _from_fields(cls, data: dict) -> "EvaluationSummary":
        per_case = [CaseEvaluation(c["case_id"], c["prediction_file"], c["reference_file"],
                                   _numbers_from_json(c["metrics"])) for c in data["per_case"]]
        return cls(dict(data["label_names"]), per_case, _numbers_from_json(data["mean"]),
                   dict(data["excluded_cases"]), _numbers_from_json(data["foreground_mean"]),
                   schema_version=data["schema_version"], foreground_labels=list(data.get("foreground_labels", [])))

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write `summary.json` and `summary.csv` (one row per case and label) into `folder`, atomically."""
        folder = Path(folder)
        json_path = write_json(folder / SUMMARY_JSON, self.to_json())

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["case_id", "label", "name", *METRIC_NAMES])
                for case in self.per_case:
                    for key, name in self.label_names.items():
                        writer.writerow([case.case_id, key, name, *(case.metrics[key][m] for m in METRIC_NAMES)])

        return json_path, write_atomic(folder / SUMMARY_CSV, write_csv)

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationSummary":
        """Read a summary.json (or the folder holding one)."""
        return load_artifact(path, cls.from_json, SUMMARY_JSON)

    def format_table(self) -> str:
        """The mean metrics as a fixed-width text table, one row per label plus the foreground mean."""
        columns = ("Dice", "IoU", "precision", "recall", "RVD", "ASSD_mm", "HD95_mm", "MSSD_mm")
        name_width = max([len("foreground mean"), *(len(f"{k} {n}") for k, n in self.label_names.items())])
        header = f"{'label':<{name_width}}  " + "  ".join(f"{c:>9}" for c in columns) + "  excluded"
        lines = [f"{len(self.per_case)} cases", header, "-" * len(header)]
        for key, name in self.label_names.items():
            excluded = max(self.excluded_cases[key][c] for c in columns)
            lines.append(f"{f'{key} {name}':<{name_width}}  " + "  ".join(f"{self.mean[key][c]:>9.4f}"
                                                                         for c in columns) + f"  {excluded:>8}")
        lines.append(f"{'foreground mean':<{name_width}}  "
                     + "  ".join(f"{self.foreground_mean[c]:>9.4f}" for c in columns))
        return "\n".join(lines)
