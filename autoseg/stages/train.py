"""Training one fold of one configuration, as `autoseg train` does, then validating it.

    result = train_fold(workspace, TrainRequest(configuration="3d_fullres", fold="0"))
    print(result.validation.format_table())

In order: the configuration (the one named, else `default_training_configuration`); with a time
budget, that configuration re-planned for it (`replan_for_budget`); a configuration the plan marks
over budget refused unless the request gives a schedule; the schedule (the request's, else the
resumed run's, else the plan's budget, else nnU-Net's); every training case of dataset.json
preprocessed and up to date (when the dataset folder is known); the fold's cases from splits.json
(made on first use); worker processes and CPU threads for this machine; then the trainer, the fold's
validation and the measured time against the plan's prediction.

Under torchrun each rank calls `train_fold` with its `DistributedRank`, on one machine or several
sharing the workspace. Rank 0 alone writes there: it re-plans and makes splits.json while the others
wait, then read them; it validates and reports: the stage callbacks (on_start, ...) are called on
rank 0 only, the trainer's `TrainingEvents` on every rank.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from autoseg.budget.compute_aware import TrainingSchedule, training_schedule
from autoseg.device import check_precision
from autoseg.errors import PlanError, WorkspaceError
from autoseg.evaluation import EvaluationSummary
from autoseg.inference.runtimes import check_runtime
from autoseg.planning.plans import Configuration, Plans
from autoseg.planning.time_budget import BudgetDecision, OverBudget, format_duration
from autoseg.stages.choice import configurations_within_budget, default_training_configuration
from autoseg.stages.plan import SpeedLookup, replan_for_budget
from autoseg.training.job import TrainingEvents, TrainingJob, TrainingSettings
from autoseg.training.trainer import run_training
from autoseg.workspace import TaskResults, Workspace

# float32 bytes per voxel of a batch held by a data worker (the images' channels and the segmentation).
BATCH_BYTES_PER_VOXEL = 4


@dataclass(frozen=True)
class DistributedRank:
    """This process's place in a multi-process run (torchrun, DistributedDataParallel)."""

    device: str  # this rank's device: cuda:N (one GPU per rank) or cpu
    rank: int  # global rank, over every machine; 0: the main process, which alone writes and reports
    world_size: int  # processes over every machine
    local_world_size: int  # processes on this machine (torchrun's LOCAL_WORLD_SIZE), who share its CPUs


@dataclass
class TrainRequest:
    """The options of `autoseg train`; None means the plan's or the machine's default."""

    configuration: str | None = None  # None: default_training_configuration
    fold: str = "0"  # a fold number of splits.json, or "all"
    task: str | None = None  # a name under raw/ or a dataset folder; None: the task planned last
    epochs: int | None = None  # default: the plan's time budget's, else 1000
    iterations: int | None = None  # training iterations per epoch (default: the plan's, else 250)
    validation_iterations: int | None = None
    time_budget: str | None = None  # re-plan the configuration to train within it ("15m", "2h") first
    workers: int | None = None  # augmentation worker processes (0: in-process)
    device: str = "auto"  # auto, cuda, cpu or mps
    precision: str = "auto"  # auto (the plan's, confirmed on the first epochs), fp32, bf16 or fp16
    resume: bool = False  # continue from checkpoint_latest.pt
    pretrained: Path | None = None  # start a new run from this checkpoint's matching weights (resume wins)
    seed: int | None = None
    checkpoint_every: int | None = None  # epochs
    validate: bool = True  # predict and score the fold's validation cases after training
    # The validation's runtime: auto chooses (and caches for predict) the fastest that agrees with torch fp32,
    # measured on the first validation case (`autoseg.stages.runtime`); or one by name.
    validation_runtime: str = "auto"
    distributed: DistributedRank | None = None  # None: one process

    @property
    def is_main(self) -> bool:
        return self.distributed is None or self.distributed.rank == 0

    @property
    def training_device(self) -> str:
        return self.distributed.device if self.distributed is not None else self.device


