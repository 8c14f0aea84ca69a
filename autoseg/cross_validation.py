"""Cross-validation predictions of a task's configurations: which are complete, gathered and scored.

Inputs, as training leaves them in a task's results (`autoseg.workspace.TaskResults`):
    splits_file                                the folds: [{"train": [...], "val": [...]}, ...]
    validation_folder(CONFIG, F)/CASE<ending>  segmentation of each validation case, original geometry
    validation_folder(CONFIG, F)/CASE.npz, .json  its probabilities (`autoseg.ensembling` format)
Steps (the first three of model selection, `autoseg.selection.find_best`):
    1. every configuration whose requested folds all have their validation cases is "trained"
       (`trained_configurations`); the others are skipped, with the reason kept;
    2. each trained configuration's fold validations are gathered into its crossval_folder and scored
       (`collect_cross_validation`);
    3. pairs of gathered configurations are ensembled (mean of probabilities) into a folder of
       ensembles_folder and scored (`ensemble_cross_validations`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from autoseg.artifacts import read_json, write_json
from autoseg.errors import AutosegError, WorkspaceError
from autoseg.evaluation import EvaluationSummary, evaluate_folder, find_segmentations
from autoseg.workspace import TaskResults

CROSSVAL_INFO_JSON = "crossval_info.json"


# ---------------------------------------------------------------------------------------------- inventory


@dataclass
class TrainedConfigurations:
    """Which configurations have validation predictions for every requested fold.

    complete: {configuration: folds}; skipped: {configuration: why it cannot be used}.
    """

    folds: list[str]
    complete: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def format_folds(folds: Sequence[str]) -> str:
    """"0-4" for consecutive fold numbers, else "0, 2, 3"."""
    numbers = [int(f) for f in folds] if all(str(f).isdigit() for f in folds) else None
    if numbers and len(numbers) > 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(str(f) for f in folds)


def load_splits(results: TaskResults) -> list[dict]:
    """The folds of the task's splits file (written by the first training run)."""
    path = results.splits_file
    if not path.is_file():
        raise WorkspaceError(f"{path}: not found, so no fold was trained; train first: "
                             "`autoseg train CONFIG --fold N`")
    splits = read_json(path)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "val" in s for s in splits):
        raise AutosegError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}}")
    return splits


def _requested_folds(splits: list[dict], folds: Sequence[int | str] | None, splits_file: Path) -> list[str]:
    if folds is None:
        return [str(i) for i in range(len(splits))]
    requested = [str(f) for f in folds]
    unknown = [f for f in requested if not (f.isdigit() and int(f) < len(splits))]
    if unknown:
        raise AutosegError(f"{splits_file}: no fold {', '.join(unknown)} (folds are 0-{len(splits) - 1})")
    if not requested:
        raise AutosegError("model selection needs at least one fold")
    return requested


def _missing_fold_reason(results: TaskResults, configuration: str, fold: str, val_cases: Sequence[str]) -> str | None:
    """Why fold `fold` of a configuration cannot be used (None when its validation is complete)."""
    validation = results.validation_folder(configuration, fold)
    if not validation.is_dir():
        return f"fold {fold} has no {validation} (train it: `autoseg train {configuration} --fold {fold}`)"
    missing = sorted(set(val_cases) - set(find_segmentations(validation)))
    if missing:
        return (f"fold {fold}: {validation} lacks {len(missing)} of {len(val_cases)} validation cases "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); re-run its validation")
    return None


def trained_configurations(results: TaskResults, configurations: Sequence[str] | None = None,
                           folds: Sequence[int | str] | None = None) -> TrainedConfigurations:
    """Configurations whose requested folds all hold a complete validation folder.

    configurations: default every configuration folder of the task with a fold folder in it.
    folds: default every fold of the splits file (full cross-validation).
    A configuration lacking a fold (or some of a fold's validation cases) lands in `skipped`.
    """
    if not results.root.is_dir():
        raise WorkspaceError(f"{results.root}: no results folder; train first: `autoseg train CONFIG --fold N`")
    splits = load_splits(results)
    inventory = TrainedConfigurations(folds=_requested_folds(splits, folds, results.splits_file))
    for name in configurations if configurations is not None else results.configurations_with_folds():
        folder = results.configuration_folder(name)
        if not folder.is_dir():
            inventory.skipped[name] = f"no folder {folder} (train it: `autoseg train {name} --fold N`)"
            continue
        reasons = [r for f in inventory.folds
                   if (r := _missing_fold_reason(results, name, f, splits[int(f)]["val"]))]
        if reasons:
            inventory.skipped[name] = "; ".join(reasons)
        else:
            inventory.complete[name] = list(inventory.folds)
    return inventory


# ---------------------------------------------------------------------------------------------- folders


