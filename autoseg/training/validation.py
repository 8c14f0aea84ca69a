"""End-of-training validation: predict the fold's held-out cases with the sliding window, write
them in original geometry (segmentations and probabilities, for ensembling), and score them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from autoseg.artifacts import write_json


def validate_fold(plans, configuration_name: str, configuration_folder: Path, fold: str, data_folder: Path,
                  reference_folder: Path, val_ids: Sequence[str], *, checkpoint: str = "final",
                  device: str = "auto", use_tta: bool = True, on_case: Callable[[str], None] | None = None,
                  previous_stage=None):
    """Returns the EvaluationSummary of the fold; files go to `configuration_folder/fold_F/validation/`."""
    from autoseg.ensembling import save_probabilities
    from autoseg.evaluation import evaluate_folder, find_segmentations
    from autoseg.inference.predictor import (PredictionSettings, load_trained_model, logits_to_prediction,
                                             predict_logits)
    from autoseg.io import write_segmentation
    from autoseg.preprocessing.store import load_case

    model = load_trained_model(configuration_folder, plans, configuration_name, folds=[fold],
                               checkpoint=checkpoint, device=device, previous_stage=previous_stage)
    settings = PredictionSettings(use_tta=use_tta)
    output = Path(configuration_folder) / f"fold_{fold}" / "validation"
    output.mkdir(parents=True, exist_ok=True)
    references = find_segmentations(reference_folder)
    for case_id in val_ids:
        data, _, properties = load_case(data_folder, case_id, mmap=False)
        if previous_stage is not None:
            from autoseg.inference.cascade import stored_previous_stage

            data = stored_previous_stage(model, data, properties, configuration_folder.parent, case_id)
        logits = predict_logits(model, data, settings)
        prediction = logits_to_prediction(model, logits, properties, keep_probabilities=True, postprocess=False)
        ending = references[case_id].name[len(case_id):] if case_id in references else ".nii.gz"
        write_segmentation(prediction.segmentation, prediction.geometry, output / f"{case_id}{ending}")
        save_probabilities(output / case_id, prediction.probabilities.astype("float16"), prediction.geometry,
                           labels=model.label_values)
        if on_case:
            on_case(case_id)
    labels = {int(v): name for v, name in plans.labels.items()}
    summary = evaluate_folder(output, reference_folder, labels, case_ids=list(val_ids))
    summary.save(output)
    write_json(output / "validation_info.json", {"checkpoint": checkpoint, "use_tta": use_tta,
                                                  "cases": list(val_ids)})
    return summary
