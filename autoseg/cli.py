"""The `autoseg` command line: parse, call the stage's function in autoseg.api (one way to run a stage), print.

Heavy imports (torch, SimpleITK) happen inside the commands so `autoseg --help` is instant.
Any AutosegError becomes one line on stderr and exit code 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import typer

from autoseg import console, torchrun
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


def parse_numbers(text: str, kind: type, option: str, expected: str) -> list:
    """The comma-separated numbers of an option's value; an error naming the option otherwise."""
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        fail(f"{option}: expected {expected}, got {text!r}")



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

    with console.progress_bar(None, "case", "check") as bar:
        report = api.check(task, workers=workers, home=state.workspace.home, progress=console.advance(bar))
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

    with console.progress_bar(None, "case", "fingerprint") as bar:
        result = api.fingerprint(task, workers=workers, home=state.workspace.home, progress=console.advance(bar))
    typer.echo(f"{'reused' if result.reused else 'wrote'} {result.path}")
    for warning in result.fingerprint.label_warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"  cases {result.fingerprint.num_cases}, median spacing "
               f"{[round(s, 3) for s in result.fingerprint.median_spacing]} mm, "
               f"median cropped shape {[int(s) for s in result.fingerprint.median_cropped_shape]}")



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
    from autoseg import api
    from autoseg.planning import format_plan_summary

    fingerprinting = console.StepBar("case", "fingerprint")
    try:
        result = api.plan(task, fingerprint_file=fingerprint_file, gpu_memory_gb=gpu_memory, time_budget=time_budget,
                          device=device, remeasure=remeasure, workers=workers, home=state.workspace.home,
                          progress=fingerprinting.step, on_measure=console.show_speed_lookup)
    finally:
        fingerprinting.close()
    typer.echo(format_plan_summary(result.plans))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for configuration in result.kept:
        typer.echo(f"kept your configuration {configuration} from the previous plans.json")
    for reason in result.dropped:
        typer.echo(f"warning: dropped configuration {reason}", err=True)
    typer.echo(f"wrote {result.plans_file}")
    if result.dataset_folder is not None:
        typer.echo(f"current task: {result.task_name}")


@command("preprocess")
def preprocess(
    task: Optional[str] = typer.Argument(None, help="Task; default: the task planned last."),
    configurations: Optional[List[str]] = typer.Option(None, "-c", "--config", help="Configurations (default: all)."),
    workers: int = typer.Option(2, "-j", "--workers", min=0,
                                help="Worker processes (capped by free memory and case size); 0: in-process."),
) -> None:
    """Crop, normalize, resample and store every case for the planned configurations (resumable)."""
    from autoseg import api

    with console.progress_bar(None, "case", "preprocess") as bar:
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
        raise typer.Exit(torchrun.launch(gpus))
    _train_and_show(TrainRequest(configuration=configuration, fold=fold, task=task, epochs=epochs,
                                 iterations=iterations, validation_iterations=validation_iterations,
                                 time_budget=time_budget, workers=workers, device=device, precision=precision,
                                 resume=resume, seed=seed, checkpoint_every=checkpoint_every, validate=validate,
                                 distributed=torchrun.init_rank(device)))


def _train_and_show(request) -> None:
    """train_fold with its progress shown as it goes, then the fold's validation and timing report."""
    from autoseg import api

    display = console.TrainingDisplay(request)
    try:
        result = api.train(request, home=state.workspace.home, events=display.training_events(),
                           on_measure=console.show_speed_lookup, on_replanned=display.replanned, on_start=display.start,
                           on_trained=display.trained, on_validation_case=display.validation_case)
    finally:
        display.close()
    if result.validation is not None:
        typer.echo(result.validation.format_table())
    if result.timing_report is not None:
        typer.echo(result.timing_report)


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
    from autoseg import api

    report = console.PredictionReport(use_tta=not no_tta)
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
