"""Which configuration a stage uses when the user names none: the one the command line and the Python
API both follow.

    default_training_configuration(plans)                                   `autoseg train`
    default_prediction_configurations(task_results, plans, checkpoint)      `autoseg predict`, Segmenter
"""

from __future__ import annotations

from autoseg.errors import WorkspaceError
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
