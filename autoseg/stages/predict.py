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
from autoseg.errors import AutosegError
from autoseg.inference.case import PredictionSettings
from autoseg.inference.folder import (FolderSummary, channel_names, check_output_format, foreground_label_names,
                                      group_input_files, output_ending, predict_folder, write_case_segmentation)
from autoseg.inference.model import TrainedModel
from autoseg.io import read_segmentation
from autoseg.postprocessing import postprocess_folder
from autoseg.stages.case_reports import CaseReports, complete_case_reports, report_writer

MEMBERS_FOLDER = ".members"  # OUTPUT/.members/CONFIG: one configuration's predictions with probabilities
AVERAGED_FOLDER = ".ensembled"  # OUTPUT/.ensembled: the averaged ones, before postprocessing


def predict_folder_with_models(models: list[TrainedModel], input_folder: Path, output_folder: Path,
                               settings: PredictionSettings, *, overwrite: bool = False,
                               part: tuple[int, int] = (0, 1), on_case: Callable[[str, str], None] | None = None,
                               progress: Callable[[int, int], None] | None = None,
                               output_format: str = "nifti", reports: CaseReports | None = None,
                               mirror_axes: Mapping[str, tuple[int, ...]] | None = None) -> FolderSummary:
    """One model: `predict_folder`. Several: each predicts into OUTPUT/.members/CONFIG with its
    probabilities, then they are averaged per case and the segmentations (and with
    `save_probabilities` the averaged probabilities) land in OUTPUT, as label map files or DICOM-SEGs.
    `reports`: statistics and previews (`autoseg.stages.case_reports`), written as each case is and
    completed at the end. mirror_axes: {configuration name: mirror axes} (`choice.prediction_mirroring`),
    each model's instead of settings.mirror_axes."""
    settings_of = {m.configuration_name: settings if mirror_axes is None
                   else replace(settings, mirror_axes=mirror_axes[m.configuration_name]) for m in models}
    cases = group_input_files(Path(input_folder), models[0].num_input_channels, channel_names(models[0]))
    check_output_format(cases, output_format)
    wants_reports = reports is not None and reports.wanted
    if len(models) == 1:
        hooks = [report_writer(reports, Path(output_folder))] if wants_reports else []
        summary = predict_folder(models[0], input_folder, output_folder, settings_of[models[0].configuration_name],
                                 overwrite=overwrite, part=part, on_case=on_case, progress=progress,
                                 output_format=output_format, after_case=hooks)
    elif wants_reports and output_format == "dicom-seg":
        raise AutosegError("--statistics/--preview with an ensemble of configurations need --output-format nifti "
                           "(they are computed from the averaged label maps)")
    else:
        summary = _predict_ensemble(models, settings_of, input_folder, output_folder, settings, overwrite, part,
                                    on_case, progress, cases, output_format)
    if wants_reports:
        chosen = sorted(cases)[part[0]::part[1]]
        summary.failures.update(complete_case_reports(reports, Path(output_folder), cases, chosen, output_format))
    return summary


def _predict_ensemble(models, settings_of: dict, input_folder: Path, output_folder: Path,
                      settings: PredictionSettings, overwrite: bool, part: tuple[int, int], on_case, progress,
                      cases: dict, output_format: str) -> FolderSummary:
    """Each model predicts with probabilities into its member folder; the averages land in `output_folder`."""
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
    ending = output_ending(next(iter(cases.values())))  # the inputs' format (NIfTI for DICOM)
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
    if output_format == "dicom-seg":
        summary.written = [_as_dicom_seg(Path(path), ending, cases, models[0]) for path in summary.written]
    return summary


def _as_dicom_seg(label_file: Path, ending: str, cases: dict, model: TrainedModel) -> str:
    """The DICOM-SEG of an ensemble's label map file (CASE{ending}), written next to it in its stead."""
    case_id = label_file.name[: -len(ending)]
    segmentation, geometry = read_segmentation(label_file)
    target = label_file.parent / f"{case_id}{output_ending(cases[case_id], 'dicom-seg')}"
    write_case_segmentation(segmentation, geometry, target, "dicom-seg", cases[case_id], foreground_label_names(model))
    label_file.unlink()
    return str(target)
