"""Which configuration a stage uses when the user names none: the one the command line and the Python
API both follow.

    default_training_configuration(plans)                                   `autoseg train`
    default_prediction_configurations(task_results, plans, checkpoint)      `autoseg predict`, Segmenter
    prediction_mirroring(tta, models)                                      `autoseg predict --tta`, Segmenter
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from autoseg.errors import AutosegError, WorkspaceError
from autoseg.planning.plans import Plans
from autoseg.workspace import TaskResults

# The configurations tried first, in order, when several could be used.
PREFERRED_FOR_TRAINING = ("3d_fullres", "2d")
PREFERRED_FOR_PREDICTION = ("3d_fullres", "3d_cascade_fullres", "2d")


def configurations_within_budget(plans: Plans) -> list[str]:
    """Configurations not marked over_budget (all of them for a plan without a time budget)."""
    return [name for name in plans.configuration_names if plans.configuration(name).over_budget is None]


def default_training_configuration(plans: Plans) -> str:
    """3d_fullres, else 2d, else the first configuration; among those within the time budget, if any."""
    fitting = configurations_within_budget(plans)
    for name in PREFERRED_FOR_TRAINING:
        if name in fitting:
            return name
    return (fitting or plans.configuration_names)[0]


def configurations_with_checkpoint(task_results: TaskResults, checkpoint: str = "final") -> list[str]:
    """The configurations of a task in which some fold has the given checkpoint, sorted by name."""
    return [name for name in task_results.configurations_with_folds() if task_results.trained_folds(name, checkpoint)]


def default_prediction_configurations(task_results: TaskResults, plans: Plans, checkpoint: str) -> list[str]:
    """find-best's choice (one configuration, or the ensemble it chose); else the only trained
    configuration of the plan; else 3d_fullres, then 3d_cascade_fullres, then 2d, if trained."""
    from autoseg.selection import load_choice

    choice = load_choice(task_results)
    if choice is not None:
        return list(choice.chosen)
    trained = [name for name in configurations_with_checkpoint(task_results, checkpoint)
               if name in plans.configurations]
    if not trained:
        raise WorkspaceError(f"{task_results.root}: no trained configuration with checkpoint_{checkpoint}.pt; "
                             "run `autoseg train` first")
    for preferred in PREFERRED_FOR_PREDICTION:
        if preferred in trained and len(trained) > 1:
            return [preferred]
    return trained[:1]


# `autoseg predict --tta`: auto = find-best's choice (else all axes), off, all, or axis:N.
TTA_AUTO = "auto"


@dataclass(frozen=True)
class MirroringDecision:
    """The mirror TTA one configuration predicts with (`PredictionSettings.mirror_axes`), and why."""

    mirror_axes: tuple[int, ...]
    name: str  # off, axis:N, all
    reason: str


def check_tta(tta: str) -> None:
    """A clear error, before any model is loaded, for a `--tta` that is not auto, off, all or axis:N."""
    from autoseg.inference.mirroring import ALL, AXIS_PREFIX, OFF

    axis = tta[len(AXIS_PREFIX):] if tta.startswith(AXIS_PREFIX) else None
    if tta not in (TTA_AUTO, OFF, ALL) and not (axis is not None and axis.isdigit()):
        raise AutosegError(f"--tta {tta!r}: expected auto, off, all or axis:N (N a spatial axis of the network)")


def prediction_mirroring(tta: str, models: Sequence) -> dict[str, MirroringDecision]:
    """{configuration name: MirroringDecision} of the models (`TrainedModel`s) for `--tta` `tta`:
    "off", "all", "axis:N" (N a spatial axis of the network's patch), or "auto": the set find-best
    recorded for that configuration (`TrainedModel.mirroring_choice`, read with the models from the
    workspace or the model bundle), else all axes as nnU-Net."""
    from autoseg.inference.mirroring import candidate_mirror_sets

    check_tta(tta)
    decisions = {}
    for model in models:
        name, dimension = model.configuration_name, model.configuration.dimension
        if tta == TTA_AUTO:
            decisions[name] = _recorded_mirroring(model.mirroring_choice, name, dimension)
            continue
        sets = candidate_mirror_sets(dimension)
        if tta not in sets:
            raise AutosegError(f"--tta {tta}: {name} is a {dimension}D network, its mirror sets are "
                               f"{', '.join(sets)}")
        decisions[name] = MirroringDecision(sets[tta], tta, f"--tta {tta}")
    return decisions


def _recorded_mirroring(choice, configuration: str, dimension: int) -> MirroringDecision:
    """find-best's mirror set (`MirroringChoice` or None), or all axes with the reason none was recorded."""
    from autoseg.inference.mirroring import ALL

    all_axes = tuple(range(dimension))
    if choice is None:
        return MirroringDecision(all_axes, ALL, f"default: find-best recorded no TTA choice for {configuration}")
    if choice.chosen is None:
        return MirroringDecision(all_axes, ALL, f"default: find-best made no TTA choice ({choice.note})")
    dice = choice.foreground_dice
    return MirroringDecision(tuple(choice.mirror_axes), choice.chosen,
                             f"find-best's choice: cross-validation Dice {dice[choice.chosen]:.4f}, "
                             f"all axes {dice.get(ALL, float('nan')):.4f}")