@dataclass(frozen=True)
class FoldSetup:
    """What `train_fold` is about to train, once every default is decided."""

    task: str
    configuration: str
    fold: str
    train_ids: list[str]
    val_ids: list[str]
    epochs: int
    iterations_per_epoch: int
    patch_size: list[int]
    batch_size: int
    workers: int
    precision: str
    budget: BudgetDecision | None  # the plan's time budget decision, if it has one
    output_folder: Path  # the fold's folder: checkpoints, progress.png, validation/
    processes: int = 1  # training processes over every machine (torchrun's world)
    cpu_threads: int | None = None  # intra-op threads per process when training on the CPU


@dataclass
class TrainResult:
    """A trained fold and what `autoseg train` reports about it. On ranks other than 0 only `setup` is set."""

    setup: FoldSetup
    validation: EvaluationSummary | None  # None without validation (and on ranks other than 0)
    timing_report: str | None  # measured against predicted time of the fold; None without a budget to compare

    @property
    def output_folder(self) -> Path:
        return self.setup.output_folder


def _ignore(*_) -> None:
    pass


def train_fold(workspace: Workspace, request: TrainRequest, events: TrainingEvents | None = None, *,
               on_measure: Callable[[SpeedLookup], None] = _ignore,
               on_replanned: Callable[[str, Path], None] = _ignore,
               on_start: Callable[[FoldSetup], None] = _ignore,
               on_trained: Callable[[Path], None] = _ignore,
               on_validation_case: Callable[[str], None] = _ignore) -> TrainResult:
    """Train (and validate) one fold as `request` says; the module docstring gives the steps.

    on_measure: a device speed lookup while re-planning for a time budget; on_replanned(configuration,
    plans_file): plans.json was rewritten for the budget; on_start(setup): training begins;
    on_trained(output_folder): checkpoints are written, validation follows; on_validation_case(case_id).
    """
    check_precision(request.precision)
    check_runtime(request.validation_runtime)
    task_name, dataset_folder = workspace.resolve_task(request.task)
    plans = Plans.load(workspace.plans_file(task_name))
    configuration = request.configuration or default_training_configuration(plans)
    if request.time_budget is not None:
        plans = _plans_for_time_budget(workspace, task_name, plans, configuration, request, on_measure, on_replanned)
    config = plans.configuration(configuration)
    if config.over_budget is not None and request.epochs is None and not request.resume:
        raise PlanError(over_budget_refusal(plans, configuration, config.over_budget))
    task_results = workspace.task_results(task_name)
    schedule = fold_schedule(task_results, configuration, config.budget, request)
    job = _training_job(workspace, task_name, dataset_folder, plans, configuration, request)
    settings = _training_settings(config, schedule, request)
    setup = FoldSetup(task_name, configuration, request.fold, job.train_ids, job.val_ids, settings.epochs,
                      settings.iterations_per_epoch, config.patch_size, config.batch_size, settings.num_workers,
                      settings.precision, config.budget, job.output_folder,
                      processes=request.distributed.world_size if request.distributed is not None else 1,
                      cpu_threads=settings.cpu_threads if settings.device == "cpu" else None)
    if request.is_main:
        on_start(setup)
    started = time.perf_counter()
    run_training(job, settings, events)
    if not request.is_main:
        return TrainResult(setup, validation=None, timing_report=None)
    on_trained(job.output_folder)
    validation = None
    if request.validate:
        validation = _validate(workspace, task_name, job, request.training_device, request.validation_runtime,
                               schedule.final_validation_mirroring, on_validation_case)
    return TrainResult(setup, validation, _timing_report(config.budget, request, time.perf_counter() - started))


def _plans_for_time_budget(workspace: Workspace, task_name: str, plans: Plans, configuration: str,
                           request: TrainRequest, on_measure, on_replanned) -> Plans:
    """The plan with `configuration` re-planned for the request's time budget (by rank 0; the others read it)."""

    def replan() -> Plans:
        replanned = replan_for_budget(workspace, task_name, plans, configuration, request.fold, request.time_budget,
                                      request.training_device, on_measure=on_measure)
        on_replanned(configuration, workspace.plans_file(task_name))
        return replanned

    return _rank_0_first(request, replan, lambda: Plans.load(workspace.plans_file(task_name)))


