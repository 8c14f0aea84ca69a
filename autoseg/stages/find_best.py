"""The find-best stage: choose a task's configuration (or pair ensemble) by cross-validation and
decide its postprocessing (`autoseg.selection.find_best` on the workspace's results)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from autoseg import selection
from autoseg.planning import Plans
from autoseg.postprocessing import PostprocessingDecision
from autoseg.workspace import Workspace


@dataclass(frozen=True)
class FindBestResult:
    selection: selection.SelectionResult  # every candidate scored, the chosen one first (find_best.json)
    postprocessing: PostprocessingDecision  # decided on the chosen one's predictions (postprocessing.json)


def find_best(workspace: Workspace, *, task: str | None = None, configurations: Sequence[str] | None = None,
              folds: Sequence[str] | None = None, allow_ensembles: bool = True, workers: int = 2) -> FindBestResult:
    """Score the trained configurations of `task` (default: the task planned last; every trained
    configuration and every fold of splits.json unless given), choose, decide postprocessing."""
    name, _ = workspace.resolve_task(task)
    plans = Plans.load(workspace.plans_file(name))
    results = workspace.task_results(name)
    chosen = selection.find_best(results, workspace.reference_segmentations(name),
                                 {int(v): n for v, n in plans.labels.items()}, configurations=configurations or None,
                                 folds=folds, allow_ensembles=allow_ensembles, workers=workers,
                                 pixel_spacing=plans.pixel_spacing)
    return FindBestResult(chosen, PostprocessingDecision.load(results.postprocessing_file))