def link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no copy of the data) where the file system allows it, else copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _replace_folder(target: Path, build: Callable[[Path], None]) -> None:
    """Fill a fresh temporary sibling of `target` with `build(tmp)`, then swap it in by renaming.

    A crash while building leaves the old `target` untouched; readers see either the old or the new
    folder except during the two renames.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        build(fresh)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(fresh, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _gather_fold_files(validation: Path, case_ids: Sequence[str], target: Path) -> None:
    segmentations = find_segmentations(validation)
    for case_id in case_ids:
        link_or_copy(segmentations[case_id], target / segmentations[case_id].name)
        for ending in (".npz", ".json"):  # probabilities, when the fold saved them
            source = validation / f"{case_id}{ending}"
            if source.is_file():
                link_or_copy(source, target / source.name)


def collect_cross_validation(results: TaskResults, configuration: str, folds: Sequence[int | str],
                             target_folder: str | Path | None = None, *, reference_folder: str | Path,
                             labels: Mapping[int, str], workers: int = 1,
                             pixel_spacing: Sequence[float] | None = None) -> EvaluationSummary:
    """Gather every fold's validation cases of `configuration` into one folder and score it
    (`pixel_spacing`: of picture references, as in `evaluate_folder`).

    target_folder: default the configuration's crossval_folder; it is replaced as a whole (built aside,
    then renamed), holding CASE<ending>, CASE.npz, CASE.json per case (hard links where possible),
    crossval_info.json ({"configuration", "folds", "cases"}) and the evaluation's summary.json/csv.
    reference_folder: the reference segmentations (`Workspace.reference_segmentations`).
    Returns the EvaluationSummary (Dice etc. over all gathered cases).
    """
    summaries: list[EvaluationSummary] = []
    splits = load_splits(results)
    folds = _requested_folds(splits, folds, results.splits_file)
    target = Path(target_folder) if target_folder is not None else results.crossval_folder(configuration)
    cases_of_fold = {f: list(splits[int(f)]["val"]) for f in folds}
    _check_disjoint(cases_of_fold, results.splits_file)
    case_ids = sorted(c for cases in cases_of_fold.values() for c in cases)

    def build(folder: Path) -> None:
        for fold, cases in cases_of_fold.items():
            reason = _missing_fold_reason(results, configuration, fold, cases)
            if reason:
                raise WorkspaceError(f"{configuration}: {reason}")
            _gather_fold_files(results.validation_folder(configuration, fold), cases, folder)
        write_json(folder / CROSSVAL_INFO_JSON, {"configuration": configuration, "folds": folds, "cases": case_ids})
        summary = evaluate_folder(folder, reference_folder, labels, workers=workers, case_ids=case_ids,
                                  pixel_spacing=pixel_spacing)
        summaries.append(_as_if_in(summary, target))
        summaries[0].save(folder)

    _replace_folder(target, build)
    return summaries[0]


def _as_if_in(summary: EvaluationSummary, folder: Path) -> EvaluationSummary:
    """The summary with its prediction files named in `folder` (it was computed in the folder built aside)."""
    for case in summary.per_case:
        case.prediction_file = str(folder / Path(case.prediction_file).name)
    return summary


def _check_disjoint(cases_of_fold: dict[str, list[str]], splits_file: Path) -> None:
    """A case validated in two folds would be gathered twice: the splits file must not do that."""
    seen: dict[str, str] = {}
    for fold, cases in cases_of_fold.items():
        for case_id in cases:
            if case_id in seen:
                raise AutosegError(f"{splits_file}: case {case_id!r} is a validation case of folds {seen[case_id]} "
                                   f"and {fold}; cross-validation needs each case in one fold")
            seen[case_id] = fold


def cases_lacking_probabilities(crossval_folder: Path) -> list[str]:
    """The cases gathered in a crossval folder (its crossval_info.json) that lack a probability file (CASE.npz)."""
    case_ids = read_json(crossval_folder / CROSSVAL_INFO_JSON)["cases"]
    return [c for c in case_ids if not (crossval_folder / f"{c}.npz").is_file()]


def ensemble_cross_validations(crossval_folders: Sequence[str | Path], target_folder: str | Path, *,
                               reference_folder: str | Path, labels: Mapping[int, str], workers: int = 1,
                               pixel_spacing: Sequence[float] | None = None) -> EvaluationSummary:
    """Average the probabilities of several crossval folders case by case into `target_folder` and score it.

    The folder is replaced as a whole; segmentations take the ending of the first member's files.
    Returns the EvaluationSummary.
    """
    from autoseg.ensembling import ensemble_folders
    from autoseg.io import file_ending

    crossval_folders = [Path(f) for f in crossval_folders]
    first_member_files = find_segmentations(crossval_folders[0])
    ending = file_ending(next(iter(first_member_files.values()))) if first_member_files else ".nii.gz"

    summaries: list[EvaluationSummary] = []

    def build(folder: Path) -> None:
        ensemble_folders(crossval_folders, folder, output_ending=ending)
        summary = evaluate_folder(folder, reference_folder, labels, workers=workers,
                                  case_ids=sorted(find_segmentations(folder)), pixel_spacing=pixel_spacing)
        summaries.append(_as_if_in(summary, target))
        summaries[0].save(folder)

    target = Path(target_folder)
    _replace_folder(target, build)
    return summaries[0]
