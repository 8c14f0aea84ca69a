"""The workspace: one folder for everything autoseg writes, and the one place its paths are spelled.

    HOME/raw/TASK/                 datasets by name (MSD layout)
    HOME/preprocessed/TASK/        fingerprint.json, plans.json, per-configuration arrays, gt_segmentations/
    HOME/results/TASK/             `TaskResults`: splits.json, CONFIG/fold_N/ (checkpoints, training log,
                                   progress plot, validation/), CONFIG/crossval/, CONFIG/predicted_next_stage/,
                                   ensembles/A+B/, find_best.json and .txt, postprocessing.json,
                                   dataset.json (of an imported model bundle)
    HOME/current_task.json         the task last planned, so later stages can omit it
    HOME/device_speed.json         this machine's measured training speed (compute-aware planning)
    HOME/runtime_choice.json       the prediction runtime measured fastest, per machine and model (`predict --runtime auto`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoseg.artifacts import read_json, write_json
from autoseg.errors import WorkspaceError

DEFAULT_HOME = Path("autoseg_workspace")
CHECKPOINT_NAMES = ("final", "best", "latest")
FOLD_PREFIX = "fold_"


def checkpoint_file_name(which: str) -> str:
    """checkpoint_final.pt, checkpoint_best.pt or checkpoint_latest.pt: the file of a fold's checkpoint `which`."""
    if which not in CHECKPOINT_NAMES:
        raise WorkspaceError(f"--checkpoint {which!r}: expected one of {', '.join(CHECKPOINT_NAMES)}")
    return f"checkpoint_{which}.pt"


