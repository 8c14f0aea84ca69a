"""The workspace: one folder for everything autoseg writes.

    HOME/raw/TASK/                 datasets by name (MSD layout)
    HOME/preprocessed/TASK/        fingerprint.json, plans.json, per-configuration arrays
    HOME/results/TASK/             splits.json, CONFIG/fold_N/ checkpoints, find-best and postprocessing choices
    HOME/current_task.json         the task last planned, so later stages can omit it
    HOME/device_speed.json         this machine's measured training speed (compute-aware planning)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoseg.artifacts import read_json, write_json
from autoseg.errors import WorkspaceError

DEFAULT_HOME = Path("autoseg_workspace")


@dataclass(frozen=True)
class Workspace:
    home: Path

    @property
    def raw(self) -> Path:
        return self.home / "raw"

    def dataset_folder(self, task: str | Path) -> Path:
        """A task is a name under raw/ or a path to a dataset folder."""
        as_path = Path(task)
        if (as_path / "dataset.json").is_file():
            return as_path.resolve()
        candidate = self.raw / str(task)
        if candidate.is_dir():
            return candidate.resolve()
        places = str(as_path) if as_path.is_absolute() else f"{as_path} or {candidate}"
        raise WorkspaceError(f"task {str(task)!r}: no dataset folder (with dataset.json) at {places}")

    def task_name(self, task: str | Path) -> str:
        return self.dataset_folder(task).name

    def preprocessed(self, task_name: str) -> Path:
        return self.home / "preprocessed" / task_name

    def results(self, task_name: str) -> Path:
        return self.home / "results" / task_name

    def fingerprint_file(self, task_name: str) -> Path:
        return self.preprocessed(task_name) / "fingerprint.json"

    def plans_file(self, task_name: str) -> Path:
        return self.preprocessed(task_name) / "plans.json"

    @property
    def device_speed_file(self) -> Path:
        return self.home / "device_speed.json"

    def remember_task(self, task_name: str, dataset_folder: Path | None) -> None:
        write_json(self.home / "current_task.json",
                   {"task": task_name, "dataset_folder": str(dataset_folder) if dataset_folder else None})

    def current_task(self) -> str:
        path = self.home / "current_task.json"
        if not path.is_file():
            raise WorkspaceError(f"no task given and none planned yet in {self.home}; run `autoseg plan TASK` first")
        return read_json(path)["task"]

    def current_dataset_folder(self, task_name: str) -> Path | None:
        path = self.home / "current_task.json"
        if path.is_file():
            data = read_json(path)
            if data.get("task") == task_name and data.get("dataset_folder"):
                return Path(data["dataset_folder"])
        candidate = self.raw / task_name
        return candidate if candidate.is_dir() else None
