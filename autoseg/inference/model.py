"""A trained configuration loaded for prediction: a network per fold, in eval mode.

    model = load_trained_model(workspace.task_results(task), plans, "3d_fullres", folds=None)  # every trained fold

The folds' checkpoints are found in the task's results (`autoseg.workspace.TaskResults`) and checked
against the plan before their weights are used (`autoseg.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from autoseg.checkpoint import check_identity, identity_of_configuration, load_checkpoint
from autoseg.device import pick_device
from autoseg.errors import AutosegError, CheckpointError
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
    from autoseg.network import build_network

    state = load_checkpoint(checkpoint_path, map_location=device)
    check_identity(state, identity_of_configuration(plans, configuration_name), checkpoint_path)
    configuration = plans.configuration(configuration_name)
    network = build_network(configuration.architecture)
    network.load_state_dict(state["network_weights"])
    network.deep_supervision = False
    return network.to(device).eval(), state.get("inference", {})


def load_trained_model(results: TaskResults, plans: Plans, configuration_name: str, *,
                       folds: Sequence[str] | None = None, checkpoint: str = "final", device: str = "auto",
                       postprocessing: PostprocessingDecision | None = None,
                       previous_stage: TrainedModel | None = None,
                       previous_stage_from_files: bool = False) -> TrainedModel:
    """The networks of a configuration's folds. A cascade stage needs its `previous_stage` model, unless
    `previous_stage_from_files`: the caller appends stored previous-stage segmentations (fold validation)."""
    torch_device = pick_device(device)
    networks, chosen, precision = [], [], "fp32"
    for fold, path in fold_checkpoints(results, configuration_name, folds, checkpoint):
        network, inference = load_network(plans, configuration_name, path, torch_device)
        networks.append(network)
        chosen.append(fold)
        precision = inference.get("precision", precision)
    configuration = plans.configuration(configuration_name)
    if configuration.previous_stage and previous_stage is None and not previous_stage_from_files:
        raise AutosegError(f"configuration {configuration_name} is a cascade stage: load its "
                           f"{configuration.previous_stage} model first")
    return TrainedModel(plans, configuration_name, configuration, networks, chosen, torch_device,
                        sorted(int(v) for v in plans.labels), postprocessing, previous_stage, precision)
