"""Planning a task: the dataset fingerprint -> plans.json, optionally fitted into a time budget.

    result = plan_task(workspace, "Task900_Demo", time_budget="15m")    # `autoseg plan`
    plans = replan_for_budget(workspace, task_name, plans, "3d_fullres", "0", "15m", "cpu")
                                                                        # `autoseg train --time-budget`

A time budget is fitted on this machine's measured training speed (`autoseg.budget`), measured once
per machine and cached in the workspace; `on_measure` is told before each lookup, as a measurement
not yet cached takes a while.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from autoseg.errors import AutosegError, PlanError
from autoseg.planning.plans import Plans, has_own_network
from autoseg.workspace import Workspace


@dataclass(frozen=True)
class SpeedLookup:
    """A measurement of this device's training speed about to be looked up in the workspace's cache (and
    taken, about 20 s, when the cache has none for this machine)."""

    dimension: int  # of the networks measured: 2 or 3
    precision: str
    device: str  # cpu, cuda or mps
    cache_file: Path


@dataclass
class PlanResult:
    """What `plan_task` planned and wrote."""

    plans: Plans
    plans_file: Path
    kept: list[str]  # the user's own configurations carried over from the previous plans.json
    dropped: list[str]  # configurations of the previous plans.json left out, each with the reason
    task_name: str
    dataset_folder: Path | None  # None when planned from a fingerprint file alone
    warnings: list[str]  # about the dataset's labels (`Fingerprint.label_warnings`): trainable, but suspect


def _ignore(*_) -> None:
    pass


def plan_task(workspace: Workspace, task: str | Path | None = None, fingerprint_file: Path | None = None,
              gpu_memory_gb: float | None = None, time_budget: str | None = None, device: str = "auto",
              remeasure: bool = False, workers: int = 2, networks: list[str] | None = None,
              preset: str | None = None,
              on_case_done: Callable[[int, int], None] = _ignore,
              on_measure: Callable[[SpeedLookup], None] = _ignore) -> PlanResult:
    """Plan a task from its dataset (fingerprinted first, or the fingerprint reused when the dataset has not
    changed) or from a fingerprint file alone, and write plans.json.

    time_budget ("15m", "2h"): each configuration trains one fold within it on `device`; `remeasure`
    measures the device again instead of using the cache. networks: NETWORK_BUILDERS keys planned beside the
    plain U-Net (3d_fullres_resenc, 2d_resenc, ...); preset: a ResEnc preset (M, L, XL), the memory target
    (8 / 24 / 40 GB) unless gpu_memory_gb is given, and its calibration for resenc. The user's configurations derived in the
    previous plans.json (`inherits_from`) are kept when they still resolve. Planning a dataset makes
    it the workspace's current task. on_case_done(done, total) follows the fingerprinting.
    """
    from autoseg.planning import plan_experiment
    from autoseg.planning.planner import check_networks
    from autoseg.planning.rules import memory_target_gb

    memory_gb = memory_target_gb(gpu_memory_gb, preset)  # bad options fail before the fingerprinting
    check_networks(networks)
    task_name, dataset_folder, fingerprint = _fingerprint(workspace, task, fingerprint_file, workers, on_case_done)
    plans = plan_experiment(fingerprint, gpu_memory_gb=memory_gb, networks=networks, preset=preset)
    if time_budget is not None:
        plans = fit_time_budget(workspace, plans, time_budget, device, fingerprint.num_cases, remeasure=remeasure,
                                on_measure=on_measure)
    plans_file = workspace.plans_file(task_name)
    plans, kept, dropped = keep_user_configurations(plans, _previous_configurations(plans_file))
    plans.save(plans_file)
    if dataset_folder is not None:
        workspace.remember_task(task_name, dataset_folder)
    return PlanResult(plans, plans_file, kept, dropped, task_name, dataset_folder, fingerprint.label_warnings)


def _fingerprint(workspace: Workspace, task: str | Path | None, fingerprint_file: Path | None, workers: int,
                 on_case_done: Callable[[int, int], None]) -> tuple:
    """(task name, dataset folder or None, Fingerprint) of a task's dataset or of a fingerprint file."""
    from autoseg.fingerprint import Fingerprint, load_or_extract

    if fingerprint_file is not None:
        if task is not None:
            raise PlanError("give either TASK or --fingerprint, not both")
        fingerprint = Fingerprint.load(fingerprint_file)
        return fingerprint.dataset_name, None, fingerprint
    if task is None:
        raise PlanError("missing TASK (a name under raw/ or a dataset folder), or --fingerprint FILE")
    from autoseg.dataset import load_dataset

    dataset = load_dataset(workspace.dataset_folder(task))
    name = dataset.root.name
    done = [0]

    def case_done(_case_id: str) -> None:
        done[0] += 1
        on_case_done(done[0], len(dataset.cases))

    fingerprint, _ = load_or_extract(dataset, workspace.fingerprint_file(name), workers, on_case_done=case_done)
    return name, dataset.root, fingerprint


