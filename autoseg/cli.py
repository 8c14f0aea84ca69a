"""The `autoseg` command line: parse, call the stage's function in autoseg.api (one way to run a stage), print.

Heavy imports (torch, SimpleITK) happen inside the commands so `autoseg --help` is instant.
Any AutosegError becomes one line on stderr and exit code 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from autoseg.errors import AutosegError
from autoseg.workspace import DEFAULT_HOME, Workspace

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Self-configuring medical image segmentation for Decathlon-format datasets.")


class _State:
    workspace = Workspace(DEFAULT_HOME)
    debug = False


state = _State()


@app.callback()
def main(
    home: Path = typer.Option(DEFAULT_HOME, "--home", envvar="AUTOSEG_HOME",
                              help="Workspace folder (raw/, preprocessed/, results/)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    state.workspace = Workspace(home)
    state.debug = debug


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def command(*args, **kwargs):
    """Register a command whose AutosegErrors become one-line messages (tracebacks with --debug)."""

    def register(function):
        @functools.wraps(function)
        def wrapper(*a, **k):
            try:
                return function(*a, **k)
            except AutosegError as e:
                if state.debug:
                    raise
                fail(str(e))
            except KeyboardInterrupt:
                fail("interrupted", 130)

        return app.command(*args, **kwargs)(wrapper)

    return register


def progress_bar(total: int, unit: str, description: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=description, file=sys.stderr, dynamic_ncols=True,
                disable=None)  # disable=None: no bar when stderr is not a terminal


def resolve_task(task: Optional[str]) -> tuple[str, Path | None]:
    """(task name, dataset folder or None) from an explicit TASK or the workspace's current task."""
    workspace = state.workspace
    if task is None:
        name = workspace.current_task()
        return name, workspace.current_dataset_folder(name)
    folder = workspace.dataset_folder(task)
    return folder.name, folder


def advance(bar):
    """The API's progress(done, total) callback for a bar made without a total: its first call is (0, total)."""
    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(min(done, 1))

    return update


def parse_numbers(text: str, kind: type, option: str, expected: str) -> list:
    """The comma-separated numbers of an option's value; an error naming the option otherwise."""
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        fail(f"{option}: expected {expected}, got {text!r}")


# ----------------------------------------------------------------------------------------- dataset


@command("demo-data")
def demo_data(
    output: Path = typer.Argument(..., help="Folder to write the dataset into (e.g. autoseg_workspace/raw)."),
    task_name: str = typer.Option("Task900_Demo", "--task-name"),
    cases: int = typer.Option(20, "--cases", min=1),
    shape: str = typer.Option("40,64,64", "--shape", help="z,y,x voxels (y,x or 1,y,x for --2d)."),
    spacing: str = typer.Option("2.0,1.0,1.0", "--spacing", help="z,y,x millimetres."),
    modality: str = typer.Option("CT", "--modality", help="CT or MRI."),
    channels: int = typer.Option(1, "--channels", min=1),
    seed: int = typer.Option(0, "--seed"),
    two_d: bool = typer.Option(False, "--2d", help="RGB PNG pictures instead of volumes."),
) -> None:
    """Write a deterministic synthetic dataset in MSD format."""
    from autoseg import api

    root = api.demo_data(output, task_name=task_name, cases=cases,
                         shape=parse_numbers(shape, int, "--shape", "comma-separated numbers"),
                         spacing=parse_numbers(spacing, float, "--spacing", "comma-separated numbers"),
                         modality=modality, channels=channels, seed=seed, two_d=two_d)
    typer.echo(f"wrote {cases} training cases to {root}")


@command("check")
def check(
    task: str = typer.Argument(..., help="Task name under raw/ or a dataset folder."),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
) -> None:
    """Validate a dataset: list every problem with its case and file."""
    from autoseg import api

    with progress_bar(None, "case", "check") as bar:
        report = api.check(task, workers=workers, home=state.workspace.home, progress=advance(bar))
    for problem in report.problems:
        typer.echo(str(problem))
    if report.problems:
        fail(f"{len(report.problems)} problem(s) in {report.root}")
    typer.echo(f"{report.dataset_name}: {report.num_cases} training cases, no problems found")


