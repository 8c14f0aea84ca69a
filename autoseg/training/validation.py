"""End-of-training validation: predict the fold's held-out cases with the sliding window, write
them in original geometry (segmentations and probabilities, for ensembling), and score them.

Cascade: a configuration with a `next_stage` (3d_lowres) also stores each held-out case's
segmentation on the next stage's grid for cascade training (`autoseg.cascade`); a configuration
with a `previous_stage` (3d_cascade_fullres) reads those stored segmentations as its extra input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from autoseg.artifacts import write_json
from autoseg.workspace import TaskResults


def _next_stage_grid(plans, configuration, data_folder: Path) -> Path | None:
    """The preprocessed folder whose grid the next stage trains on (None without a next stage)."""
    if not configuration.next_stage or configuration.next_stage not in plans.configurations:
        return None
    return Path(data_folder).parent / plans.configuration(configuration.next_stage).data_identifier


def validate_fold(plans, configuration_name: str, results: TaskResults, fold: str, data_folder: Path,
                  reference_folder: Path, val_ids: Sequence[str], *, checkpoint: str = "final",
                  device: str = "auto", use_tta: bool = True, on_case: Callable[[str], None] | None = None):
    """Returns the EvaluationSummary of the fold; files go to the fold's `TaskResults.validation_folder`.

    Surface distances are in mm: the reference files' spacing, or for pictures (whose files hold
    none) the pixel spacing the plan was made for (dataset.json `pixel_spacing`, 1 x 1 by default).

    For a low-res stage the held-out cases' segmentations also go to its
    `TaskResults.predicted_next_stage_folder` (not for fold "all", whose cases were seen in
    training); a cascade stage reads them from its previous stage's.
    """
    from autoseg.cascade import append_stored_previous_stage, foreground_labels_of, save_for_next_stage
    from autoseg.ensembling import save_probabilities
    from autoseg.evaluation import evaluate_folder, find_segmentations
    from autoseg.inference.case import PredictionSettings, predict_probabilities, probabilities_to_prediction
    from autoseg.inference.model import load_trained_model
    from autoseg.io import write_segmentation
    from autoseg.preprocessing.store import load_case

    configuration = plans.configuration(configuration_name)
    previous_stage_folder = results.predicted_next_stage_folder(configuration.previous_stage) \
        if configuration.previous_stage else None
    next_stage_grid = _next_stage_grid(plans, configuration, data_folder) if str(fold) != "all" else None
    model = load_trained_model(results, plans, configuration_name, folds=[fold], checkpoint=checkpoint,
                               device=device, previous_stage_from_files=previous_stage_folder is not None)
    settings = PredictionSettings(use_tta=use_tta)
    output = results.validation_folder(configuration_name, fold)
    output.mkdir(parents=True, exist_ok=True)
    references = find_segmentations(reference_folder)
    for case_id in val_ids:
        data, _, properties = load_case(data_folder, case_id, mmap=False)
        if previous_stage_folder is not None:
            data = append_stored_previous_stage(data, previous_stage_folder, case_id, foreground_labels_of(plans))
        probabilities = predict_probabilities(model, data, settings)
        prediction = probabilities_to_prediction(model, probabilities, properties, keep_probabilities=True,
                                                 postprocess=False)
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
    write_json(output / "validation_info.json", {"checkpoint": checkpoint, "use_tta": use_tta,
                                                  "cases": list(val_ids)})
    return summary
