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

    dataset = load_dataset(state.workspace.dataset_folder(task))
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