@dataclass(frozen=True)
class TaskResults:
    """HOME/results/TASK: what training, fold validation and model selection write for one task."""

    root: Path

    @property
    def splits_file(self) -> Path:
        return self.root / "splits.json"

    @property
    def selection_file(self) -> Path:
        """find-best's choice of configuration(s)."""
        return self.root / "find_best.json"

    @property
    def selection_table_file(self) -> Path:
        """find-best's candidates as a readable table."""
        return self.root / "find_best.txt"

    @property
    def postprocessing_file(self) -> Path:
        return self.root / "postprocessing.json"

    @property
    def dataset_file(self) -> Path:
        """The task's dataset.json without its case lists (labels, channels, regions, pixel spacing), as a
        model bundle brings it (`autoseg.stages.bundle`): a workspace that imported a model has no raw/."""
        return self.root / "dataset.json"

    @property
    def ensembles_folder(self) -> Path:
        """The cross-validation predictions of ensembles of configurations, a folder per ensemble (A+B)."""
        return self.root / "ensembles"

    def configuration_folder(self, configuration: str) -> Path:
        return self.root / configuration

    def configurations_with_folds(self) -> list[str]:
        """The configuration folders holding at least one fold folder, by name."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and p != self.ensembles_folder and any(p.glob(f"{FOLD_PREFIX}*")))

    def fold_folder(self, configuration: str, fold: int | str) -> Path:
        return self.root / configuration / f"{FOLD_PREFIX}{fold}"

    def checkpoint_file(self, configuration: str, fold: int | str, which: str = "final") -> Path:
        """checkpoint_final.pt, checkpoint_best.pt or checkpoint_latest.pt of a fold."""
        return self.fold_folder(configuration, fold) / checkpoint_file_name(which)

    def onnx_file(self, configuration: str, fold: int | str) -> Path:
        """The fold's network as ONNX (`autoseg export-model --onnx` packs it; the bundle's member name)."""
        return self.fold_folder(configuration, fold) / "network.onnx"

    def fold_plans_file(self, configuration: str, fold: int | str) -> Path:
        """The plan the fold was trained with, copied when its run started (as nnU-Net keeps plans.json
        next to its results): prediction uses it even after the workspace is re-planned."""
        return self.fold_folder(configuration, fold) / "plans.json"

    def training_log_file(self, configuration: str, fold: int | str) -> Path:
        """One line per epoch, and notes on what happened to the run (`autoseg.training.progress`)."""
        return self.fold_folder(configuration, fold) / "training_log.txt"

    def progress_plot_file(self, configuration: str, fold: int | str) -> Path:
        return self.fold_folder(configuration, fold) / "progress.png"

    def validation_folder(self, configuration: str, fold: int | str) -> Path:
        """The fold's predictions of its validation cases and their evaluation."""
        return self.fold_folder(configuration, fold) / "validation"

    def mirror_scores_file(self, configuration: str, fold: int | str) -> Path:
        """The fold validation's Dice of each candidate mirror TTA set (`autoseg.inference.mirroring`)."""
        return self.validation_folder(configuration, fold) / "mirror_scores.json"

    def crossval_folder(self, configuration: str) -> Path:
        """Every fold's validation predictions of a configuration gathered by find-best."""
        return self.root / configuration / "crossval"

    def predicted_next_stage_folder(self, configuration: str) -> Path:
        """A low-res stage's fold-validation segmentations on the next stage's grid (cascade input)."""
        return self.root / configuration / "predicted_next_stage"

    def trained_folds(self, configuration: str, which: str = "final") -> list[str]:
        """The folds of a configuration that have the given checkpoint, sorted by name."""
        pattern = f"{FOLD_PREFIX}*/{checkpoint_file_name(which)}"
        return sorted(p.parent.name[len(FOLD_PREFIX):] for p in self.configuration_folder(configuration).glob(pattern))


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

    def trained_task_name(self, task: str | Path | None) -> str:
        """The task of trained models: a dataset folder's name, else `task` as a name (its raw data may be
        gone, or never here: an imported model bundle), else the task planned last."""
        if task is None:
            return self.current_task()
        return self.task_name(task) if (Path(task) / "dataset.json").is_file() else str(task)

    def preprocessed(self, task_name: str) -> Path:
        return self.home / "preprocessed" / task_name

    def results(self, task_name: str) -> Path:
        return self.home / "results" / task_name

    def task_results(self, task_name: str) -> TaskResults:
        return TaskResults(self.results(task_name))

    def reference_segmentations(self, task_name: str) -> Path:
        """Copies of the training labels, in their original geometry, that validations are scored against."""
        return self.preprocessed(task_name) / "gt_segmentations"

    def fingerprint_file(self, task_name: str) -> Path:
        return self.preprocessed(task_name) / "fingerprint.json"

    def plans_file(self, task_name: str) -> Path:
        return self.preprocessed(task_name) / "plans.json"

    @property
    def device_speed_file(self) -> Path:
        return self.home / "device_speed.json"

    @property
    def runtime_choice_file(self) -> Path:
        return self.home / "runtime_choice.json"

    @property
    def onnx_cache_folder(self) -> Path:
        """Earlier ONNX exports of trained networks, for the ONNX runtimes (safe to delete)."""
        return self.home / "onnx_cache"

    def remember_task(self, task_name: str, dataset_folder: Path | None) -> None:
        write_json(self.home / "current_task.json",
                   {"task": task_name, "dataset_folder": str(dataset_folder) if dataset_folder else None})

    def current_task(self) -> str:
        path = self.home / "current_task.json"
        if not path.is_file():
            raise WorkspaceError(f"no task given and none planned yet in {self.home}; run `autoseg plan TASK` first")
        return read_json(path)["task"]

    def resolve_task(self, task: str | Path | None) -> tuple[str, Path | None]:
        """(task name, dataset folder) of an explicit task (a name under raw/ or a dataset folder), or of
        the task planned last when `task` is None (its dataset folder None when no longer known)."""
        if task is None:
            name = self.current_task()
            return name, self.current_dataset_folder(name)
        folder = self.dataset_folder(task)
        return folder.name, folder

    def current_dataset_folder(self, task_name: str) -> Path | None:
        path = self.home / "current_task.json"
        if path.is_file():
            data = read_json(path)
            if data.get("task") == task_name and data.get("dataset_folder"):
                return Path(data["dataset_folder"])
        candidate = self.raw / task_name
        return candidate if candidate.is_dir() else None
