"""The predict command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autoseg import console
from autoseg.cli.common import command, fail, state

def _parse_part(part: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in part.split("/"))
    except ValueError:
        fail(f"--part {part!r}: expected I/N, e.g. 0/4")
    return index, count


@command("predict")
def predict(
    input_path: Path = typer.Argument(..., help="Folder of images or DICOM series (or one image file)."),
    output_folder: Path = typer.Argument(...),
    task: Optional[str] = typer.Option(None, "--task"),
    model: Optional[Path] = typer.Option(None, "--model", help="A model bundle (export-model) to predict with "
                                         "instead of the workspace's task."),
    configuration: Optional[str] = typer.Option(None, "--config", help="Default: find-best's choice."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated folds; default: every trained fold."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, best or latest."),
    tile_mode: str = typer.Option("patch", "--tile-mode",
                                  help="patch: the training patch at --step-size; large: tiles as large as memory "
                                       "allows (faster; InstanceNorm then sees whole tiles: check agreement)."),
    tile_overlap: int = typer.Option(16, "--tile-overlap", min=0, help="large: overlap of tiles (voxels per axis)."),
    step_size: float = typer.Option(0.5, "--step-size", min=0.05, max=1.0, help="patch: step between windows."),
    tta: str = typer.Option("auto", "--tta", help="Mirror test-time augmentation: auto (find-best's choice, else "
                            "all), off, all (8 passes in 3D, 4 in 2D) or axis:N (2 passes)."),
    no_tta: bool = typer.Option(False, "--no-tta", help="The same as --tta off."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16, fp16 or int8: the "
                                  "arithmetic (onnxruntime: fp32; openvino: fp32, bf16 or int8, calibrated on the "
                                  "cases to predict)."),
    runtime: str = typer.Option("auto", "--runtime", help="auto (fastest agreeing with torch fp32, measured once), "
                                "torch, torch-compile, onnxruntime or openvino."),
    batch_windows: Optional[int] = typer.Option(None, "--batch-windows", min=1),
    overwrite: bool = typer.Option(False, "--overwrite"),
    part: str = typer.Option("0/1", "--part", help="I/N: predict every N-th case starting at I."),
    postprocess: bool = typer.Option(True, "--postprocess/--no-postprocess"),
    output_format: str = typer.Option("nifti", "--output-format",
                                      help="nifti (the input's format; NIfTI for DICOM) or dicom-seg (DICOM input)."),
    statistics: bool = typer.Option(False, "--statistics", help="statistics.json/.csv: volume, intensities, "
                                    "bounding box per case and label."),
    preview: bool = typer.Option(False, "--preview", help="previews/CASE.png and index.html."),
) -> None:
    """Segment images: sliding window, Gaussian weighting, mirror TTA, fold ensemble, postprocessing."""
    from autoseg import api

    if no_tta and tta not in ("auto", "off"):
        fail(f"--no-tta contradicts --tta {tta}")
    report = console.PredictionReport()
    summary = api.predict(input_path, output_folder, task=task, configuration=configuration,
                          folds=folds.split(",") if folds else None, checkpoint=checkpoint, tile_mode=tile_mode,
                          tile_overlap=tile_overlap, step_size=step_size, tta="off" if no_tta else tta,
                          save_probabilities=save_probabilities, device=device,
                          precision=precision, runtime=runtime, batch_windows=batch_windows, overwrite=overwrite,
                          part=_parse_part(part), postprocess=postprocess, output_format=output_format,
                          statistics=statistics, preview=preview, home=state.workspace.home, model=model,
                          on_models=report.on_models, on_runtime=report.on_runtime, on_mirroring=report.on_mirroring,
                          progress=report.on_windows,
                          on_case=lambda case_id, status: typer.echo(f"  {case_id}: {status}"))
    report.finished(summary)
    from autoseg.stages.case_reports import INDEX_HTML
    from autoseg.statistics import STATISTICS_JSON

    for name, wanted in ((STATISTICS_JSON, statistics), (INDEX_HTML, preview)):
        if wanted:
            typer.echo(f"wrote {output_folder / name}")
    if summary.failures:
        fail(f"{len(summary.failures)} case(s) failed: " + "; ".join(f"{c}: {e}" for c, e in summary.failures.items()))