@command("fingerprint")
def fingerprint(
    task: str = typer.Argument(..., help="Task name under raw/ or a dataset folder."),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
) -> None:
    """Extract the dataset fingerprint (reused when the dataset has not changed)."""
    from autoseg import api

    with progress_bar(None, "case", "fingerprint") as bar:
        result = api.fingerprint(task, workers=workers, home=state.workspace.home, progress=advance(bar))
    typer.echo(f"{'reused' if result.reused else 'wrote'} {result.path}")
    typer.echo(f"  cases {result.fingerprint.num_cases}, median spacing "
               f"{[round(s, 3) for s in result.fingerprint.median_spacing]} mm, "
               f"median cropped shape {[int(s) for s in result.fingerprint.median_cropped_shape]}")


# -------------------------------------------------------------------------------- model selection


def _parse_regions(regions: str) -> list[tuple[int, ...]]:
    try:
        return [tuple(int(v) for v in region.split("+")) for region in regions.split(",")]
    except ValueError:
        fail(f"--regions: expected regions like 1+2+3,2+3, got {regions!r}")


@command("evaluate")
def evaluate(
    predictions: Path = typer.Argument(..., help="Folder of predicted segmentations."),
    references: Path = typer.Argument(..., help="Folder of reference segmentations (same file names)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels; default: --task's, else "
                                         "those found in the files (named by the planned task when all are its)."),
    regions: Optional[str] = typer.Option(None, "--regions", help="Unions of labels to score as one mask, e.g. "
                                          "1+2+3,2+3; default: the task's dataset.json \"regions\"."),
    task: Optional[str] = typer.Option(None, "--task", help="Score this task's labels; default: see --labels."),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
    pixel_spacing: Optional[str] = typer.Option(None, "--pixel-spacing", help="Pixel size in mm of picture files "
                                                "(.png, ...): Y,X or one number; default: the task's dataset.json "
                                                "\"pixel_spacing\" (unless only --labels is given), else 1."),
) -> None:
    """Dice, IoU/VOE, RVD, precision, recall, ASSD, HD95 and max surface distance per case and label.

    Distances are in mm (the reference's spacing; pictures hold none: --pixel-spacing, or pixels).
    Both masks empty: Dice 1, distances 0. One empty: Dice 0, distances NaN (null in summary.json),
    left out of the means and counted as excluded. Writes summary.json and summary.csv into the
    prediction folder. Without --task and --labels: the labels found in the files, named (with the
    task's regions and pixel spacing) by the planned task only when they are all its labels.
    """
    from autoseg import api

    run = api.evaluate(
        predictions, references, task=task, workers=workers, home=state.workspace.home,
        labels=parse_numbers(labels, int, "--labels", "comma-separated label numbers") if labels else None,
        regions=_parse_regions(regions) if regions else None,
        pixel_spacing=None if pixel_spacing is None else
        parse_numbers(pixel_spacing, float, "--pixel-spacing", "Y,X or one number, positive mm"))
    if run.label_choice.found is not None:  # neither --labels nor --task: say which were scored
        typer.echo(run.label_choice.describe())
    if run.pixel_spacing is not None:
        typer.echo(f"picture pixels taken as {run.pixel_spacing[0]:g} x {run.pixel_spacing[1]:g} mm (y x) for the "
                   "surface distances")
    typer.echo(run.summary.format_table())
    typer.echo(f"wrote {run.summary_files[0]} and {run.summary_files[1]}")