def _rank_0_first(request: TrainRequest, on_rank_0: Callable[[], Any],
                  on_others: Callable[[], Any] | None = None) -> Any:
    """`on_rank_0()` on rank 0, which writes into the workspace (a re-plan, splits.json), then, once it is
    done, `on_others()` (default the same call, which then finds the file written) on the other ranks: the
    ranks of every machine may share one workspace (a network file system), and rank 0 alone writes there.
    One process: `on_rank_0()`."""
    if request.distributed is None:
        return on_rank_0()
    from autoseg.training.distributed import Ranks

    ranks = Ranks()
    if request.is_main:
        result = on_rank_0()
        ranks.barrier()
        return result
    ranks.barrier()
    return (on_others or on_rank_0)()


def over_budget_refusal(plans: Plans, configuration: str, over_budget: OverBudget) -> str:
    """Why a configuration the plan marks over budget is not trained, and what to do instead."""
    fitting = configurations_within_budget(plans)
    return (f"{configuration} does not fit the plan's time budget of {format_duration(over_budget.time_budget_seconds)}: "
            f"one fold needs at least {format_duration(over_budget.minimum_budget_seconds)} on "
            f"{over_budget.device}; train {' or '.join(fitting) or 'another configuration'} instead, re-plan with "
            f"--time-budget {format_duration(over_budget.minimum_budget_seconds)} or more, or give --epochs to "
            "train it anyway")


def fold_schedule(task_results: TaskResults, configuration: str, budget: BudgetDecision | None,
                  request: TrainRequest) -> TrainingSchedule:
    """Epochs, iterations and precision: the request's; else, resuming, those the run was started with;
    else the plan's budget decision's; else nnU-Net's (`training_schedule`)."""
    from autoseg.checkpoint import resume_schedule

    epochs, iterations, validation_iterations = request.epochs, request.iterations, request.validation_iterations
    if request.resume:  # a resumed run keeps its own schedule unless told otherwise
        stored = resume_schedule(task_results.fold_folder(configuration, request.fold))
        epochs = epochs or stored.get("epochs")
        iterations = iterations or stored.get("iterations_per_epoch")
        validation_iterations = validation_iterations or stored.get("validation_iterations")
    return training_schedule(budget, epochs=epochs, iterations=iterations,
                             validation_iterations_per_epoch=validation_iterations, precision=request.precision)


def _training_job(workspace: Workspace, task_name: str, dataset_folder: Path | None, plans: Plans,
                  configuration: str, request: TrainRequest) -> TrainingJob:
    """The fold's training and validation cases (from splits.json, made on first use) and folders."""
    from autoseg.preprocessing.store import preprocessed_case_ids
    from autoseg.training.splits import fold_cases, load_or_create_splits

    data_folder = workspace.preprocessed(task_name) / plans.configuration(configuration).data_identifier
    case_ids = preprocessed_case_ids(data_folder)
    if not case_ids:
        raise WorkspaceError(f"{data_folder}: no preprocessed cases; run `autoseg preprocess` first")
    # Unknown for a task planned from a fingerprint only, or whose dataset has moved: nothing to compare.
    if dataset_folder is not None and (dataset_folder / "dataset.json").is_file():
        check_all_cases_preprocessed(dataset_folder, plans, configuration, data_folder)
    task_results = workspace.task_results(task_name)
    splits = _rank_0_first(request, lambda: load_or_create_splits(task_results.splits_file, case_ids))
    train_ids, val_ids = fold_cases(splits, request.fold, case_ids)
    return TrainingJob(plans, configuration, request.fold, data_folder, task_results, train_ids, val_ids,
                       resume=request.resume, pretrained=request.pretrained)


