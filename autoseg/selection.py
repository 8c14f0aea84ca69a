"""Model selection from cross-validation (`autoseg find-best`), after nnU-Net's find_best_configuration.

Inputs, as training leaves them (per task, `results_folder` = HOME/results/TASK):
    splits.json                                the folds: [{"train": [...], "val": [...]}, ...]
    CONFIG/fold_F/validation/CASE<ending>      segmentation of each validation case, original geometry
    CONFIG/fold_F/validation/CASE.npz + .json  its probabilities (`autoseg.ensembling` format)
Steps:
    1. every configuration whose requested folds all have their validation cases is "trained";
       the others are skipped, with the reason kept in the result;
    2. each trained configuration's fold validations are gathered into CONFIG/crossval/ and scored;
    3. every pair of trained configurations is ensembled (mean of probabilities) into
       ensembles/CONFIG_A+CONFIG_B/ and scored (nnU-Net ensembles pairs only);
    4. the best candidate by foreground-mean Dice wins (ties: single models before ensembles, then
       name order), and the largest-component postprocessing is decided on its predictions.
Outputs: find_best.json (`SelectionResult`), find_best.txt (its table) and postprocessing.json
(`PostprocessingDecision`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from autoseg.artifacts import build_versioned, load_artifact, read_json, write_atomic, write_json
from autoseg.errors import AutosegError, WorkspaceError
from autoseg.evaluation import EvaluationSummary, evaluate_folder, find_segmentations

SELECTION_SCHEMA_VERSION = 1
FIND_BEST_JSON = "find_best.json"
FIND_BEST_TABLE = "find_best.txt"
SPLITS_JSON = "splits.json"
CROSSVAL_FOLDER = "crossval"
ENSEMBLES_FOLDER = "ensembles"
CROSSVAL_INFO_JSON = "crossval_info.json"
# Members of an ensemble candidate are joined with this in its name and folder name.
ENSEMBLE_SEPARATOR = "+"
# nnU-Net only tries ensembles of two configurations.
ENSEMBLE_SIZE = 2


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


def load_splits(results_folder: str | Path) -> list[dict]:
    """The folds of `results_folder/splits.json` (written by the first training run)."""
    path = Path(results_folder) / SPLITS_JSON
    if not path.is_file():
        raise WorkspaceError(f"{path}: not found, so no fold was trained; train first: "
                             "`autoseg train CONFIG --fold N`")
    splits = read_json(path)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "val" in s for s in splits):
        raise AutosegError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}}")
    return splits


def _requested_folds(splits: list[dict], folds: Sequence[int | str] | None, where: Path) -> list[str]:
    if folds is None:
        return [str(i) for i in range(len(splits))]
    requested = [str(f) for f in folds]
    unknown = [f for f in requested if not (f.isdigit() and int(f) < len(splits))]
    if unknown:
        raise AutosegError(f"{where / SPLITS_JSON}: no fold {', '.join(unknown)} (folds are 0-{len(splits) - 1})")
    if not requested:
        raise AutosegError("model selection needs at least one fold")
    return requested


def _configuration_folders(results_folder: Path) -> list[str]:
    """Names of the folders under `results_folder` holding at least one fold_* folder."""
    return sorted(p.name for p in results_folder.iterdir()
                  if p.is_dir() and p.name != ENSEMBLES_FOLDER and any(p.glob("fold_*")))


def _missing_fold_reason(configuration_folder: Path, fold: str, val_cases: Sequence[str]) -> str | None:
    """Why fold `fold` of a configuration cannot be used (None when its validation is complete)."""
    validation = configuration_folder / f"fold_{fold}" / "validation"
    if not validation.is_dir():
        return f"fold {fold} has no {validation} (train it: `autoseg train {configuration_folder.name} --fold {fold}`)"
    missing = sorted(set(val_cases) - set(find_segmentations(validation)))
    if missing:
        return (f"fold {fold}: {validation} lacks {len(missing)} of {len(val_cases)} validation cases "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); re-run its validation")
    return None


def trained_configurations(results_folder: str | Path, configurations: Sequence[str] | None = None,
                           folds: Sequence[int | str] | None = None) -> TrainedConfigurations:
    """Configurations whose requested folds all hold a complete `validation/` folder.

    configurations: default every folder of `results_folder` with a fold_* folder in it.
    folds: default every fold of splits.json (full cross-validation).
    A configuration lacking a fold (or some of a fold's validation cases) lands in `skipped`.
    """
    results_folder = Path(results_folder)
    if not results_folder.is_dir():
        raise WorkspaceError(f"{results_folder}: no results folder; train first: `autoseg train CONFIG --fold N`")
    splits = load_splits(results_folder)
    inventory = TrainedConfigurations(folds=_requested_folds(splits, folds, results_folder))
    for name in configurations if configurations is not None else _configuration_folders(results_folder):
        folder = results_folder / name
        if not folder.is_dir():
            inventory.skipped[name] = f"no folder {folder} (train it: `autoseg train {name} --fold N`)"
            continue
        reasons = [r for f in inventory.folds if (r := _missing_fold_reason(folder, f, splits[int(f)]["val"]))]
        if reasons:
            inventory.skipped[name] = "; ".join(reasons)
        else:
            inventory.complete[name] = list(inventory.folds)
    return inventory


# ---------------------------------------------------------------------------------------------- folders


def _link_or_copy(source: Path, target: Path) -> None:
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
        _link_or_copy(segmentations[case_id], target / segmentations[case_id].name)
        for ending in (".npz", ".json"):  # probabilities, when the fold saved them
            source = validation / f"{case_id}{ending}"
            if source.is_file():
                _link_or_copy(source, target / source.name)


def collect_cross_validation(results_folder: str | Path, configuration: str, folds: Sequence[int | str],
                             target_folder: str | Path | None = None, *, reference_folder: str | Path,
                             labels: Mapping[int, str], workers: int = 1,
                             pixel_spacing: Sequence[float] | None = None) -> EvaluationSummary:
    """Gather every fold's validation cases of `configuration` into one folder and score it
    (`pixel_spacing`: of picture references, as in `evaluate_folder`).

    target_folder: default `results_folder/CONFIG/crossval/`; it is replaced as a whole (built aside,
    then renamed), holding CASE<ending>, CASE.npz, CASE.json per case (hard links where possible),
    crossval_info.json ({"configuration", "folds", "cases"}) and the evaluation's summary.json/csv.
    reference_folder: the reference segmentations (HOME/preprocessed/TASK/gt_segmentations).
    Returns the EvaluationSummary (Dice etc. over all gathered cases).
    """
    results_folder = Path(results_folder)
    summaries: list[EvaluationSummary] = []
    splits = load_splits(results_folder)
    folds = _requested_folds(splits, folds, results_folder)
    target = Path(target_folder) if target_folder is not None else results_folder / configuration / CROSSVAL_FOLDER
    cases_of_fold = {f: list(splits[int(f)]["val"]) for f in folds}
    _check_disjoint(cases_of_fold, results_folder / SPLITS_JSON)
    case_ids = sorted(c for cases in cases_of_fold.values() for c in cases)

    def build(folder: Path) -> None:
        for fold, cases in cases_of_fold.items():
            validation = results_folder / configuration / f"fold_{fold}" / "validation"
            reason = _missing_fold_reason(results_folder / configuration, fold, cases)
            if reason:
                raise WorkspaceError(f"{configuration}: {reason}")
            _gather_fold_files(validation, cases, folder)
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
    """A case validated in two folds would be gathered twice: splits.json must not do that."""
    seen: dict[str, str] = {}
    for fold, cases in cases_of_fold.items():
        for case_id in cases:
            if case_id in seen:
                raise AutosegError(f"{splits_file}: case {case_id!r} is a validation case of folds {seen[case_id]} "
                                   f"and {fold}; cross-validation needs each case in one fold")
            seen[case_id] = fold


def _has_probabilities(folder: Path, case_ids: Sequence[str]) -> list[str]:
    """The cases of `folder` lacking a probability file (CASE.npz)."""
    return [c for c in case_ids if not (folder / f"{c}.npz").is_file()]


def ensemble_cross_validations(crossval_folders: Sequence[str | Path], target_folder: str | Path, *,
                               reference_folder: str | Path, labels: Mapping[int, str], workers: int = 1,
                               pixel_spacing: Sequence[float] | None = None) -> EvaluationSummary:
    """Average the probabilities of several crossval/ folders case by case into `target_folder` and score it.

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


# ---------------------------------------------------------------------------------------------- result


@dataclass
class Candidate:
    """One scored model: a configuration, or an ensemble of configurations.

    foreground_dice: mean over foreground labels of the per-label mean Dice over the CV cases;
    label_dice: {label value (str): mean Dice}; folder: its predictions, relative to the results folder.
    """

    configurations: list[str]
    foreground_dice: float
    label_dice: dict[str, float]
    folder: str

    @property
    def name(self) -> str:
        return ENSEMBLE_SEPARATOR.join(self.configurations)

    @property
    def is_ensemble(self) -> bool:
        return len(self.configurations) > 1

    def rank_key(self) -> tuple:
        """Sort key: higher Dice first, then single models before ensembles, then by name."""
        dice = self.foreground_dice if not math.isnan(self.foreground_dice) else -math.inf
        return (-dice, len(self.configurations), self.name)

    def to_json(self) -> dict:
        return {"name": self.name, "configurations": self.configurations,
                "foreground_dice": _json_number(self.foreground_dice),
                "label_dice": {k: _json_number(v) for k, v in self.label_dice.items()}, "folder": self.folder}

    @classmethod
    def from_json(cls, data: dict) -> "Candidate":
        return cls([str(c) for c in data["configurations"]], _number(data["foreground_dice"]),
                   {str(k): _number(v) for k, v in data["label_dice"].items()}, str(data["folder"]))


def _json_number(value: float):
    return None if math.isnan(value) else float(value)


def _number(value) -> float:
    return math.nan if value is None else float(value)


@dataclass
class SelectionResult:
    """What find-best chose: `chosen` (1 or 2 configurations) and every candidate, best first.

    folds: the cross-validation folds the candidates were scored on; skipped: {configuration or
    ensemble name: why it was not scored}.
    """

    chosen: list[str]
    candidates: list[Candidate]
    folds: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    schema_version: int = SELECTION_SCHEMA_VERSION

    @property
    def best(self) -> Candidate:
        return next(c for c in self.candidates if c.configurations == self.chosen)

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "chosen": self.chosen, "folds": self.folds,
                "candidates": [c.to_json() for c in self.candidates], "skipped": self.skipped}

    @classmethod
    def from_json(cls, data: dict, where: str = "model selection") -> "SelectionResult":
        result = build_versioned(data, cls._from_fields, expected_version=SELECTION_SCHEMA_VERSION, where=where,
                                 what="model selection", what_to_do="re-run `autoseg find-best`")
        if not 1 <= len(result.chosen) <= ENSEMBLE_SIZE:
            raise AutosegError(f"{where}: field 'chosen' must name 1 or {ENSEMBLE_SIZE} configurations")
        return result

    @classmethod
    def _from_fields(cls, data: dict) -> "SelectionResult":
        return cls(chosen=[str(c) for c in data["chosen"]],
                   candidates=[Candidate.from_json(c) for c in data["candidates"]],
                   folds=[str(f) for f in data["folds"]], skipped=dict(data.get("skipped", {})))

    def save(self, results_folder: str | Path) -> Path:
        """Write `find_best.json` and the readable `find_best.txt` (`format_table`) into `results_folder`
        (atomically); returns the JSON's path."""

        def write_table(tmp: str) -> None:
            Path(tmp).write_text(self.format_table() + "\n")

        write_atomic(Path(results_folder) / FIND_BEST_TABLE, write_table)
        return write_json(Path(results_folder) / FIND_BEST_JSON, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "SelectionResult":
        """Read a find_best.json, or the one inside the folder `path`."""
        return load_artifact(path, cls.from_json, FIND_BEST_JSON)

    def format_table(self) -> str:
        """The candidates, best first, with foreground-mean and per-label Dice; the chosen one marked."""
        label_keys = sorted({k for c in self.candidates for k in c.label_dice}, key=lambda k: (len(k), k))
        name_width = max([len("candidate"), *(len(c.name) for c in self.candidates)])
        header = (f"  {'candidate':<{name_width}}  {'fg Dice':>8}"
                  + "".join(f"  {'Dice ' + k:>8}" for k in label_keys))
        lines = [f"cross-validation folds {format_folds(self.folds)}", header, "-" * len(header)]
        for c in self.candidates:
            mark = "*" if c.configurations == self.chosen else " "
            lines.append(f"{mark} {c.name:<{name_width}}  {c.foreground_dice:>8.4f}"
                         + "".join(f"  {c.label_dice.get(k, math.nan):>8.4f}" for k in label_keys))
        lines.extend(f"  skipped {name}: {reason}" for name, reason in self.skipped.items())
        lines.append(f"chosen: {' + '.join(self.chosen)}")
        return "\n".join(lines)


def load_choice(results_folder: str | Path) -> SelectionResult | None:
    """The model selection of a task (`results_folder/find_best.json`), or None before find-best ran."""
    path = Path(results_folder) / FIND_BEST_JSON
    return SelectionResult.load(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------------- find best


def _candidate(configurations: list[str], summary: EvaluationSummary, folder: Path, results_folder: Path) -> Candidate:
    return Candidate(configurations, float(summary.foreground_mean["Dice"]),
                     {key: float(summary.mean[key]["Dice"]) for key in summary.foreground_labels},
                     os.path.relpath(folder, results_folder))


def _nothing_trained_error(results_folder: Path, inventory: TrainedConfigurations) -> WorkspaceError:
    details = "".join(f"\n  {name}: {reason}" for name, reason in inventory.skipped.items())
    if not details:
        details = f"\n  {results_folder} holds no configuration folder with fold_* folders"
    return WorkspaceError(f"no configuration has validation predictions for folds {format_folds(inventory.folds)}; "
                          f"train them first: `autoseg train CONFIG --fold N`{details}")


def _score_ensembles(results_folder: Path, single: dict[str, Candidate], reference_folder: Path,
                     labels: Mapping[int, str], workers: int, skipped: dict[str, str],
                     pixel_spacing: Sequence[float] | None) -> list[Candidate]:
    """Every pair of scored configurations as an ensemble; pairs lacking probabilities go to `skipped`."""
    scored = []
    for members in combinations(sorted(single), ENSEMBLE_SIZE):
        folders = [results_folder / single[m].folder for m in members]
        name = ENSEMBLE_SEPARATOR.join(members)
        lacking = {m: missing for m, f in zip(members, folders) if (missing := _has_probabilities(f, _cases_of(f)))}
        if lacking:
            skipped[name] = "; ".join(f"{m} saved no probabilities for {len(c)} case(s) ({', '.join(c[:3])})"
                                      for m, c in lacking.items())
            continue
        target = results_folder / ENSEMBLES_FOLDER / name
        summary = ensemble_cross_validations(folders, target, reference_folder=reference_folder, labels=labels,
                                             workers=workers, pixel_spacing=pixel_spacing)
        scored.append(_candidate(list(members), summary, target, results_folder))
    return scored


def _cases_of(crossval_folder: Path) -> list[str]:
    return list(read_json(crossval_folder / CROSSVAL_INFO_JSON)["cases"])


def find_best(results_folder: str | Path, reference_folder: str | Path, labels: Mapping[int, str],
              configurations: Sequence[str] | None = None, folds: Sequence[int | str] | None = None,
              allow_ensembles: bool = True, workers: int = 1,
              pixel_spacing: Sequence[float] | None = None) -> SelectionResult:
    """Score every trained configuration (and pair) on cross-validation, choose the best, decide postprocessing.

    results_folder: HOME/results/TASK; reference_folder: HOME/preprocessed/TASK/gt_segmentations;
    labels: {label value: name} (background 0 ignored); pixel_spacing: (y, x) mm of picture references
    (`Plans.pixel_spacing`), so their surface distances are in mm. Writes CONFIG/crossval/, ensembles/A+B/,
    find_best.json and postprocessing.json (decided on the winner's predictions) into `results_folder`.
    """
    from autoseg.postprocessing import determine_postprocessing

    results_folder, reference_folder = Path(results_folder), Path(reference_folder)
    inventory = trained_configurations(results_folder, configurations, folds)
    if not inventory.complete:
        raise _nothing_trained_error(results_folder, inventory)

    single = {}
    for name, config_folds in inventory.complete.items():
        target = results_folder / name / CROSSVAL_FOLDER
        summary = collect_cross_validation(results_folder, name, config_folds, target,
                                           reference_folder=reference_folder, labels=labels, workers=workers,
                                           pixel_spacing=pixel_spacing)
        single[name] = _candidate([name], summary, target, results_folder)
    skipped = dict(inventory.skipped)
    ensembles = _score_ensembles(results_folder, single, reference_folder, labels, workers, skipped,
                                 pixel_spacing) \
        if allow_ensembles else []

    candidates = sorted([*single.values(), *ensembles], key=Candidate.rank_key)
    result = SelectionResult(chosen=list(candidates[0].configurations), candidates=candidates,
                             folds=inventory.folds, skipped=skipped)
    winner_folder = results_folder / result.best.folder
    with _references_of(winner_folder, reference_folder) as references:
        decision = determine_postprocessing(winner_folder, references, labels, workers=workers)
    decision.save(results_folder)
    result.save(results_folder)
    return result


@contextmanager
def _references_of(prediction_folder: Path, reference_folder: Path) -> Iterator[Path]:
    """A folder of the references of exactly the cases predicted in `prediction_folder`.

    determine_postprocessing pairs every reference with a prediction; when only some folds were scored
    the reference folder holds more cases, so a temporary folder of links to the scored ones stands in.
    """
    predicted = set(find_segmentations(prediction_folder))
    references = find_segmentations(reference_folder)
    if set(references) <= predicted:
        yield reference_folder
        return
    with tempfile.TemporaryDirectory(prefix=".references-", dir=prediction_folder.parent) as temporary:
        for case_id in sorted(predicted & set(references)):
            _link_or_copy(references[case_id], Path(temporary) / references[case_id].name)
        yield Path(temporary)
