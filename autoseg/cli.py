"""The `autoseg` command line: parse, call the stage's core function, print.

Heavy imports (torch, SimpleITK) happen inside the commands so `autoseg --help` is instant.
Any AutosegError becomes one line on stderr and exit code 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
import sys
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
    from autoseg.demo import DemoSpec, make_demo_dataset

    def numbers(text, kind, name):
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            fail(f"--{name}: expected comma-separated numbers, got {text!r}")
        return values

    shape_values = numbers(shape, int, "shape")
    if two_d and len(shape_values) == 2:
        shape_values = [1, *shape_values]
    spacing_values = numbers(spacing, float, "spacing")
    if len(shape_values) != 3 or len(spacing_values) != 3:
        fail("--shape and --spacing take three values (z,y,x)")
    if modality.upper() not in ("CT", "MRI"):
        fail(f"--modality: expected CT or MRI, got {modality!r}")
    spec = DemoSpec(cases=cases, shape=tuple(shape_values), spacing=tuple(spacing_values),
                    modality=modality.upper(), channels=3 if two_d else channels, seed=seed, two_d=two_d)
    root = make_demo_dataset(output, task_name, spec)
    typer.echo(f"wrote {cases} training cases to {root}")


@command("check")
def check(
    task: str = typer.Argument(..., help="Task name under raw/ or a dataset folder."),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
) -> None:
    """Validate a dataset: list every problem with its case and file."""
    from autoseg.check import check_dataset
    from autoseg.dataset import load_dataset

    dataset = load_dataset(state.workspace.dataset_folder(task), strict=False)  # bad entries become problems
    with progress_bar(len(dataset.cases), "case", "check") as bar:
        problems = check_dataset(dataset, workers, on_case_done=lambda: bar.update())
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        fail(f"{len(problems)} problem(s) in {dataset.root}")
    typer.echo(f"{dataset.name}: {len(dataset.cases)} training cases, no problems found")


@command("fingerprint")
def fingerprint(
    task: str = typer.Argument(..., help="Task name under raw/ or a dataset folder."),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
) -> None:
    """Extract the dataset fingerprint (reused when the dataset has not changed)."""
    from autoseg.dataset import load_dataset
    from autoseg.fingerprint import load_or_extract

    dataset = load_dataset(state.workspace.dataset_folder(task))
    path = state.workspace.fingerprint_file(dataset.root.name)
    with progress_bar(len(dataset.cases), "case", "fingerprint") as bar:
        result, reused = load_or_extract(dataset, path, workers, on_case_done=lambda _: bar.update())
    typer.echo(f"{'reused' if reused else 'wrote'} {path}")
    typer.echo(f"  cases {result.num_cases}, median spacing {[round(s, 3) for s in result.median_spacing]} mm, "
               f"median cropped shape {[int(s) for s in result.median_cropped_shape]}")


# -------------------------------------------------------------------------------- model selection


def _labels_for(labels: Optional[str], task: Optional[str], predictions: Path, references: Path,
                workers: int) -> tuple[dict[int, str], Path | None]:
    """The labels to score and the dataset folder whose dataset.json (pixel spacing, regions) applies, or None.

    --labels "1,2": those (with --task, that task's dataset folder); --task: the task's labels; neither:
    the labels found in the files, or the planned task's when they are all its own.
    """
    from autoseg.dataset import load_dataset

    if labels:
        try:
            parsed = {int(v): str(v) for v in labels.split(",")}
        except ValueError:
            fail(f"--labels: expected comma-separated label numbers, got {labels!r}")
        return parsed, resolve_task(task)[1] if task is not None else None
    if task is not None:
        _, folder = resolve_task(task)
        return load_dataset(folder).labels, folder
    return _labels_found_or_planned(predictions, references, workers)


def _labels_found_or_planned(predictions: Path, references: Path, workers: int) -> tuple[dict[int, str], Path | None]:
    """The labels found in the files, or the planned task's (and its dataset folder) when they are all its own."""
    from autoseg.dataset import load_dataset
    from autoseg.errors import WorkspaceError
    from autoseg.evaluation import labels_found, labels_to_score

    found = labels_found(predictions, references, workers)
    try:
        planned_task, planned_folder = resolve_task(None)
    except WorkspaceError:  # no task planned in this workspace
        planned_task, planned_folder = None, None
    task_labels = load_dataset(planned_folder).labels if planned_folder is not None else None
    choice = labels_to_score(found, task_labels, where=f"{predictions} and {references}")
    found_text = ", ".join(str(v) for v in found) or "none"
    if not choice.from_task:
        typer.echo(f"scoring labels found in the files: {found_text}")
        return choice.labels, None
    typer.echo(f"scoring the labels of the planned task {planned_task} (labels found in the files: {found_text})")
    return choice.labels, planned_folder


def _regions_for(regions: Optional[str], labels: Optional[str], dataset_folder: Path | None,
                 label_names: dict[int, str]) -> dict[str, tuple[int, ...]]:
    """Regions from --regions "1+2+3,2+3"; else, unless --labels was given, the dataset.json "regions"."""
    if regions:
        try:
            parsed = [tuple(int(v) for v in region.split("+")) for region in regions.split(",")]
        except ValueError:
            fail(f"--regions: expected regions like 1+2+3,2+3, got {regions!r}")
        return {"+".join(label_names.get(v, str(v)) for v in region): region for region in parsed}
    if labels or dataset_folder is None:
        return {}
    from autoseg.evaluation import regions_of_dataset

    return regions_of_dataset(dataset_folder, label_names)


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
    import math

    from autoseg.dataset import load_dataset
    from autoseg.evaluation import evaluate_folder

    label_names, dataset_folder = _labels_for(labels, task, predictions, references, workers)
    spacing = None
    if pixel_spacing is not None:
        try:
            values = [float(v) for v in pixel_spacing.split(",")]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
            fail(f"--pixel-spacing: expected Y,X or one number, positive mm, got {pixel_spacing!r}")
        spacing = (values[0], values[-1])
    elif dataset_folder is not None:
        spacing = load_dataset(dataset_folder).pixel_spacing
    summary = evaluate_folder(predictions, references, label_names,
                              regions=_regions_for(regions, labels, dataset_folder, label_names), workers=workers,
                              pixel_spacing=spacing)
    json_path, csv_path = summary.save(predictions)
    if spacing is not None:
        typer.echo(f"picture pixels taken as {spacing[0]:g} x {spacing[1]:g} mm (y x) for the surface distances")
    typer.echo(summary.format_table())
    typer.echo(f"wrote {json_path} and {csv_path}")


@command("ensemble")
def ensemble(
    folders: List[Path] = typer.Argument(..., help="Prediction folders with saved probabilities, then OUT_DIR."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities"),
) -> None:
    """Average the saved probabilities of several prediction folders and write segmentations."""
    from autoseg.ensembling import ensemble_folders

    if len(folders) < 3:
        fail("ensemble needs at least two input folders and an output folder")
    written = ensemble_folders(folders[:-1], folders[-1], save_probabilities=save_probabilities)
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
    from autoseg.postprocessing import PostprocessingDecision, postprocess_folder

    if decision_file is None:
        name, _ = resolve_task(task)
        decision_file = state.workspace.results(name) / "postprocessing.json"
    decision = PostprocessingDecision.load(decision_file)
    written = postprocess_folder(input_folder, output_folder, decision, workers)
    typer.echo(f"postprocessed {len(written)} segmentations into {output_folder} "
               f"(whole foreground: {decision.whole_foreground}, labels: {decision.per_label or 'none'})")


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
    from autoseg.planning import format_plan_summary
    from autoseg.stages.plan import plan_task

    fingerprinting = _StepBar("case", "fingerprint")
    try:
        result = plan_task(state.workspace, task, fingerprint_file, gpu_memory_gb=gpu_memory, time_budget=time_budget,
                           device=device, remeasure=remeasure, workers=workers, on_case_done=fingerprinting.step,
                           on_measure=_show_speed_lookup)
    finally:
        fingerprinting.close()
    typer.echo(format_plan_summary(result.plans))
    for configuration in result.kept:
        typer.echo(f"kept your configuration {configuration} from the previous plans.json")
    for reason in result.dropped:
        typer.echo(f"warning: dropped configuration {reason}", err=True)
    typer.echo(f"wrote {result.plans_file}")
    if result.dataset_folder is not None:
        typer.echo(f"current task: {result.task_name}")


class _StepBar:
    """A progress bar opened at the first step, when the total is known, and closed after the last."""

    def __init__(self, unit: str, description: str):
        self.unit, self.description = unit, description
        self.bar = None

    def step(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(total, self.unit, self.description)
        self.bar.update(1)
        if done == total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _show_speed_lookup(lookup) -> None:
    """One line per device speed lookup of compute-aware planning (a measurement not cached takes a while)."""
    typer.echo(f"device speed: {lookup.dimension}D networks on {lookup.device} at {lookup.precision} "
               f"(measured once per machine, cached in {lookup.cache_file})")


@command("preprocess")
def preprocess(
    task: Optional[str] = typer.Argument(None, help="Task; default: the task planned last."),
    configurations: Optional[List[str]] = typer.Option(None, "-c", "--config", help="Configurations (default: all)."),
    workers: int = typer.Option(2, "-j", "--workers", min=0,
                                help="Worker processes (capped by free memory and case size); 0: in-process."),
) -> None:
    """Crop, normalize, resample and store every case for the planned configurations (resumable)."""
    from autoseg.dataset import load_dataset
    from autoseg.planning import Plans
    from autoseg.preprocessing.task import preprocess_task

    name, folder = resolve_task(task)
    if folder is None:
        fail(f"task {name}: no dataset folder known; pass the dataset folder as TASK")
    dataset = load_dataset(folder)
    plans = Plans.load(state.workspace.plans_file(name))
    with progress_bar(None, "case", "preprocess") as bar:
        summaries = preprocess_task(dataset, plans, state.workspace.preprocessed(name),
                                    configurations=configurations, workers=workers,
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


def _init_distributed_from_torchrun(device: str = "auto"):
    """This process's DistributedRank under torchrun (None without it), its process group initialised.

    torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; read them here, at the boundary, not in the core.
    One GPU per rank over NCCL when CUDA is there (and --device is not cpu), else CPU ranks over gloo."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    from autoseg.stages.train import DistributedRank

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        rank_device = f"cuda:{local_rank}"
    else:
        dist.init_process_group("gloo")
        rank_device = "cpu"
    return DistributedRank(rank_device, rank=dist.get_rank(), world_size=dist.get_world_size())


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
    from autoseg.stages.train import TrainRequest

    if gpus > 1:
        _launch_torchrun(gpus)
    _train_and_show(TrainRequest(configuration=configuration, fold=fold, task=task, epochs=epochs,
                                 iterations=iterations, validation_iterations=validation_iterations,
                                 time_budget=time_budget, workers=workers, device=device, precision=precision,
                                 resume=resume, seed=seed, checkpoint_every=checkpoint_every, validate=validate,
                                 distributed=_init_distributed_from_torchrun(device)))


def _train_and_show(request) -> None:
    """train_fold with its progress shown as it goes, then the fold's validation and timing report."""
    from autoseg.stages.train import train_fold

    display = _TrainingDisplay(request)
    try:
        result = train_fold(state.workspace, request, display.training_events(), on_measure=_show_speed_lookup,
                            on_replanned=display.replanned, on_start=display.start, on_trained=display.trained,
                            on_validation_case=display.validation_case)
    finally:
        display.close()
    if result.validation is not None:
        typer.echo(result.validation.format_table())
    if result.timing_report is not None:
        typer.echo(result.timing_report)


class _TrainingDisplay:
    """What `autoseg train` shows as it goes: lines and progress bars, from the main process only (the
    other torchrun ranks train quietly)."""

    def __init__(self, request):
        self.shown = request.is_main
        self.time_budget = request.time_budget
        self.validate = request.validate
        self.iterations = _StepBar("it", "epoch")
        self.validation_bar = None
        self.validation_cases = 0

    def training_events(self):
        from autoseg.training.trainer import TrainingEvents

        return TrainingEvents(on_message=self.line, on_iteration=self.iteration, on_epoch_end=self.epoch_end)

    def line(self, text: str) -> None:
        if self.shown:
            typer.echo(text)

    def iteration(self, done: int, total: int) -> None:
        if self.shown:
            self.iterations.step(done, total)

    def epoch_end(self, record: dict) -> None:
        from autoseg.training.progress import format_epoch

        if self.shown:
            typer.echo(format_epoch(record))

    def replanned(self, configuration: str, plans_file: Path) -> None:
        typer.echo(f"re-planned {configuration} for {self.time_budget} per fold; wrote {plans_file}")

    def start(self, setup) -> None:
        from autoseg.planning.time_budget import format_duration

        typer.echo(f"training {setup.task} {setup.configuration} fold {setup.fold}: {len(setup.train_ids)} training / "
                   f"{len(setup.val_ids)} validation cases, {setup.epochs} epochs x {setup.iterations_per_epoch} "
                   f"iterations, patch {setup.patch_size}, batch {setup.batch_size}, {setup.workers} worker(s), "
                   f"precision {setup.precision}")
        if setup.budget is not None:
            typer.echo(f"  planned for {format_duration(setup.budget.time_budget_seconds)} on {setup.budget.device}: "
                       f"predicted {format_duration(setup.budget.seconds_per_fold)} per fold")
        self.validation_cases = len(setup.val_ids)

    def trained(self, output_folder: Path) -> None:
        typer.echo(f"checkpoints and progress.png in {output_folder}")
        if self.validate:
            self.validation_bar = progress_bar(self.validation_cases, "case", "validation")

    def validation_case(self, case_id: str) -> None:
        self.validation_bar.update()

    def close(self) -> None:
        self.iterations.close()
        if self.validation_bar is not None:
            self.validation_bar.close()
            self.validation_bar = None


@command("find-best")
def find_best_command(
    task: Optional[str] = typer.Option(None, "--task"),
    configurations: Optional[List[str]] = typer.Option(None, "-c", "--config", help="Default: every trained one."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated; default: every fold of splits.json."),
    no_ensembles: bool = typer.Option(False, "--no-ensembles", help="Compare single configurations only."),
    workers: int = typer.Option(2, "-j", "--workers", min=1),
) -> None:
    """Pick the best configuration (or pair ensemble) by cross-validation Dice, then decide postprocessing."""
    from autoseg.planning import Plans
    from autoseg.postprocessing import PostprocessingDecision
    from autoseg.selection import find_best

    name, _ = resolve_task(task)
    plans = Plans.load(state.workspace.plans_file(name))
    results = state.workspace.results(name)
    result = find_best(results, state.workspace.preprocessed(name) / "gt_segmentations",
                       {int(v): n for v, n in plans.labels.items()}, configurations=configurations or None,
                       folds=folds.split(",") if folds else None, allow_ensembles=not no_ensembles, workers=workers,
                       pixel_spacing=plans.pixel_spacing)
    typer.echo(result.format_table())
    decision = PostprocessingDecision.load(results / "postprocessing.json")
    typer.echo(f"postprocessing: largest component of the whole foreground {decision.whole_foreground}, "
               f"of labels {decision.per_label or 'none'} (foreground Dice {decision.foreground_dice_before:.4f} -> "
               f"{decision.foreground_dice_after:.4f})")
    typer.echo(f"`autoseg predict` now uses {' + '.join(result.chosen)}")


# ------------------------------------------------------------------------------------ inference


def _parse_part(part: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in part.split("/"))
    except ValueError:
        fail(f"--part {part!r}: expected I/N, e.g. 0/4")
    return index, count


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
    import time

    from autoseg.api import load_models, predict_with_models
    from autoseg.inference.predictor import PredictionSettings

    if precision not in ("auto", "fp32", "bf16", "fp16"):
        fail(f"--precision {precision!r}: expected auto, fp32, bf16 or fp16")
    models = load_models(state.workspace, task, [configuration] if configuration else None,
                         folds=folds.split(",") if folds else None, checkpoint=checkpoint, device=device,
                         postprocess=postprocess)
    settings = PredictionSettings(step_fraction=step_size, use_tta=not no_tta, batch_windows=batch_windows,
                                  device=device, precision=precision, save_probabilities=save_probabilities,
                                  postprocess=postprocess)
    names = " + ".join(f"{m.configuration_name} (folds {','.join(m.folds)})" for m in models)
    typer.echo(f"predicting with {names}, TTA {'off' if no_tta else 'on'}")
    started = time.perf_counter()
    shown = {"at": started, "first": (0, started), "last": 0}

    def on_windows(done, total):  # a line every 30 s inside a long case (a CT on a CPU: minutes)
        now = time.perf_counter()
        if done <= shown["last"] or shown["first"][0] == 0:  # a new case's first batch
            shown["first"] = (done, now)
        shown["last"] = done
        if now - shown["at"] > 30 and shown["first"][0] < done < total:
            shown["at"] = now
            rate = (done - shown["first"][0]) / max(now - shown["first"][1], 1e-9)
            typer.echo(f"    {done}/{total} windows ({rate:.3g} windows/s)")

    def on_case(case_id, status):
        typer.echo(f"  {case_id}: {status}")

    summary = predict_with_models(models, input_path, output_folder, settings, overwrite=overwrite,
                                  part=_parse_part(part), on_case=on_case, progress=on_windows)
    seconds = time.perf_counter() - started
    typer.echo(f"{len(summary.written)} written, {len(summary.skipped)} skipped, {len(summary.failures)} failed "
               f"in {seconds:.1f} s ({summary.windows} windows, {summary.windows_per_second:.3g} windows/s)")
    if summary.failures:
        fail(f"{len(summary.failures)} case(s) failed: " + "; ".join(f"{c}: {e}" for c, e in summary.failures.items()))


if __name__ == "__main__":
    app()
