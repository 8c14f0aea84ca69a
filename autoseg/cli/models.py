"""Model bundles: export-model and import-model (`autoseg predict --model` predicts from one)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autoseg.cli.common import command, state


def _held(manifest) -> str:
    return "; ".join(f"{name} folds {','.join(folds)}" for name, folds in manifest.folds.items())


@command("export-model")
def export_model(
    bundle: Path = typer.Argument(..., help="The zip file to write, e.g. model.zip."),
    task: Optional[str] = typer.Option(None, "--task", help="Default: the task planned last."),
    configurations: Optional[str] = typer.Option(None, "--config", help="Comma-separated configurations; "
                                                 "default: find-best's choice."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated folds; default: every fold with a "
                                        "final checkpoint."),
    onnx: bool = typer.Option(False, "--onnx", help="Also each fold's network as ONNX (dynamic spatial axes), "
                              "checked against torch at export."),
) -> None:
    """Pack a task's models for prediction elsewhere into one zip, with a manifest of SHA-256 checksums.

    The bundle holds the plans, each fold's final checkpoint and its plan, find-best's choice, the
    postprocessing decision, dataset.json's labels and channels, and a cascade's earlier stages."""
    from autoseg import api

    result = api.export_model(bundle, task=task, configurations=configurations.split(",") if configurations else None,
                              folds=folds.split(",") if folds else None, onnx=onnx, home=state.workspace.home)
    size = sum(member.size for member in result.manifest.members)
    typer.echo(f"{result.manifest.task}: {_held(result.manifest)} ({len(result.manifest.members)} files, "
               f"{size / 2**20:.1f} MiB) -> {result.path}")
    for network, difference in result.onnx_parity.items():
        typer.echo(f"  ONNX {network}: max probability difference vs torch fp32 {difference:.2e}")
    typer.echo(f"predict with: autoseg predict IN OUT --model {result.path}")


@command("import-model")
def import_model(
    bundle: Path = typer.Argument(..., help="A model bundle written by export-model."),
    task_name: Optional[str] = typer.Option(None, "--task-name", help="Install under this task name; default: "
                                            "the bundle's."),
) -> None:
    """Install a model bundle into the workspace (checksums checked); plain `predict` then uses it."""
    from autoseg import api

    result = api.import_model(bundle, task_name=task_name, home=state.workspace.home)
    typer.echo(f"imported {result.task} ({_held(result.manifest)}; autoseg {result.manifest.autoseg_version}, "
               f"exported {result.manifest.created}) into {state.workspace.home}")
