"""The evaluate stage: which labels, regions and picture pixel spacing to score, then the scores.

Labels: those named; else a named task's; else the labels found in the files, named (with the
task's regions and pixel spacing) by the task planned last only when they are all its labels
(`autoseg.evaluation.labels_to_score`), so a task planned for other data never decides what is scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from autoseg.dataset import load_dataset
from autoseg.errors import AutosegError, WorkspaceError
from autoseg.evaluation import SUMMARY_CHART, EvaluationSummary, evaluate_folder, labels_found, labels_to_score, \
    regions_of_dataset
from autoseg.figures import write_dice_chart
from autoseg.workspace import Workspace

Labels = Mapping[int, str] | Sequence[int]
Regions = Mapping[str, Sequence[int]] | Sequence[Sequence[int]]


@dataclass(frozen=True)
class LabelChoice:
    labels: dict[int, str]  # label value -> name
    dataset_folder: Path | None  # the dataset whose dataset.json regions and pixel spacing apply
    found: list[int] | None = None  # the labels found in the files, when neither labels nor a task were named
    planned_task: str | None = None  # the task planned last, when its labels were taken for those found

    def describe(self) -> str:
        """Which labels are scored and why, when they were found in the files."""
        found = ", ".join(str(v) for v in self.found or []) or "none"
        if self.planned_task is None:
            return f"scoring labels found in the files: {found}"
        return f"scoring the labels of the planned task {self.planned_task} (labels found in the files: {found})"


def choose_labels(workspace: Workspace, predictions: Path, references: Path, labels: Labels | None = None,
                  task: str | Path | None = None, workers: int = 1) -> LabelChoice:
    """The labels to score: `labels` (with `task`, that task's dataset applies); else `task`'s; else
    those found in the files, or the planned task's when they are all its own."""
    if labels is not None:
        names = ({int(v): str(n) for v, n in labels.items()} if isinstance(labels, Mapping)
                 else {int(v): str(v) for v in labels})
        return LabelChoice(names, workspace.resolve_task(task)[1] if task is not None else None)
    if task is not None:
        _, folder = workspace.resolve_task(task)
        return LabelChoice(load_dataset(folder).labels, folder)
    found = labels_found(predictions, references, workers)
    try:
        planned_task, planned_folder = workspace.resolve_task(None)
    except WorkspaceError:  # no task planned in this workspace
        planned_task, planned_folder = None, None
    task_labels = load_dataset(planned_folder).labels if planned_folder is not None else None
    choice = labels_to_score(found, task_labels, where=f"{predictions} and {references}")
    if not choice.from_task:
        return LabelChoice(choice.labels, None, found)
    return LabelChoice(choice.labels, planned_folder, found, planned_task)


def _picture_spacing(pixel_spacing: float | Sequence[float]) -> tuple[float, float]:
    """(y, x) mm from one number or (y, x); positive."""
    values = [float(pixel_spacing)] if isinstance(pixel_spacing, (int, float)) else [float(v) for v in pixel_spacing]
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise AutosegError(f"--pixel-spacing: expected Y,X or one number, positive mm, got "
                           f"{','.join(f'{v:g}' for v in values)!r}")
    return values[0], values[-1]


@dataclass(frozen=True)
class EvaluationRun:
    summary: EvaluationSummary
    label_choice: LabelChoice
    pixel_spacing: tuple[float, float] | None  # (y, x) mm of picture pixels; None: pictures in pixels
    summary_files: tuple[Path, Path]  # summary.json and summary.csv in the prediction folder
    chart_file: Path  # summary.png next to them: the Dice of each case and label


def evaluate(workspace: Workspace, predictions: Path, references: Path, *, labels: Labels | None = None,
             regions: Regions | None = None, task: str | Path | None = None, workers: int = 2,
             pixel_spacing: float | Sequence[float] | None = None) -> EvaluationRun:
    """Score every prediction against the reference of the same name; writes summary.json,
    summary.csv and summary.png (a bar chart of each case's Dice per label) into `predictions`.

    regions: unions of labels scored as one mask, {name: labels} or label tuples (named by their
    labels); default: the applying dataset's "regions", none when `labels` are given.
    pixel_spacing: of picture files (.png, ...), one number or (y, x) mm; default: the applying
    dataset's "pixel_spacing" (unless only `labels` are given), else pixels.
    """
    choice = choose_labels(workspace, Path(predictions), Path(references), labels, task, workers)
    if regions is None:
        regions = {} if labels is not None or choice.dataset_folder is None else \
            regions_of_dataset(choice.dataset_folder, choice.labels)
    if pixel_spacing is not None:
        spacing = _picture_spacing(pixel_spacing)
    else:
        spacing = load_dataset(choice.dataset_folder).pixel_spacing if choice.dataset_folder is not None else None
    # With the task's labels (--task), a predicted label the task does not have is an error, not ignored.
    summary = evaluate_folder(predictions, references, choice.labels, regions=regions, workers=workers,
                              pixel_spacing=spacing, refuse_other_labels=labels is None and task is not None)
    chart = write_dice_chart(summary, Path(predictions) / SUMMARY_CHART)
    return EvaluationRun(summary, choice, spacing, summary.save(predictions), chart)
