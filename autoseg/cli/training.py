"""The train command (one fold, or N processes under torchrun)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autoseg import console, torchrun
from autoseg.cli.common import command, state

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
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Start from this checkpoint's weights "
                                              "where name and shape match (same network family); the rest, e.g. "
                                              "the heads of a task with other classes, start fresh."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Train on N GPUs with DistributedDataParallel (torchrun); without a GPU (or with --device cpu), "
                                     "N CPU processes over gloo."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Predict and score the fold's cases."),
    validation_runtime: str = typer.Option("auto", "--validation-runtime",
                                           help="The validation's runtime, as predict --runtime: auto (measured on "
                                                "the first case and cached for predict), torch, onnxruntime, ..."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines training together (torchrun's; --gpus per "
                               "machine, one shared workspace)."),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's rank, 0 .. --nnodes - 1."),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Address of the --node-rank 0 machine."),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="A free port there (default 29500)."),
) -> None:
    """Train one fold of a configuration; checkpoints, progress.png and validation in results/."""
    from autoseg.stages.train import TrainRequest

    if gpus > 1 or nnodes > 1:
        raise typer.Exit(torchrun.launch(gpus, torchrun.Nodes(nnodes, node_rank, master_addr, master_port)))
    _train_and_show(TrainRequest(configuration=configuration, fold=fold, task=task, epochs=epochs,
                                 iterations=iterations, validation_iterations=validation_iterations,
                                 time_budget=time_budget, workers=workers, device=device, precision=precision,
                                 resume=resume, pretrained=pretrained, seed=seed, checkpoint_every=checkpoint_every, validate=validate,
                                 validation_runtime=validation_runtime, distributed=torchrun.init_rank(device)))


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