def keep_user_configurations(plans: Plans, previous_entries: dict[str, Any]) -> tuple[Plans, list[str], list[str]]:
    """Re-planning regenerates plans.json from the fingerprint; a configuration the user added to the old
    file (a name the planner does not make) and that still resolves on the new plan, such as
    `{"inherits_from": "3d_fullres", "batch_size": 8}`, is carried over. A complete entry (no
    inherits_from) is not: its spacing, network and statistics were the old plan's; nor is one with its own
    architecture (a network variant planned with --networks before), sized for the old plan.

    Returns (plans with the kept entries, names kept, names dropped with the reason).
    """
    entries = dict(plans.configurations)
    kept, dropped = [], []
    for name, entry in previous_entries.items():
        if name in entries or not isinstance(entry, dict):
            continue
        if not entry.get("inherits_from"):
            dropped.append(f"{name} (a complete entry of the old plan; derive it with inherits_from to keep it)")
            continue
        if has_own_network(entry):  # e.g. 3d_fullres_resenc: its network, patch and batch were sized by the old plan
            dropped.append(f"{name} (its network was sized for the old plan; plan it again, e.g. with --networks)")
            continue
        candidate = Plans(**{**vars(plans), "configurations": {**entries, name: copy.deepcopy(entry)}})
        try:
            candidate.configuration(name)
        except PlanError as error:
            dropped.append(f"{name} ({error})")
            continue
        entries[name] = copy.deepcopy(entry)
        kept.append(name)
    return Plans(**{**vars(plans), "configurations": entries}), kept, dropped


def _previous_configurations(plans_file: Path) -> dict:
    """The configuration entries of an existing plans.json as stored; {} when there is none or it is
    unreadable (re-planning is how a broken plan is replaced)."""
    from autoseg.artifacts import read_json

    if not plans_file.is_file():
        return {}
    try:
        entries = read_json(plans_file).get("configurations")
    except (AutosegError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def fit_time_budget(workspace: Workspace, plans: Plans, time_budget: str, device: str, num_cases: int, *,
                    remeasure: bool = False, configurations: list[str] | None = None,
                    on_measure: Callable[[SpeedLookup], None] = _ignore) -> Plans:
    """Plans whose configurations (or `configurations`) train one fold within `time_budget` on `device`
    (its speed measured once per machine, cached in the workspace's device_speed.json)."""
    from autoseg.budget.compute_aware import measure_speeds, plan_within_budget
    from autoseg.device import device_type
    from autoseg.planning.time_budget import parse_duration

    seconds = parse_duration(time_budget)
    resolved_device = device_type(device)
    cache_file = workspace.device_speed_file

    def lookup(dimension: int, precision: str) -> None:
        on_measure(SpeedLookup(dimension, precision, resolved_device, cache_file))

    speeds = measure_speeds(plans, resolved_device, cache_file, refresh=remeasure, on_measure=lookup)
    budgeted, _ = plan_within_budget(plans, seconds, speeds, num_training_cases=num_cases,
                                     configurations=configurations)
    return budgeted


def replan_for_budget(workspace: Workspace, task_name: str, plans: Plans, configuration: str, fold: str,
                      time_budget: str, device: str,
                      on_measure: Callable[[SpeedLookup], None] = _ignore) -> Plans:
    """plans.json with `configuration` re-planned from the fingerprint to train within `time_budget`
    (written, and returned).

    Refused (PlanError) for a configuration that inherits its network (plan the parent with `autoseg
    plan --time-budget`), for one autoseg does not plan for this task, and when folds other than `fold`
    were trained with the current network (they could no longer be ensembled with this one).
    """
    from autoseg.checkpoint import identity_of_configuration
    from autoseg.fingerprint import Fingerprint
    from autoseg.planning import plan_experiment

    entry = plans.configurations.get(configuration, {})
    if not has_own_network(entry):
        raise PlanError(f"--time-budget: {configuration} inherits its network from {entry['inherits_from']}; plan "
                        f"both with `autoseg plan TASK --time-budget {time_budget}`")
    fingerprint = Fingerprint.load(workspace.fingerprint_file(task_name))
    fresh = plan_experiment(fingerprint, gpu_memory_gb=plans.gpu_memory_gb, networks=plans.networks,
                            preset=plans.preset)
    if configuration not in fresh.configurations:
        raise PlanError(f"--time-budget: {configuration} is not a configuration autoseg plans for {task_name}")
    budgeted = fit_time_budget(workspace, fresh, time_budget, device, fingerprint.num_cases,
                               configurations=[configuration], on_measure=on_measure)
    replanned = replace(plans, configurations={**plans.configurations,
                                               configuration: budgeted.configurations[configuration]})
    if identity_of_configuration(replanned, configuration) != identity_of_configuration(plans, configuration):
        _refuse_if_other_folds_trained(workspace.task_results(task_name), configuration, fold)
    replanned.save(workspace.plans_file(task_name))
    return replanned


def _refuse_if_other_folds_trained(task_results, configuration: str, fold: str) -> None:
    """A PlanError when folds other than `fold` of `configuration` have a final checkpoint of the network
    about to be replaced."""
    others = [task_results.fold_folder(configuration, trained).name
              for trained in task_results.trained_folds(configuration) if trained != str(fold)]
    if others:
        raise PlanError(f"--time-budget: {', '.join(others)} of {configuration} were trained with the current plan's "
                        f"network; re-planning would leave them unusable with this fold. Train without --time-budget, "
                        f"or re-plan with `autoseg plan --time-budget` and train every fold again")
