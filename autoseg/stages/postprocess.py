"""The postprocess stage: apply a task's postprocessing decision (find-best's, by default) to a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoseg.postprocessing import PostprocessingDecision, postprocess_folder
from autoseg.workspace import Workspace


@dataclass(frozen=True)
class PostprocessResult:
    written: list[Path]  # the postprocessed segmentations, same file names as the inputs
    decision: PostprocessingDecision  # what was applied


def postprocess(workspace: Workspace, input_folder: Path, output_folder: Path, *, decision_file: Path | None = None,
                task: str | Path | None = None, workers: int = 2) -> PostprocessResult:
    """Postprocess every segmentation of `input_folder` into `output_folder` with `decision_file`
    (default: the postprocessing.json find-best wrote for `task`, or for the task planned last)."""
    if decision_file is None:
        name, _ = workspace.resolve_task(task)
        decision_file = workspace.task_results(name).postprocessing_file
    decision = PostprocessingDecision.load(decision_file)
    return PostprocessResult(postprocess_folder(input_folder, output_folder, decision, workers), decision)