def check_all_cases_preprocessed(dataset_folder: Path, plans: Plans, configuration: str, data_folder: Path) -> None:
    """Raise a WorkspaceError naming the dataset's training cases missing from `data_folder` or stored from
    other files: splits.json must never be made from an incomplete set of cases."""
    from autoseg.dataset import load_dataset
    from autoseg.preprocessing.task import cases_not_preprocessed

    dataset = load_dataset(dataset_folder)
    missing = cases_not_preprocessed(dataset, plans, configuration, data_folder)
    if missing:
        raise WorkspaceError(f"{data_folder}: {len(missing)} of {len(dataset.cases)} training cases are not "
                             f"preprocessed (or are stale): {', '.join(missing)}; run `autoseg preprocess`")


def _training_settings(config: Configuration, schedule: TrainingSchedule, request: TrainRequest) -> TrainingSettings:
    device = request.training_device
    workers = request.workers if request.workers is not None else default_training_workers(config, device)
    processes_here = request.distributed.local_world_size if request.distributed is not None else 1
    return TrainingSettings(epochs=schedule.epochs, iterations_per_epoch=schedule.iterations_per_epoch,
                            validation_iterations=schedule.validation_iterations, num_workers=workers,
                            device=device, precision=schedule.precision,
                            confirm_precision=schedule.confirm_precision,
                            expected_epoch_seconds=schedule.expected_epoch_seconds,
                            cpu_threads=training_cpu_threads(processes_here), seed=request.seed,
                            checkpoint_every=request.checkpoint_every)


def default_training_workers(config: Configuration, device: str) -> int:
    """Augmentation workers for this device, CPU count and free memory (`autoseg.hardware.training_workers`),
    given the bytes of one batch of the configuration."""
    from autoseg.device import device_type
    from autoseg.hardware import available_memory_bytes, training_workers, usable_cpus

    batch_bytes = (BATCH_BYTES_PER_VOXEL * config.batch_size * (config.architecture.input_channels + 1)
                   * math.prod(config.patch_size))
    return training_workers(device_type(device.split(":")[0]), usable_cpus(), available_memory_bytes(), batch_bytes)


def training_cpu_threads(processes_on_this_machine: int = 1) -> int:
    """Intra-op threads for CPU training: every usable CPU (one process), or a share of them per rank of
    this machine (ranks on other machines have their own CPUs)."""
    from autoseg.hardware import usable_cpus

    return max(1, usable_cpus() // processes_on_this_machine)


def _validate(workspace: Workspace, task_name: str, job: TrainingJob, device: str, runtime: str, use_tta: bool,
              on_case: Callable[[str], None]) -> EvaluationSummary:
    """The fold's validation predictions, written to its validation/ folder, and their EvaluationSummary,
    predicted on `runtime` (auto: the choice predict will read back from the workspace's cache)."""
    from autoseg.inference.case import PredictionSettings
    from autoseg.inference.runtimes import CALIBRATION_IMAGES
    from autoseg.preprocessing.store import load_case
    from autoseg.stages.runtime import settings_with_runtime
    from autoseg.training.validation import validate_fold

    def settings_for(model, first_case):
        def calibration_images():  # int8's: the validation cases after the first (the probe's), else the first
            return [load_case(job.data_folder, case_id, mmap=False)[0]
                    for case_id in job.val_ids[1:1 + CALIBRATION_IMAGES]] or [first_case]

        settings = PredictionSettings(runtime=runtime, mirror_axes=None if use_tta else ())  # None: all axes
        return settings_with_runtime(workspace, [model], settings,
                                     probe_image=lambda: first_case, calibration_images=calibration_images)

    return validate_fold(job.plans, job.configuration_name, job.results, job.fold, job.data_folder,
                         workspace.reference_segmentations(task_name), job.val_ids, device=device, use_tta=use_tta,
                         on_case=on_case, settings_for=settings_for)


def _timing_report(budget: BudgetDecision | None, request: TrainRequest, seconds: float) -> str | None:
    """The fold's measured time against the plan's prediction, for a run on the budget's own schedule."""
    from autoseg.training.expectations import timing_report

    if budget is None or request.resume or request.epochs is not None or request.iterations is not None:
        return None
    predicted = budget.seconds_per_fold - (0 if request.validate else budget.seconds_final_validation)
    text, _ = timing_report("time for the fold" + (" (validation included)" if request.validate else ""),
                            predicted, seconds)
    return text
