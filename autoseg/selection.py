"""Model selection from cross-validation (`autoseg find-best`), after nnU-Net's find_best_configuration.

Every trained configuration's cross-validation predictions, and every pair of them ensembled, are
gathered and scored by `autoseg.cross_validation` (inputs and folders described there). Then the
best candidate by foreground-mean Dice wins (ties: single models before ensembles, then name
order), and the largest-component postprocessing is decided on its predictions. Each scored
configuration's mirror TTA is chosen on its folds' mirror scores (`autoseg.mirror_choice`); an
ensemble's members each predict with their own choice (its probabilities are the members' mean, and
each member's choice is within the tolerance of its best set; the sets of an ensemble's members are
not scored together, as that would need every set's probabilities saved).
Outputs, in the task's results (`autoseg.workspace.TaskResults`): the selection file (`SelectionResult`),
its table, and the postprocessing file (`PostprocessingDecision`).
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from autoseg.artifacts import build_versioned, load_artifact, write_atomic, write_json
from autoseg.cross_validation import (
    TrainedConfigurations,
    cases_lacking_probabilities,
    collect_cross_validation,
    ensemble_cross_validations,
    format_folds,
    link_or_copy,
    trained_configurations,
)
from autoseg.errors import AutosegError, WorkspaceError
from autoseg.evaluation import EvaluationSummary, find_segmentations
from autoseg.mirror_choice import MirroringChoice, mirroring_choice
from autoseg.workspace import TaskResults

SELECTION_SCHEMA_VERSION = 2  # 2: the mirror TTA of each configuration ("mirroring")
# Version 1 files (before the TTA choice) still load, with no TTA chosen: predict mirrors on all axes.
_READABLE_SELECTION_VERSIONS = (1, SELECTION_SCHEMA_VERSION)
# Members of an ensemble candidate are joined with this in its name and folder name.
ENSEMBLE_SEPARATOR = "+"
# nnU-Net only tries ensembles of two configurations.
ENSEMBLE_SIZE = 2


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
    ensemble name: why it was not scored}; mirroring: {configuration: its mirror TTA choice}.
    """

    chosen: list[str]
    candidates: list[Candidate]
    folds: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    mirroring: dict[str, MirroringChoice] = field(default_factory=dict)
    schema_version: int = SELECTION_SCHEMA_VERSION

    @property
    def best(self) -> Candidate:
        return next(c for c in self.candidates if c.configurations == self.chosen)

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "chosen": self.chosen, "folds": self.folds,
                "candidates": [c.to_json() for c in self.candidates], "skipped": self.skipped,
                "mirroring": {name: choice.to_json() for name, choice in self.mirroring.items()}}

    @classmethod
    def from_json(cls, data: dict, where: str = "model selection") -> "SelectionResult":
        version = data.get("schema_version") if isinstance(data, dict) else None
        expected = version if version in _READABLE_SELECTION_VERSIONS else SELECTION_SCHEMA_VERSION
        result = build_versioned(data, cls._from_fields, expected_version=expected, where=where,
                                 what="model selection", what_to_do="re-run `autoseg find-best`")
        if not 1 <= len(result.chosen) <= ENSEMBLE_SIZE:
            raise AutosegError(f"{where}: field 'chosen' must name 1 or {ENSEMBLE_SIZE} configurations")
        return result

    @classmethod
    def _from_fields(cls, data: dict) -> "SelectionResult":
        return cls(chosen=[str(c) for c in data["chosen"]],
                   candidates=[Candidate.from_json(c) for c in data["candidates"]],
                   folds=[str(f) for f in data["folds"]], skipped=dict(data.get("skipped", {})),
                   mirroring={str(name): MirroringChoice.from_json(choice)
                              for name, choice in data.get("mirroring", {}).items()})

    def save(self, results: TaskResults) -> Path:
        """Write the task's selection file and its readable table (`format_table`), atomically; returns
        the selection file."""

        def write_table(tmp: str) -> None:
            Path(tmp).write_text(self.format_table() + "\n")

        write_atomic(results.selection_table_file, write_table)
        return write_json(results.selection_file, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "SelectionResult":
        """Read a selection file, or the one of the task whose results folder is `path`."""
        path = Path(path)
        return load_artifact(TaskResults(path).selection_file if path.is_dir() else path, cls.from_json)

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
        lines.extend(f"  mirror TTA of {name}: {choice.describe()}" for name, choice in self.mirroring.items())
        lines.append(f"chosen: {' + '.join(self.chosen)}")
        return "\n".join(lines)


def load_choice(results: TaskResults) -> SelectionResult | None:
    """The model selection of a task, or None before find-best ran."""
    return SelectionResult.load(results.selection_file) if results.selection_file.is_file() else None


# ---------------------------------------------------------------------------------------------- find best


def _candidate(configurations: list[str], summary: EvaluationSummary, folder: Path, results_folder: Path) -> Candidate:
    return Candidate(configurations, float(summary.foreground_mean["Dice"]),
                     {key: float(summary.mean[key]["Dice"]) for key in summary.foreground_labels},
                     os.path.relpath(folder, results_folder))


def _nothing_trained_error(results: TaskResults, inventory: TrainedConfigurations) -> WorkspaceError:
    details = "".join(f"\n  {name}: {reason}" for name, reason in inventory.skipped.items())
    if not details:
        details = f"\n  {results.root} holds no configuration folder with fold folders"
    return WorkspaceError(f"no configuration has validation predictions for folds {format_folds(inventory.folds)}; "
                          f"train them first: `autoseg train CONFIG --fold N`{details}")


def _score_ensembles(results: TaskResults, single: dict[str, Candidate], reference_folder: Path,
                     labels: Mapping[int, str], workers: int, skipped: dict[str, str],
                     pixel_spacing: Sequence[float] | None) -> list[Candidate]:
    """Every pair of scored configurations as an ensemble; pairs lacking probabilities go to `skipped`."""
    scored = []
    for members in combinations(sorted(single), ENSEMBLE_SIZE):
        folders = [results.root / single[m].folder for m in members]
        name = ENSEMBLE_SEPARATOR.join(members)
        lacking = {m: missing for m, f in zip(members, folders) if (missing := cases_lacking_probabilities(f))}
        if lacking:
            skipped[name] = "; ".join(f"{m} saved no probabilities for {len(c)} case(s) ({', '.join(c[:3])})"
                                      for m, c in lacking.items())
            continue
        target = results.ensembles_folder / name
        summary = ensemble_cross_validations(folders, target, reference_folder=reference_folder, labels=labels,
                                             workers=workers, pixel_spacing=pixel_spacing)
        scored.append(_candidate(list(members), summary, target, results.root))
    return scored


def find_best(results: TaskResults, reference_folder: str | Path, labels: Mapping[int, str],
              configurations: Sequence[str] | None = None, folds: Sequence[int | str] | None = None,
              allow_ensembles: bool = True, workers: int = 1,
              pixel_spacing: Sequence[float] | None = None) -> SelectionResult:
    """Score every trained configuration (and pair) on cross-validation, choose the best, decide postprocessing.

    reference_folder: the task's `Workspace.reference_segmentations`; labels: {label value: name}
    (background 0 ignored); pixel_spacing: (y, x) mm of picture references (`Plans.pixel_spacing`), so
    their surface distances are in mm. Writes into `results` each configuration's crossval folder, the
    ensembles' folders, the selection file and the postprocessing file (decided on the winner's predictions).
    """
    from autoseg.postprocessing import determine_postprocessing

    reference_folder = Path(reference_folder)
    inventory = trained_configurations(results, configurations, folds)
    if not inventory.complete:
        raise _nothing_trained_error(results, inventory)

    single = {}
    for name, config_folds in inventory.complete.items():
        summary = collect_cross_validation(results, name, config_folds, reference_folder=reference_folder,
                                           labels=labels, workers=workers, pixel_spacing=pixel_spacing)
        single[name] = _candidate([name], summary, results.crossval_folder(name), results.root)
    skipped = dict(inventory.skipped)
    ensembles = _score_ensembles(results, single, reference_folder, labels, workers, skipped,
                                 pixel_spacing) \
        if allow_ensembles else []

    candidates = sorted([*single.values(), *ensembles], key=Candidate.rank_key)
    mirroring = {name: mirroring_choice(results, name, inventory.complete[name]) for name in sorted(single)}
    result = SelectionResult(chosen=list(candidates[0].configurations), candidates=candidates,
                             folds=inventory.folds, skipped=skipped, mirroring=mirroring)
    winner_folder = results.root / result.best.folder
    with _references_of(winner_folder, reference_folder) as references:
        decision = determine_postprocessing(winner_folder, references, labels, workers=workers)
    decision.save(results.postprocessing_file)
    result.save(results)
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
            link_or_copy(references[case_id], Path(temporary) / references[case_id].name)
        yield Path(temporary)
