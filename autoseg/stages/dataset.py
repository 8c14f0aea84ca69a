"""The stages that read a raw dataset: check it, extract its fingerprint, preprocess it for the plan.

Progress callbacks take (cases done, cases total); the first call is (0, total), before any case.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from autoseg.check import Problem, check_dataset
from autoseg.dataset import load_dataset
from autoseg.errors import WorkspaceError
from autoseg.fingerprint import Fingerprint, load_or_extract
from autoseg.planning import Plans
from autoseg.preprocessing.store import PreprocessSummary
from autoseg.preprocessing.task import preprocess_task
from autoseg.workspace import Workspace

CaseProgress = Callable[[int, int], None]


def _counting(progress: CaseProgress | None, total: int) -> Callable[..., None]:
    """A per-case callback (any arguments) that reports (done, total) to `progress`."""
    if progress is None:
        return lambda *_: None
    progress(0, total)
    done = itertools.count(1)  # next() is atomic: cases may finish on several threads
    return lambda *_: progress(next(done), total)


@dataclass(frozen=True)
class CheckReport:
    dataset_name: str
    root: Path
    num_cases: int  # training cases
    problems: list[Problem]  # each with its case and file; empty for a usable dataset


def check(workspace: Workspace, task: str | Path, *, workers: int = 2,
          progress: CaseProgress | None = None) -> CheckReport:
    """Every problem of a dataset (a name under raw/ or a dataset folder); unusable dataset.json
    entries are reported as problems rather than raised."""
    dataset = load_dataset(workspace.dataset_folder(task), strict=False)
    problems = check_dataset(dataset, workers, on_case_done=_counting(progress, len(dataset.cases)))
    return CheckReport(dataset.name, dataset.root, len(dataset.cases), problems)


@dataclass(frozen=True)
class FingerprintResult:
    fingerprint: Fingerprint
    path: Path  # HOME/preprocessed/TASK/fingerprint.json
    reused: bool  # the dataset had not changed since the file was written


def fingerprint(workspace: Workspace, task: str | Path, *, workers: int = 2,
                progress: CaseProgress | None = None) -> FingerprintResult:
    """The dataset fingerprint, extracted into the workspace (reused when the dataset has not changed)."""
    dataset = load_dataset(workspace.dataset_folder(task))
    path = workspace.fingerprint_file(dataset.root.name)
    result, reused = load_or_extract(dataset, path, workers, on_case_done=_counting(progress, len(dataset.cases)))
    return FingerprintResult(result, path, reused)


def preprocess(workspace: Workspace, task: str | Path | None = None, *, configurations: Sequence[str] | None = None,
               workers: int = 2, progress: Callable[[str, str, str], None] | None = None
               ) -> dict[str, PreprocessSummary]:
    """Preprocess a planned task (default: the task planned last) for its configurations (default all);
    resumable. Returns a summary per data folder; progress(data folder, case id, outcome) is called
    per case and folder."""
    name, folder = workspace.resolve_task(task)
    if folder is None:
        raise WorkspaceError(f"task {name}: no dataset folder known; pass the dataset folder as TASK")
    dataset = load_dataset(folder)
    plans = Plans.load(workspace.plans_file(name))
    return preprocess_task(dataset, plans, workspace, name, configurations=configurations,
                           workers=workers, progress=progress)
