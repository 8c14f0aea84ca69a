"""What to train and how: a training job (one configuration of a plan on one fold), its settings, and
the callbacks through which a run reports its progress.

A job's files all lie in the fold's folder of the task's results (`autoseg.workspace.TaskResults`):
checkpoints, the copy of the plan it trains with, training log, progress plot. A cascade stage also reads its previous stage's predictions
from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autoseg.planning.plans import Plans
from autoseg.training.step import INITIAL_LR
from autoseg.workspace import TaskResults

# nnU-Net's schedule: 1000 epochs of 250 training and 50 validation iterations.
DEFAULT_EPOCHS, DEFAULT_ITERATIONS_PER_EPOCH, DEFAULT_VALIDATION_ITERATIONS = 1000, 250, 50


@dataclass
class TrainingSettings:
    epochs: int = DEFAULT_EPOCHS
    iterations_per_epoch: int = DEFAULT_ITERATIONS_PER_EPOCH
    validation_iterations: int = DEFAULT_VALIDATION_ITERATIONS
    num_workers: int = 2
    device: str = "auto"  # auto | cuda | cpu | mps
    precision: str = "auto"  # auto (`autocast_dtype`: fp16 on CUDA, bf16 on hardware-bf16 CPUs) | fp32 | bf16 | fp16
    seed: int | None = None
    checkpoint_every: int | None = None  # epochs; None: chosen from the measured save time
    channels_last: bool = False
    initial_lr: float = INITIAL_LR
    # Confirm a mixed precision a few epochs in (autoseg.training.expectations); off when the user
    # asked for a precision explicitly.
    confirm_precision: bool = False
    # The plan's predicted seconds of one epoch (compute-aware planning), checked against the run.
    expected_epoch_seconds: float | None = None
    cpu_threads: int | None = None  # torch intra-op threads on a CPU; None: torch's default


@dataclass
class TrainingJob:
    """What to train: one configuration of a plan on one fold, writing into the task's results."""

    plans: Plans
    configuration_name: str
    fold: int | str
    data_folder: Path  # preprocessed arrays of the configuration
    results: TaskResults
    train_ids: list[str]
    val_ids: list[str]
    resume: bool = False
    # A checkpoint whose matching weights a new run starts from (`autoseg.training.pretrained`); a resumed
    # run continues from its own checkpoint instead.
    pretrained: Path | None = None

    @property
    def output_folder(self) -> Path:
        return self.results.fold_folder(self.configuration_name, self.fold)

    def checkpoint_file(self, which: str) -> Path:
        """The fold's "final", "best" or "latest" checkpoint."""
        return self.results.checkpoint_file(self.configuration_name, self.fold, which)

    @property
    def plans_copy_file(self) -> Path:
        """Where the run keeps the plan it trains with (`TaskResults.fold_plans_file`)."""
        return self.results.fold_plans_file(self.configuration_name, self.fold)

    @property
    def log_file(self) -> Path:
        return self.results.training_log_file(self.configuration_name, self.fold)

    @property
    def progress_plot_file(self) -> Path:
        return self.results.progress_plot_file(self.configuration_name, self.fold)


@dataclass
class TrainingEvents:
    """Callbacks for progress; all optional."""

    on_message: Callable[[str], None] = lambda message: None
    on_iteration: Callable[[int, int], None] = lambda done, total: None  # within an epoch
    on_epoch_end: Callable[[dict], None] = lambda record: None