@command("ensemble")
def ensemble(
    folders: List[Path] = typer.Argument(..., help="Prediction folders with saved probabilities, then OUT_DIR."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities"),
) -> None:
    """Average the saved probabilities of several prediction folders and write segmentations."""
    from autoseg import api

    written = api.ensemble(folders[:-1], folders[-1], save_probabilities=save_probabilities)
    typer.echo(f"wrote {len(written)} ensembled segmentations to {folders[-1]}")


@command("postprocess")
def postprocess(
    input_folder: Path = typer.Argument(..., help="Folder of segmentations."),
    output_folder: Path = typer.Argument(...),
    decision_file: Optional[Path] = typer.Option(None, "--decision", help="postprocessing.json; default: the task's."),
    task: Optional[str] = typer.Option(None, "--task"),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
) -> None:
    """Apply the largest-connected-component postprocessing chosen by cross-validation."""
    from autoseg import api

    result = api.postprocess(input_folder, output_folder, decision_file=decision_file, task=task, workers=workers,
                             home=state.workspace.home)
    typer.echo(f"postprocessed {len(result.written)} segmentations into {output_folder} "
               f"(whole foreground: {result.decision.whole_foreground}, labels: {result.decision.per_label or 'none'})")


# ------------------------------------------------------------------------------------- planning


@command("plan")
def plan(
    task: Optional[str] = typer.Argument(None, help="Task name under raw/ or a dataset folder."),
    fingerprint_file: Optional[Path] = typer.Option(None, "--fingerprint",
                                                    help="Plan from a fingerprint file alone (no images)."),
    gpu_memory: float = typer.Option(8.0, "--gpu-memory", min=0.5, help="Memory budget (GB) the plan is sized for."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget",
                                              help="Train one fold of each configuration within this time on "
                                                   "this machine, e.g. 15m, 2h, 1h30m."),
    device: str = typer.Option("auto", "--device", help="With --time-budget: the device to plan for (auto, cpu, "
                                                        "cuda, mps)."),
    remeasure: bool = typer.Option(False, "--remeasure", help="With --time-budget: measure the device again."),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
) -> None:
    """Plan preprocessing, networks and batch sizes from the dataset fingerprint; print a summary."""
    from autoseg.fingerprint import Fingerprint, load_or_extract
    from autoseg.planning import format_plan_summary, plan_experiment
    from autoseg.planning.plans import keep_user_configurations

    workspace = state.workspace
    if fingerprint_file is not None:
        if task is not None:
            fail("give either TASK or --fingerprint, not both")
        fingerprint = Fingerprint.load(fingerprint_file)
        name, dataset_folder = fingerprint.dataset_name, None
    else:
        if task is None:
            fail("missing TASK (a name under raw/ or a dataset folder), or --fingerprint FILE")
        from autoseg.dataset import load_dataset

        dataset = load_dataset(workspace.dataset_folder(task))
        name, dataset_folder = dataset.root.name, dataset.root
        with progress_bar(len(dataset.cases), "case", "fingerprint") as bar:
            fingerprint, _ = load_or_extract(dataset, workspace.fingerprint_file(name), workers,
                                             on_case_done=lambda _: bar.update())
    plans = plan_experiment(fingerprint, gpu_memory_gb=gpu_memory)
    if time_budget is not None:
        plans = _fit_time_budget(plans, time_budget, device, fingerprint.num_cases, remeasure=remeasure)
    plans, kept, dropped = keep_user_configurations(plans, _previous_configurations(workspace.plans_file(name)))
    path = plans.save(workspace.plans_file(name))
    typer.echo(format_plan_summary(plans))
    for configuration in kept:
        typer.echo(f"kept your configuration {configuration} from the previous plans.json")
    for reason in dropped:
        typer.echo(f"warning: dropped configuration {reason}", err=True)
    typer.echo(f"wrote {path}")
    if dataset_folder is not None:
        workspace.remember_task(name, dataset_folder)
        typer.echo(f"current task: {name}")


def _previous_configurations(plans_file: Path) -> dict:
    """The configuration entries of an existing plans.json as stored; {} when there is none or it is
    unreadable (re-planning is how a broken plan is replaced)."""
    from autoseg.artifacts import read_json

    if not plans_file.is_file():
        return {}
    try:
        entries = read_json(plans_file).get("configurations")
    except (AutosegError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _fit_time_budget(plans, time_budget: str, device: str, num_cases: int, *, remeasure: bool = False,
                     configurations: Optional[List[str]] = None):
    """Plans whose configurations train one fold within `time_budget` on `device` (measured once, cached)."""
    from autoseg.planning.time_budget import parse_duration
    from autoseg.budget.compute_aware import measure_speeds, plan_within_budget
    from autoseg.device import device_type

    seconds = parse_duration(time_budget)
    resolved_device = device_type(device)
    cache = state.workspace.device_speed_file

    def on_measure(dimension: int, precision: str) -> None:
        typer.echo(f"device speed: {dimension}D networks on {resolved_device} at {precision} "
                   f"(measured once per machine, cached in {cache})")

    speeds = measure_speeds(plans, resolved_device, cache, refresh=remeasure, on_measure=on_measure)
    budgeted, _ = plan_within_budget(plans, seconds, speeds, num_training_cases=num_cases,
                                     configurations=configurations)
    return budgeted


@command("preprocess")
def preprocess(
    task: Optional[str] = typer.Argument(None, help="Task; default: the task planned last."),
    configurations: Optional[List[str]] = typer.Option(None, "-c", "--config", help="Configurations (default: all)."),
    workers: int = typer.Option(2, "-j", "--workers", min=0,
                                help="Worker processes (capped by free memory and case size); 0: in-process."),
) -> None:
    """Crop, normalize, resample and store every case for the planned configurations (resumable)."""
    from autoseg import api

    with progress_bar(None, "case", "preprocess") as bar:
        summaries = api.preprocess(task, configurations=configurations, workers=workers, home=state.workspace.home,
                                   progress=lambda data_id, case_id, outcome: bar.update())
    failed = 0
    for data_identifier, summary in summaries.items():
        typer.echo(f"{data_identifier}: {len(summary.written)} written, {len(summary.skipped)} up to date, "
                   f"{len(summary.failures)} failed ({summary.workers} worker(s))")
        for failure in summary.failures:
            typer.echo(f"  {failure.case_id}: {failure.error}", err=True)
        failed += len(summary.failures)
    if failed:
        fail(f"{failed} case(s) failed to preprocess")


# ------------------------------------------------------------------------------------- training


def _within_budget(plans) -> list[str]:
    """Configurations not marked over_budget (all of them for a plan without a time budget)."""
    return [n for n in plans.configuration_names if plans.configuration(n).over_budget is None]


def _default_configuration(plans) -> str:
    """3d_fullres, else 2d, else the first configuration; among those within the time budget, if any."""
    fitting = _within_budget(plans)
    for name in ("3d_fullres", "2d"):
        if name in fitting:
            return name
    return (fitting or plans.configuration_names)[0]


def _over_budget_refusal(plans, configuration: str, over_budget) -> str:
    from autoseg.planning.time_budget import format_duration

    fitting = _within_budget(plans)
    return (f"{configuration} does not fit the plan's time budget of {format_duration(over_budget.time_budget_seconds)}: "
            f"one fold needs at least {format_duration(over_budget.minimum_budget_seconds)} on "
            f"{over_budget.device}; train {' or '.join(fitting) or 'another configuration'} instead, re-plan with "
            f"--time-budget {format_duration(over_budget.minimum_budget_seconds)} or more, or give --epochs to "
            "train it anyway")


def _init_distributed_from_torchrun(device: str = "auto"):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; read them here, at the boundary, not in the core.
    One GPU per rank over NCCL when CUDA is there (and --device is not cpu), else CPU ranks over gloo."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return "cpu"


def _launch_torchrun(gpus: int) -> None:
    import subprocess

    import torch

    if torch.cuda.is_available() and gpus > torch.cuda.device_count():
        fail(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) are visible")

    arguments = [a for a in sys.argv[1:]]
    for flag in ("--gpus",):  # drop "--gpus N" / "--gpus=N" so the children train normally
        while flag in arguments:
            index = arguments.index(flag)
            del arguments[index:index + 2]
        arguments = [a for a in arguments if not a.startswith(flag + "=")]
    command_line = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                    "-m", "autoseg.cli", *arguments]
    raise typer.Exit(subprocess.call(command_line))


@command("train")
def train(
    configuration: Optional[str] = typer.Argument(None, help="Configuration (default 3d_fullres, else 2d; among "
                                                  "those within the plan's time budget, if it has one)."),
    fold: str = typer.Option("0", "--fold", "-f", help="Fold number or 'all'."),
    task: Optional[str] = typer.Option(None, "--task"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1,
                                         help="Default: the plan's time budget's, else 1000."),
    iterations: Optional[int] = typer.Option(None, "--iterations", min=1,
                                             help="Training iterations per epoch (default: the plan's, else 250)."),
    validation_iterations: Optional[int] = typer.Option(None, "--val-iterations", min=1),
    time_budget: Optional[str] = typer.Option(None, "--time-budget",
                                              help="Re-plan this configuration to train within this time "
                                                   "(e.g. 15m, 2h) on this machine, then train."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="Augmentation worker processes (0: in-process; default from the "
                                               "device, CPU count and free memory)."),
    device: str = typer.Option("auto", "--device", help="auto, cuda, cpu or mps."),
    precision: str = typer.Option("auto", "--precision",
                                  help="auto (the plan's choice, confirmed on the first epochs), fp32, bf16 or fp16."),
    resume: bool = typer.Option(False, "--resume", help="Continue from checkpoint_latest.pt."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Train on N GPUs with DistributedDataParallel (torchrun); without a GPU (or with --device cpu), "
                                     "N CPU processes over gloo."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Predict and score the fold's cases."),
) -> None:
    """Train one fold of a configuration; checkpoints, progress.png and validation in results/."""
    if gpus > 1:
        _launch_torchrun(gpus)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        fail(f"--precision {precision!r}: expected auto, fp32, bf16 or fp16")
    from autoseg.planning import Plans
    from autoseg.budget.compute_aware import training_schedule
    from autoseg.training.splits import fold_cases, load_or_create_splits
    from autoseg.training.job import TrainingEvents, TrainingJob, TrainingSettings
    from autoseg.training.trainer import run_training
    from autoseg.training.progress import format_epoch

    distributed_device = _init_distributed_from_torchrun(device)
    is_main = distributed_device is None or __import__("torch.distributed").distributed.get_rank() == 0
    workspace = state.workspace
    name = resolve_task(task)[0]
    plans = Plans.load(workspace.plans_file(name))
    configuration = configuration or _default_configuration(plans)
    if time_budget is not None and is_main:
        plans = _replan_for_budget(name, plans, configuration, fold, time_budget, distributed_device or device)
    elif time_budget is not None:
        plans = Plans.load(workspace.plans_file(name))  # rank 0 re-plans (ranks start together under torchrun)
    config = plans.configuration(configuration)
    if config.over_budget is not None and epochs is None and not resume:
        fail(_over_budget_refusal(plans, configuration, config.over_budget))
    if resume:  # a resumed run keeps its own schedule unless told otherwise
        epochs, iterations, validation_iterations = _resumed_schedule(
            workspace.results(name) / configuration / f"fold_{fold}", epochs, iterations, validation_iterations)
    schedule = training_schedule(config.budget, epochs=epochs, iterations=iterations,
                                 validation_iterations_per_epoch=validation_iterations, precision=precision)
    data_folder = workspace.preprocessed(name) / config.data_identifier
    case_ids = sorted(p.name[:-len(".json")] for p in data_folder.glob("*.json"))
    if not case_ids:
        fail(f"{data_folder}: no preprocessed cases; run `autoseg preprocess` first")
    splits = load_or_create_splits(workspace.results(name) / "splits.json", case_ids)
    train_ids, val_ids = fold_cases(splits, fold, case_ids)
    configuration_folder = workspace.results(name) / configuration
    output = configuration_folder / f"fold_{fold}"
    job = TrainingJob(plans, configuration, fold, data_folder, workspace.task_results(name), train_ids, val_ids,
                      resume=resume)
    settings = TrainingSettings(epochs=schedule.epochs, iterations_per_epoch=schedule.iterations_per_epoch,
                                validation_iterations=schedule.validation_iterations,
                                num_workers=_training_workers(workers, config, distributed_device or device),
                                device=distributed_device or device, precision=schedule.precision,
                                confirm_precision=schedule.confirm_precision,
                                expected_epoch_seconds=schedule.expected_epoch_seconds,
                                cpu_threads=_cpu_threads(distributed_device),
                                seed=seed, checkpoint_every=checkpoint_every)
    bar = None

    def on_iteration(done, total):
        nonlocal bar
        if not is_main:
            return
        if bar is None:
            bar = progress_bar(total, "it", "epoch")
        bar.update(1)
        if done == total:
            bar.close()
            bar = None

    events = TrainingEvents(on_message=lambda m: is_main and typer.echo(m),
                            on_iteration=on_iteration,
                            on_epoch_end=lambda record: is_main and typer.echo(format_epoch(record)))
    if is_main:
        typer.echo(f"training {name} {configuration} fold {fold}: {len(train_ids)} training / {len(val_ids)} "
                   f"validation cases, {settings.epochs} epochs x {settings.iterations_per_epoch} iterations, "
                   f"patch {config.patch_size}, batch {config.batch_size}, {settings.num_workers} worker(s), "
                   f"precision {settings.precision}")
        if config.budget is not None:
            from autoseg.planning.time_budget import format_duration

            typer.echo(f"  planned for {format_duration(config.budget.time_budget_seconds)} on "
                       f"{config.budget.device}: predicted {format_duration(config.budget.seconds_per_fold)} "
                       f"per fold")
    import time

    started = time.perf_counter()
    run_training(job, settings, events)
    if not is_main:
        return
    typer.echo(f"checkpoints and progress.png in {output}")
    if validate:
        from autoseg.training.validation import validate_fold

        with progress_bar(len(val_ids), "case", "validation") as vbar:
            summary = validate_fold(plans, configuration, workspace.task_results(name), fold, data_folder,
                                    workspace.preprocessed(name) / "gt_segmentations", val_ids,
                                    device=distributed_device or device, use_tta=schedule.final_validation_mirroring,
                                    on_case=lambda _: vbar.update())
        typer.echo(summary.format_table())
    if config.budget is not None and not resume and epochs is None and iterations is None:
        from autoseg.training.expectations import timing_report

        text, _ = timing_report("time for the fold" + (" (validation included)" if validate else ""),
                                config.budget.seconds_per_fold - (0 if validate else
                                                                     config.budget.seconds_final_validation),
                                time.perf_counter() - started)
        typer.echo(text)


def _resumed_schedule(fold_folder: Path, epochs: Optional[int], iterations: Optional[int],
                      validation_iterations: Optional[int]) -> tuple:
    """(epochs, iterations, validation iterations): those given, else the checkpoint's in fold_folder."""
    from autoseg.checkpoint import resume_schedule

    stored = resume_schedule(fold_folder)
    return (epochs or stored.get("epochs"), iterations or stored.get("iterations_per_epoch"),
            validation_iterations or stored.get("validation_iterations"))


def _training_workers(requested: Optional[int], config, device: str) -> int:
    """--workers, else the default for this device, CPU count and free memory (autoseg.hardware)."""
    if requested is not None:
        return requested
    import math

    from autoseg.hardware import available_memory_bytes, training_workers, usable_cpus
    from autoseg.device import device_type

    batch_bytes = 4 * config.batch_size * (config.architecture.input_channels + 1) * math.prod(config.patch_size)
    return training_workers(device_type(device.split(":")[0]), usable_cpus(), available_memory_bytes(), batch_bytes)


def _cpu_threads(distributed_device: Optional[str]) -> Optional[int]:
    """Intra-op threads for CPU training: every usable CPU (one process), or a share of them per rank."""
    from autoseg.hardware import usable_cpus

    if distributed_device is None:
        return usable_cpus()
    import torch.distributed as dist

    return max(1, usable_cpus() // dist.get_world_size())


def _replan_for_budget(name: str, plans, configuration: str, fold: str, time_budget: str, device: str):
    """plans.json with `configuration` re-planned from the fingerprint to train within `time_budget`.

    Refused for a configuration that inherits its network (plan the parent with `autoseg plan
    --time-budget`) and when other folds were trained with the current network (they could no longer be
    ensembled with this one).
    """
    from dataclasses import replace

    from autoseg.fingerprint import Fingerprint
    from autoseg.planning import plan_experiment
    from autoseg.checkpoint import identity_of_configuration

    workspace = state.workspace
    if plans.configurations[configuration].get("inherits_from"):
        fail(f"--time-budget: {configuration} inherits its network from "
             f"{plans.configurations[configuration]['inherits_from']}; plan both with `autoseg plan TASK "
             f"--time-budget {time_budget}`")
    fresh = plan_experiment(Fingerprint.load(workspace.fingerprint_file(name)), gpu_memory_gb=plans.gpu_memory_gb)
    if configuration not in fresh.configurations:
        fail(f"--time-budget: {configuration} is not a configuration autoseg plans for {name}")
    budgeted = _fit_time_budget(fresh, time_budget, device, Fingerprint.load(workspace.fingerprint_file(name)).num_cases,
                                configurations=[configuration])
    entries = dict(plans.configurations)
    entries[configuration] = budgeted.configurations[configuration]
    replanned = replace(plans, configurations=entries)
    if identity_of_configuration(replanned, configuration) != identity_of_configuration(plans, configuration):
        trained = sorted(p.parent.name for p in (workspace.results(name) / configuration).glob("fold_*/checkpoint_final.pt")
                         if p.parent.name != f"fold_{fold}")
        if trained:
            fail(f"--time-budget: {', '.join(trained)} of {configuration} were trained with the current plan's network; "
                 f"re-planning would leave them unusable with this fold. Train without --time-budget, or re-plan "
                 f"with `autoseg plan --time-budget` and train every fold again")
    replanned.save(workspace.plans_file(name))
    typer.echo(f"re-planned {configuration} for {time_budget} per fold; wrote {workspace.plans_file(name)}")
    return replanned


@command("find-best")
def find_best_command(
    task: Optional[str] = typer.Option(None, "--task"),
    configurations: Optional[List[str]] = typer.Option(None, "-c", "--config", help="Default: every trained one."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated; default: every fold of splits.json."),
    no_ensembles: bool = typer.Option(False, "--no-ensembles", help="Compare single configurations only."),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
) -> None:
    """Pick the best configuration (or pair ensemble) by cross-validation Dice, then decide postprocessing."""
    from autoseg import api

    result = api.find_best(task=task, configurations=configurations or None,
                           folds=folds.split(",") if folds else None, allow_ensembles=not no_ensembles,
                           workers=workers, home=state.workspace.home)
    typer.echo(result.selection.format_table())
    decision = result.postprocessing
    typer.echo(f"postprocessing: largest component of the whole foreground {decision.whole_foreground}, "
               f"of labels {decision.per_label or 'none'} (foreground Dice {decision.foreground_dice_before:.4f} -> "
               f"{decision.foreground_dice_after:.4f})")
    typer.echo(f"`autoseg predict` now uses {' + '.join(result.selection.chosen)}")


# ------------------------------------------------------------------------------------ inference


def _parse_part(part: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in part.split("/"))
    except ValueError:
        fail(f"--part {part!r}: expected I/N, e.g. 0/4")
    return index, count


class _PredictionReport:
    """What `autoseg predict` prints besides each case: the models, the window rate every 30 s inside a long
    case (a CT on a CPU: minutes), the totals."""

    def __init__(self, use_tta: bool):
        self.use_tta = use_tta
        self.started = self.shown_at = 0.0  # from when the models are loaded: loading is not prediction time
        self.first, self.last = (0, 0.0), 0  # (windows, time) at a case's first batch; windows last seen

    def on_models(self, models) -> None:
        names = " + ".join(f"{m.configuration_name} (folds {','.join(m.folds)})" for m in models)
        typer.echo(f"predicting with {names}, TTA {'on' if self.use_tta else 'off'}")
        self.started = self.shown_at = time.perf_counter()
        self.first = (0, self.started)

    def on_windows(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done <= self.last or self.first[0] == 0:  # a new case's first batch
            self.first = (done, now)
        self.last = done
        if now - self.shown_at > 30 and self.first[0] < done < total:
            self.shown_at = now
            rate = (done - self.first[0]) / max(now - self.first[1], 1e-9)
            typer.echo(f"    {done}/{total} windows ({rate:.3g} windows/s)")

    def finished(self, summary) -> None:
        typer.echo(f"{len(summary.written)} written, {len(summary.skipped)} skipped, {len(summary.failures)} failed "
                   f"in {time.perf_counter() - self.started:.1f} s ({summary.windows} windows, "
                   f"{summary.windows_per_second:.3g} windows/s)")


@command("predict")
def predict(
    input_path: Path = typer.Argument(..., help="Folder of images (or one image file)."),
    output_folder: Path = typer.Argument(...),
    task: Optional[str] = typer.Option(None, "--task"),
    configuration: Optional[str] = typer.Option(None, "--config", help="Default: find-best's choice."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated folds; default: every trained fold."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, best or latest."),
    step_size: float = typer.Option(0.5, "--step-size", min=0.05, max=1.0),
    no_tta: bool = typer.Option(False, "--no-tta", help="Skip mirror test-time augmentation (8x faster in 3D)."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16."),
    batch_windows: Optional[int] = typer.Option(None, "--batch-windows", min=1),
    overwrite: bool = typer.Option(False, "--overwrite"),
    part: str = typer.Option("0/1", "--part", help="I/N: predict every N-th case starting at I."),
    postprocess: bool = typer.Option(True, "--postprocess/--no-postprocess"),
) -> None:
    """Segment images: sliding window, Gaussian weighting, mirror TTA, fold ensemble, postprocessing."""
    from autoseg import api

    report = _PredictionReport(use_tta=not no_tta)
    summary = api.predict(input_path, output_folder, task=task, configuration=configuration,
                          folds=folds.split(",") if folds else None, checkpoint=checkpoint, step_size=step_size,
                          use_tta=not no_tta, save_probabilities=save_probabilities, device=device,
                          precision=precision, batch_windows=batch_windows, overwrite=overwrite,
                          part=_parse_part(part), postprocess=postprocess, home=state.workspace.home,
                          on_models=report.on_models, progress=report.on_windows,
                          on_case=lambda case_id, status: typer.echo(f"  {case_id}: {status}"))
    report.finished(summary)
    if summary.failures:
        fail(f"{len(summary.failures)} case(s) failed: " + "; ".join(f"{c}: {e}" for c, e in summary.failures.items()))


if __name__ == "__main__":
    app()
