"""A trained configuration loaded for prediction: a network per fold, in eval mode.

    model = load_trained_model(workspace.task_results(task), plans, "3d_fullres", folds=None)  # every trained fold

The folds' checkpoints are found in the task's results (`autoseg.workspace.TaskResults`) and checked
against the plan before their weights are used (`autoseg.checkpoint`). Each fold is used with the copy of
the plan it was trained with (`TaskResults.fold_plans_file`), so a re-planned workspace does not change
its outputs; a fold without a copy (trained before copies were kept) uses the workspace's plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from autoseg.checkpoint import check_identity, identity_of_configuration, load_checkpoint
from autoseg.device import pick_device
from autoseg.errors import AutosegError, CheckpointError, PlanError
from autoseg.planning.plans import Configuration, Plans
from autoseg.postprocessing import PostprocessingDecision
from autoseg.workspace import TaskResults, checkpoint_file_name

if TYPE_CHECKING:
    import torch


@dataclass
class TrainedModel:
    """One configuration of a task, loaded once: a network per fold, in eval mode."""

    plans: Plans
    configuration_name: str
    configuration: Configuration
    networks: list
    folds: list[str]
    device: "torch.device"
    label_values: list[int]  # label value of each output channel
    postprocessing: PostprocessingDecision | None = None  # applied to this model's own predictions
    previous_stage: "TrainedModel | None" = None  # the cascade's low-res model
    trained_precision: str = "fp32"
    # When this model is one member of an ensemble of configurations: the decision applied to the
    # averaged prediction (`autoseg.api.predict_with_models`).
    ensemble_postprocessing: PostprocessingDecision | None = None
    # What the user should know about how the model was loaded, e.g. that its folds use the plan they were
    # trained with rather than the workspace's changed one (`autoseg.console.PredictionReport` prints them).
    notes: list[str] = field(default_factory=list)
    # The networks converted to another runtime, by runtime name (`autoseg.inference.runtimes.networks_for_runtime`).
    runtime_networks: dict = field(default_factory=dict, repr=False)
    # find-best's recorded mirror TTA choice for this configuration (`autoseg.mirror_choice.MirroringChoice`),
    # None when find-best has not chosen; set with the models by `autoseg.api.load_models`.
    mirroring_choice: object = None

    @property
    def num_input_channels(self) -> int:
        return len(self.plans.modality)

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        """(y, x) mm at which given pictures are read (`Plans.pixel_spacing`); None for volumes."""
        return self.plans.pixel_spacing


def fold_checkpoints(results: TaskResults, configuration_name: str, folds: Sequence[str] | None,
                     checkpoint: str) -> list[tuple[str, Path]]:
    """(fold name, checkpoint file) of the requested folds, or of every fold that has that checkpoint."""
    if folds is None:
        trained = results.trained_folds(configuration_name, checkpoint)
        if not trained:
            raise CheckpointError(f"{results.configuration_folder(configuration_name)}: no trained fold has "
                                  f"{checkpoint_file_name(checkpoint)}; run `autoseg train` first")
        return [(fold, results.checkpoint_file(configuration_name, fold, checkpoint)) for fold in trained]
    chosen = []
    for fold in folds:
        path = results.checkpoint_file(configuration_name, fold, checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (fold {fold} not trained, or no {checkpoint} checkpoint)")
        chosen.append((str(fold), path))
    return chosen


def load_network(plans: Plans, configuration_name: str, checkpoint_path: Path, device: "torch.device"):
    """The fold's network in eval mode, single output, its rep blocks (if any) fused into plain convs
    (`autoseg.network.rep`: the same function at the plain network's cost); and the checkpoint's inference
    settings."""
    from autoseg.network import build_network
    from autoseg.network.rep import fuse_rep_blocks

    state = load_checkpoint(checkpoint_path, map_location=device)
    check_identity(state, identity_of_configuration(plans, configuration_name), checkpoint_path)
    configuration = plans.configuration(configuration_name)
    network = build_network(configuration.architecture)
    network.load_state_dict(state["network_weights"])
    network.deep_supervision = False
    fuse_rep_blocks(network)
    return network.to(device).eval(), state.get("inference", {})


def outputs_view(plans: Plans, configuration_name: str) -> dict:
    """The parts of a plan that change a configuration's predictions: its entry (spacing, normalization,
    patch, architecture...), the axis order, the intensity statistics, channels, labels, and the median
    spacing (the pixel spacing pictures are read at)."""
    return {
        "configuration": plans.configuration(configuration_name).to_json(),
        "transpose_forward": list(plans.transpose_forward),
        "intensity_per_channel": plans.to_json()["intensity_per_channel"],
        "modality": plans.modality,
        "labels": plans.labels,
        "original_median_spacing": list(plans.original_median_spacing),
    }


def fold_plans(results: TaskResults, workspace_plans: Plans, configuration_name: str,
               folds: Sequence[str]) -> Plans:
    """The plan the folds were trained with: their copies (`TaskResults.fold_plans_file`), else the
    workspace's. Folds whose plans differ in what changes outputs cannot be averaged: refused."""
    plans_of_fold = {}
    for fold in folds:
        copy = results.fold_plans_file(configuration_name, fold)
        plans_of_fold[fold] = Plans.load(copy) if copy.is_file() else workspace_plans
    groups: dict[str, list[str]] = {}
    for fold, plans in plans_of_fold.items():
        groups.setdefault(repr(outputs_view(plans, configuration_name)), []).append(fold)
    if len(groups) > 1:
        described = "; ".join(f"folds {','.join(group)}" for group in groups.values())
        raise PlanError(f"{results.configuration_folder(configuration_name)}: the folds were trained with plans that "
                        f"change outputs differently ({described}); predict with --folds from one group")
    return plans_of_fold[folds[0]]


def load_trained_model(results: TaskResults, plans: Plans, configuration_name: str, *,
                       folds: Sequence[str] | None = None, checkpoint: str = "final", device: str = "auto",
                       postprocessing: PostprocessingDecision | None = None,
                       previous_stage: TrainedModel | None = None,
                       previous_stage_from_files: bool = False) -> TrainedModel:
    """The networks of a configuration's folds, each used with the plan it was trained with (`fold_plans`;
    `plans` is the workspace's). A cascade stage needs its `previous_stage` model, unless
    `previous_stage_from_files`: the caller appends stored previous-stage segmentations (fold validation)."""
    torch_device = pick_device(device)
    checkpoints = fold_checkpoints(results, configuration_name, folds, checkpoint)
    chosen = [fold for fold, _ in checkpoints]
    trained_plans = fold_plans(results, plans, configuration_name, chosen)
    networks, precision = [], "fp32"
    for fold, path in checkpoints:
        network, inference = load_network(trained_plans, configuration_name, path, torch_device)
        networks.append(network)
        precision = inference.get("precision", precision)
    configuration = trained_plans.configuration(configuration_name)
    if configuration.previous_stage and previous_stage is None and not previous_stage_from_files:
        raise AutosegError(f"configuration {configuration_name} is a cascade stage: load its "
                           f"{configuration.previous_stage} model first")
    notes = []
    if outputs_view(trained_plans, configuration_name) != outputs_view(plans, configuration_name):
        notes.append(f"{configuration_name} folds {','.join(chosen)}: the workspace's plans.json has changed since "
                     f"they were trained; using the plan they were trained with "
                     f"({results.fold_plans_file(configuration_name, chosen[0])})")
    return TrainedModel(trained_plans, configuration_name, configuration, networks, chosen, torch_device,
                        sorted(int(v) for v in trained_plans.labels), postprocessing, previous_stage, precision,
                        notes=notes)
