"""Commands on predictions and cross-validation results: evaluate, ensemble, postprocess, find-best."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from autoseg.cli.common import command, fail, parse_numbers, state

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
    typer.echo(f"wrote {run.summary_files[0]}, {run.summary_files[1]} and {run.chart_file}")


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
