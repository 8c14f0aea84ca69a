"""End-of-training validation: predict the fold's held-out cases with the sliding window, write
them in original geometry (segmentations and probabilities, for ensembling), and score them.

TTA choice: a mirrored validation also scores each candidate mirror set (`autoseg.inference.mirroring`:
no mirroring, each single axis, all axes) from the same network passes, one accumulator per set (5 in
3D: 5x the accumulator memory of one prediction, for the validation only), and saves the per-case
Dice in the fold's `TaskResults.mirror_scores_file`; find-best chooses the TTA from them. The
written predictions and summary are those of all axes, as before.

Cascade: a configuration with a `next_stage` (3d_lowres) also stores each held-out case's
segmentation on the next stage's grid for cascade training (`autoseg.cascade`); a configuration
with a `previous_stage` (3d_cascade_fullres) reads those stored segmentations as its extra input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from autoseg.artifacts import write_json
from autoseg.workspace import TaskResults

if TYPE_CHECKING:
    import numpy as np

    from autoseg.inference.case import PredictionSettings
    from autoseg.inference.model import TrainedModel

# Given the loaded fold and its first validation case (preprocessed), the settings the cases are predicted
# with: how `autoseg train` runs its validation on the runtime predict will use (`autoseg.stages.train`).
SettingsFor = Callable[["TrainedModel", "np.ndarray"], "PredictionSettings"]


def _next_stage_grid(plans, configuration, data_folder: Path) -> Path | None:
    """The preprocessed folder whose grid the next stage trains on (None without a next stage)."""
    if not configuration.next_stage or configuration.next_stage not in plans.configurations:
        return None
    return Path(data_folder).parent / plans.configuration(configuration.next_stage).data_identifier


def validate_fold(plans, configuration_name: str, results: TaskResults, fold: str, data_folder: Path,
                  reference_folder: Path, val_ids: Sequence[str], *, checkpoint: str = "final",
                  device: str = "auto", use_tta: bool = True, on_case: Callable[[str], None] | None = None,
                  settings_for: SettingsFor | None = None):
    """Returns the EvaluationSummary of the fold; files go to the fold's `TaskResults.validation_folder`.
    The cases are predicted with `settings_for(model, first case's data)` (default: PredictionSettings(),
    torch at the trained precision); its mirror axes are ignored (see the module's docstring).

    Surface distances are in mm: the reference files' spacing, or for pictures (whose files hold
    none) the pixel spacing the plan was made for (dataset.json `pixel_spacing`, 1 x 1 by default).

    For a low-res stage the held-out cases' segmentations also go to its
    `TaskResults.predicted_next_stage_folder` (not for fold "all", whose cases were seen in
    training); a cascade stage reads them from its previous stage's.
    """
    from autoseg.cascade import append_stored_previous_stage, foreground_labels_of, save_for_next_stage
    from autoseg.ensembling import save_probabilities
    from autoseg.evaluation import evaluate_folder, find_segmentations
    from autoseg.inference.case import (PredictionSettings, predict_probabilities_mirror_sets,
                                       probabilities_to_prediction)
    from autoseg.inference.mirroring import MirrorScores, candidate_mirror_sets
    from autoseg.inference.model import load_trained_model
    from autoseg.io import read_segmentation, write_segmentation
    from autoseg.preprocessing.store import load_case

    configuration = plans.configuration(configuration_name)
    previous_stage_folder = results.predicted_next_stage_folder(configuration.previous_stage) \
        if configuration.previous_stage else None
    next_stage_grid = _next_stage_grid(plans, configuration, data_folder) if str(fold) != "all" else None
    model = load_trained_model(results, plans, configuration_name, folds=[fold], checkpoint=checkpoint,
                               device=device, previous_stage_from_files=previous_stage_folder is not None)
    # The sets scored (all axes last: its prediction is the one written); without mirroring only "off".
    mirror_sets = candidate_mirror_sets(configuration.dimension) if use_tta else {"off": ()}
    foreground = [v for v in sorted(int(v) for v in plans.labels) if v != 0]
    scores = MirrorScores({name: list(axes) for name, axes in mirror_sets.items()}, {})
    output = results.validation_folder(configuration_name, fold)
    output.mkdir(parents=True, exist_ok=True)
    results.mirror_scores_file(configuration_name, fold).unlink(missing_ok=True)  # a previous run's
    references = find_segmentations(reference_folder)
    settings = None
    for case_id in val_ids:
        data, _, properties = load_case(data_folder, case_id, mmap=False)
        if previous_stage_folder is not None:
            data = append_stored_previous_stage(data, previous_stage_folder, case_id, foreground_labels_of(plans))
        if settings is None:
            settings = settings_for(model, data) if settings_for is not None else PredictionSettings()
        per_set = predict_probabilities_mirror_sets(model, data, settings, list(mirror_sets.values()))
        prediction = probabilities_to_prediction(model, per_set.pop(), properties, keep_probabilities=True,
                                                 postprocess=False)
        if case_id in references:  # else evaluate_folder below names the missing reference
            reference = read_segmentation(references[case_id], model.pixel_spacing)[0]
            scores.cases[case_id] = _set_dice(model, per_set, prediction.segmentation, properties, reference,
                                              list(mirror_sets), foreground)
        ending = references[case_id].name[len(case_id):] if case_id in references else ".nii.gz"
        write_segmentation(prediction.segmentation, prediction.geometry, output / f"{case_id}{ending}")
        save_probabilities(output / case_id, prediction.probabilities.astype("float16"), prediction.geometry,
                           labels=model.label_values)
        if next_stage_grid is not None:
            next_stage_properties = load_case(next_stage_grid, case_id)[2]
            save_for_next_stage(prediction.segmentation, next_stage_properties,
                                results.predicted_next_stage_folder(configuration_name), case_id)
        if on_case:
            on_case(case_id)
    labels = {int(v): name for v, name in plans.labels.items()}
    summary = evaluate_folder(output, reference_folder, labels, case_ids=list(val_ids),
                              pixel_spacing=model.pixel_spacing)
    summary.save(output)
    scores.save(results.mirror_scores_file(configuration_name, fold))
    write_json(output / "validation_info.json", {"checkpoint": checkpoint, "use_tta": use_tta,
                                                  "cases": list(val_ids)})
    return summary


def _set_dice(model, per_set: list, main_segmentation, properties, reference, names: list[str],
              foreground: list[int]) -> dict[str, dict[str, float]]:
    """{set name: {label: Dice}} of one case: the sets' probabilities in `per_set` (consumed, each
    restored to the original grid as a prediction is), then the last set's written segmentation."""
    from autoseg.inference.case import probabilities_to_prediction
    from autoseg.metrics import overlap_metrics

    def dice(segmentation) -> dict[str, float]:
        return {str(label): overlap_metrics(segmentation == label, reference == label)["Dice"]
                for label in foreground}

    scored = {}
    for name in names[:-1]:
        segmentation = probabilities_to_prediction(model, per_set.pop(0), properties, keep_probabilities=False,
                                                   postprocess=False).segmentation
        scored[name] = dice(segmentation)
    scored[names[-1]] = dice(main_segmentation)
    return scored
