"""The predict stage's folder prediction with the models find-best chose: one configuration predicts
directly; several (an ensemble of configurations) each predict with probabilities, which are averaged.

The models come from `autoseg.api.load_models`: each carries the task's postprocessing decision as
`ensemble_postprocessing`, applied after averaging when there are several.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

from autoseg.ensembling import ensemble_folders
from autoseg.inference.case import PredictionSettings
from autoseg.inference.folder import FolderSummary, group_input_files, predict_folder
from autoseg.inference.model import TrainedModel
from autoseg.io import file_ending, segmentation_ending_for
from autoseg.postprocessing import postprocess_folder

MEMBERS_FOLDER = ".members"  # OUTPUT/.members/CONFIG: one configuration's predictions with probabilities
AVERAGED_FOLDER = ".ensembled"  # OUTPUT/.ensembled: the averaged ones, before postprocessing


def predict_folder_with_models(models: list[TrainedModel], input_folder: Path, output_folder: Path,
                               settings: PredictionSettings, *, overwrite: bool = False,
                               part: tuple[int, int] = (0, 1), on_case: Callable[[str, str], None] | None = None,
                               progress: Callable[[int, int], None] | None = None,
                               mirror_axes: Mapping[str, tuple[int, ...]] | None = None) -> FolderSummary:
    """One model: `predict_folder`. Several: each predicts into OUTPUT/.members/CONFIG with its
    probabilities, then they are averaged per case and the segmentations (and with
    `save_probabilities` the averaged probabilities) land in OUTPUT.

    mirror_axes: {configuration name: mirror axes} (`choice.prediction_mirroring`), each model's
    instead of settings.mirror_axes."""
    settings_of = {m.configuration_name: settings if mirror_axes is None
                   else replace(settings, mirror_axes=mirror_axes[m.configuration_name]) for m in models}
    if len(models) == 1:
        return predict_folder(models[0], input_folder, output_folder, settings_of[models[0].configuration_name],
                              overwrite=overwrite, part=part, on_case=on_case, progress=progress)
    members = []
    summary = FolderSummary()
    for model in models:
        member_folder = Path(output_folder) / MEMBERS_FOLDER / model.configuration_name
        member = predict_folder(model, input_folder, member_folder,
                                replace(settings_of[model.configuration_name], save_probabilities=True),
                                overwrite=overwrite, part=part, on_case=on_case, progress=progress)
        summary.failures.update(member.failures)
        summary.windows += member.windows
        summary.network_seconds += member.network_seconds
        members.append(member_folder)
    cases = group_input_files(Path(input_folder), models[0].num_input_channels)
    ending = segmentation_ending_for(file_ending(next(iter(cases.values()))[0]))  # the inputs' format
    averaged = Path(output_folder) / AVERAGED_FOLDER
    written = ensemble_folders(members, averaged, output_ending=ending, save_probabilities=settings.save_probabilities)
    decision = models[0].ensemble_postprocessing
    if decision is not None and settings.postprocess:
        summary.written = [str(p) for p in postprocess_folder(averaged, output_folder, decision)]
    else:
        for path in written:
            shutil.move(path, Path(output_folder) / Path(path).name)
            summary.written.append(str(Path(output_folder) / Path(path).name))
    if settings.save_probabilities:
        for path in [*averaged.glob("*.npz"), *averaged.glob("*.json")]:
            shutil.move(str(path), Path(output_folder) / path.name)
    return summary
