"""Preprocess a whole task: every planned configuration that needs its own arrays.

Configurations that share a `data_identifier` (e.g. 2d reading the 3d_fullres arrays) are
preprocessed once. The reference labels of the cases preprocessed without error are then copied to the
workspace's reference segmentations (`Workspace.reference_segmentations`) so fold validation can be
scored without the raw dataset.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

from autoseg.artifacts import write_atomic
from autoseg.case_validation import CaseRequirements
from autoseg.dataset import Case, Dataset
from autoseg.errors import AutosegError, PlanError
from autoseg.preprocessing.store import (CasePreprocessor, PreprocessSummary, cases_not_up_to_date,
                                        preprocess_dataset)
from autoseg.workspace import Workspace


def preprocessor_for(plans, configuration_name: str, requirements: CaseRequirements) -> CasePreprocessor:
    configuration = plans.configuration(configuration_name)
    return CasePreprocessor(
        transpose_forward=plans.transpose_forward,
        target_spacing=configuration.spacing,
        normalization=configuration.normalization,
        use_mask_for_norm=configuration.use_mask_for_norm,
        intensity_stats={k: vars(v) for k, v in plans.intensity_per_channel.items()},
        requirements=requirements,
        is_2d_config=configuration.dimension == 2,
    )


def configurations_to_preprocess(plans, requested: Sequence[str] | None) -> dict[str, str]:
    """data_identifier -> the configuration whose settings produce those arrays."""
    names = list(requested) if requested else plans.configuration_names
    chosen: dict[str, str] = {}
    for name in names:
        configuration = plans.configuration(name)
        owner = configuration.data_identifier
        # A configuration reading another's arrays is preprocessed with that configuration's settings.
        if owner in plans.configurations and owner != name:
            chosen.setdefault(owner, owner)
        else:
            chosen.setdefault(owner, name)
    return chosen


def copy_reference_labels(cases: Sequence[Case], target: Path) -> None:
    """Copy each case's label into `target` unless a copy newer than the label is there. Each copy is
    written under a temporary name and renamed (`write_atomic`): a copy cut short is never mistaken
    for a whole one."""
    from autoseg.io import file_ending

    target.mkdir(parents=True, exist_ok=True)
    for case in cases:
        if case.label_file is None or not case.label_file.is_file():
            continue
        destination = target / f"{case.case_id}{file_ending(case.label_file)}"
        if not destination.is_file() or destination.stat().st_mtime_ns < case.label_file.stat().st_mtime_ns:
            write_atomic(destination, lambda tmp, source=case.label_file: shutil.copy2(source, tmp))


def cases_not_preprocessed(dataset: Dataset, plans, configuration_name: str, data_folder: Path) -> list[str]:
    """The ids of the dataset's cases that `preprocess_task` would (re)write into `data_folder` for the
    configuration: missing there, or stored from other files or settings."""
    [owner] = configurations_to_preprocess(plans, [configuration_name]).values()
    settings_signature = preprocessor_for(plans, owner, CaseRequirements.of(dataset)).settings_signature
    return cases_not_up_to_date(data_folder, dataset.cases, settings_signature)


def check_plans_are_current(plans, dataset: Dataset, plans_file: Path) -> None:
    """Raise a PlanError naming `fingerprint_signature` when the plan was not made from this dataset as it
    is now: files added, removed or modified since planning, or a plan made from a reference fingerprint
    (whose intensity statistics are not this dataset's)."""
    from autoseg.fingerprint import dataset_signature

    current = dataset_signature(dataset)
    if plans.fingerprint_signature != current:
        made_from = (f"a fingerprint of other files ({plans.fingerprint_signature!r})" if plans.fingerprint_signature
                     else "a fingerprint file without images")
        raise PlanError(f"{plans_file}: field 'fingerprint_signature': the plan was made from {made_from}, not from "
                        f"{dataset.root} as it is now ({current!r}); re-run `autoseg plan {dataset.root}`")


def preprocess_task(dataset: Dataset, plans, workspace: Workspace, task_name: str, *,
                    configurations: Sequence[str] | None = None, workers: int = 2,
                    progress: Callable[[str, str, str], None] | None = None) -> dict[str, PreprocessSummary]:
    """Preprocess `dataset` for the planned configurations into the workspace's preprocessed folder of
    `task_name`; returns a summary per data folder.

    progress(data_identifier, case_id, outcome) is called once per case and folder.
    """
    if plans.dataset_name != dataset.name and plans.dataset_name != dataset.root.name:
        raise AutosegError(f"plans are for {plans.dataset_name!r}, but the dataset is {dataset.name!r}; re-run plan")
    check_plans_are_current(plans, dataset, workspace.plans_file(task_name))
    requirements = CaseRequirements.of(dataset)
    summaries = {}
    for data_identifier, configuration_name in configurations_to_preprocess(plans, configurations).items():
        report = (lambda case_id, outcome, d=data_identifier: progress(d, case_id, outcome)) if progress else None
        summaries[data_identifier] = preprocess_dataset(
            dataset.cases, preprocessor_for(plans, configuration_name, requirements),
            workspace.preprocessed(task_name) / data_identifier, workers=workers, progress=report)
    failed = {failure.case_id for summary in summaries.values() for failure in summary.failures}
    preprocessed = [case for case in dataset.cases if case.case_id not in failed]
    copy_reference_labels(preprocessed, workspace.reference_segmentations(task_name))
    return summaries
