"""Commands that read a dataset and plan: demo-data, check, fingerprint, plan, preprocess."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from autoseg import console
from autoseg.cli.common import command, fail, parse_numbers, state

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


@command("plan")
def plan(
    task: Optional[str] = typer.Argument(None, help="Task name under raw/ or a dataset folder."),
    fingerprint_file: Optional[Path] = typer.Option(None, "--fingerprint",
                                                    help="Plan from a fingerprint file alone (no images)."),
    gpu_memory: Optional[float] = typer.Option(None, "--gpu-memory", min=0.5,
                                               help="Memory budget (GB) the plan is sized for (default: the "
                                                    "--preset's, else 8)."),
    networks: Optional[str] = typer.Option(None, "--networks", help="Comma-separated networks to plan beside the "
                                           "plain U-Net, one configuration each per dimension, e.g. resenc."),
    preset: Optional[str] = typer.Option(None, "--preset", help="ResEnc preset M, L or XL: a memory target of "
                                         "8 / 24 / 40 GB and nnU-Net's batch rules for it."),
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
                          networks=networks.split(",") if networks else None, preset=preset,
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
