"""What the command line shows while a stage runs: progress bars and the lines of long commands.

Only autoseg.cli uses this module: the stages report through callbacks, and these classes turn the
callbacks into bars (on stderr, none when it is not a terminal) and lines.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer


def progress_bar(total: int, unit: str, description: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=description, file=sys.stderr, dynamic_ncols=True,
                disable=None)  # disable=None: no bar when stderr is not a terminal


def advance(bar):
    """The API's progress(done, total) callback for a bar made without a total: its first call is (0, total)."""
    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(min(done, 1))

    return update


class StepBar:
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


def show_speed_lookup(lookup) -> None:
    """One line per device speed lookup of compute-aware planning (a measurement not cached takes a while)."""
    typer.echo(f"device speed: {lookup.dimension}D networks on {lookup.device} at {lookup.precision} "
               f"(measured once per machine, cached in {lookup.cache_file})")


class TrainingDisplay:
    """What `autoseg train` shows as it goes: lines and progress bars, from the main process only (the
    other torchrun ranks train quietly)."""

    def __init__(self, request):
        self.shown = request.is_main
        self.time_budget = request.time_budget
        self.validate = request.validate
        self.iterations = StepBar("it", "epoch")
        self.validation_bar = None
        self.validation_cases = 0

    def training_events(self):
        from autoseg.training.job import TrainingEvents

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
                   f"precision {setup.precision}" + (f", {setup.processes} processes" if setup.processes > 1 else "")
                   + (f", {setup.cpu_threads} CPU thread(s) per process" if setup.cpu_threads else ""))
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


class PredictionReport:
    """What `autoseg predict` prints besides each case: the models, the window rate every 30 s inside a long
    case (a CT on a CPU: minutes), the totals."""

    def __init__(self):
        self.started = self.shown_at = 0.0  # from when the models are loaded: loading is not prediction time
        self.first, self.last = (0, 0.0), 0  # (windows, time) at a case's first batch; windows last seen

    def on_models(self, models) -> None:
        names = " + ".join(f"{m.configuration_name} (folds {','.join(m.folds)})" for m in models)
        typer.echo(f"predicting with {names}")
        for model in models:
            stages = [model.previous_stage, model] if model.previous_stage else [model]
            for note in (note for stage in stages for note in stage.notes):
                typer.echo(f"note: {note}")
        self.started = self.shown_at = time.perf_counter()
        self.first = (0, self.started)

    def on_runtime(self, choice, cached: bool) -> None:
        """The runtime `--runtime auto` chose (autoseg.stages.runtime.RuntimeChoice) and how it was known."""
        how = "cached measurement" if cached else f"measured in {choice.measured_seconds:.1f} s"
        typer.echo(f"runtime: {choice.summary} [{how}]" if choice.measurements else f"runtime: {choice.summary}")
        self.started = self.shown_at = time.perf_counter()  # the measurement is not prediction time

    def on_mirroring(self, decisions) -> None:
        """decisions: {configuration: `autoseg.stages.choice.MirroringDecision`}: the set used and why."""
        for name, decision in decisions.items():
            typer.echo(f"mirror TTA {decision.name} for {name} ({decision.reason})")

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
