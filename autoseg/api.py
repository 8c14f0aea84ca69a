"""Python API for prediction: load a trained task once, then segment images.

    from autoseg.api import Segmenter
    segmenter = Segmenter("autoseg_workspace")                  # task planned last, find-best's choice
    label_image = segmenter.predict(sitk_image)                  # SimpleITK in, SimpleITK out
    labels = segmenter.predict(array_czyx, spacing=(2.5, 0.8, 0.8))   # numpy in (C, z, y, x) or (z, y, x)
    prediction = segmenter.predict("case.nii.gz")                # path in: Prediction (array + geometry)
    segmenter.predict_folder("in/", "out/")

The CLI's `autoseg predict` is a thin wrapper over `load_models` and `predict_folder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.errors import AutosegError
from autoseg.inference.predictor import (FolderSummary, Prediction, PredictionSettings, TrainedModel,
                                         load_trained_model, predict_folder, predict_image)
from autoseg.io import Geometry, read_image
from autoseg.workspace import Workspace


def trained_configurations(results_folder: Path, checkpoint: str = "final") -> list[str]:
    return sorted(p.name for p in results_folder.iterdir()
                  if p.is_dir() and any(p.glob(f"fold_*/checkpoint_{checkpoint}.pt"))) if results_folder.is_dir() else []


def default_configurations(results_folder: Path, plans, checkpoint: str) -> list[str]:
    """find-best's choice; else the only trained configuration; else 3d_fullres, then 2d, if trained."""
    choice_file = results_folder / "find_best.json"
    if choice_file.is_file():
        from autoseg.selection import load_choice

        choice = load_choice(results_folder)
        if choice is not None:
            return list(choice.chosen)
    trained = [c for c in trained_configurations(results_folder, checkpoint) if c in plans.configurations]
    if not trained:
        raise AutosegError(f"{results_folder}: no trained configuration with checkpoint_{checkpoint}.pt; "
                           "run `autoseg train` first")
    for preferred in ("3d_fullres", "3d_cascade_fullres", "2d"):
        if preferred in trained and len(trained) > 1:
            return [preferred]
    return trained[:1]


def load_models(workspace: Workspace, task: str | None = None, configurations: Sequence[str] | None = None, *,
                folds: Sequence[str] | None = None, checkpoint: str = "final", device: str = "auto",
                postprocess: bool = True) -> list[TrainedModel]:
    """The models `predict` uses: one per configuration (two when find-best chose an ensemble)."""
    from autoseg.planning import Plans
    from autoseg.postprocessing import PostprocessingDecision

    task_name = task if task is not None and not (Path(task) / "dataset.json").is_file() else None
    task_name = task_name or (workspace.task_name(task) if task else workspace.current_task())
    plans = Plans.load(workspace.plans_file(task_name))
    results = workspace.results(task_name)
    names = list(configurations) if configurations else default_configurations(results, plans, checkpoint)
    decision_file = results / "postprocessing.json"
    decision = PostprocessingDecision.load(decision_file) if postprocess and decision_file.is_file() else None
    models = []
    for name in names:
        configuration = plans.configuration(name)
        previous = None
        if configuration.previous_stage:
            previous = load_trained_model(results / configuration.previous_stage, plans, configuration.previous_stage,
                                          folds=folds, checkpoint=checkpoint, device=device)
        models.append(load_trained_model(results / name, plans, name, folds=folds, checkpoint=checkpoint,
                                         device=device, postprocessing=decision if len(names) == 1 else None,
                                         previous_stage=previous))
    for model in models:
        model.ensemble_postprocessing = decision  # applied after averaging when there are several
    return models


def predict_with_models(models: list[TrainedModel], input_folder: Path, output_folder: Path,
                        settings: PredictionSettings, *, overwrite: bool = False, part=(0, 1),
                        on_case=None, progress=None) -> FolderSummary:
    """One model: predict directly. Several: each saves probabilities, then they are averaged."""
    if len(models) == 1:
        return predict_folder(models[0], input_folder, output_folder, settings, overwrite=overwrite, part=part,
                              on_case=on_case, progress=progress)
    from dataclasses import replace

    from autoseg.ensembling import ensemble_folders
    from autoseg.postprocessing import postprocess_folder

    members = []
    summary = FolderSummary()
    for model in models:
        member_folder = Path(output_folder) / ".members" / model.configuration_name
        member = predict_folder(model, input_folder, member_folder, replace(settings, save_probabilities=True),
                                overwrite=overwrite, part=part, on_case=on_case, progress=progress)
        summary.failures.update(member.failures)
        members.append(member_folder)
    averaged = Path(output_folder) / ".ensembled"
    written = ensemble_folders(members, averaged, save_probabilities=settings.save_probabilities)
    decision = getattr(models[0], "ensemble_postprocessing", None)
    if decision is not None and settings.postprocess:
        from autoseg.postprocessing import PostprocessingDecision  # noqa: F401

        summary.written = [str(p) for p in postprocess_folder(averaged, output_folder, decision)]
    else:
        import shutil

        for path in written:
            shutil.move(path, Path(output_folder) / Path(path).name)
            summary.written.append(str(Path(output_folder) / Path(path).name))
    return summary


class Segmenter:
    """A trained task loaded once; `predict` accepts SimpleITK images, file paths or numpy arrays."""

    def __init__(self, home: str | Path = "autoseg_workspace", task: str | None = None,
                 configuration: str | None = None, *, folds: Sequence[str] | None = None,
                 checkpoint: str = "final", device: str = "auto", settings: PredictionSettings | None = None):
        self.workspace = Workspace(Path(home))
        self.models = load_models(self.workspace, task, [configuration] if configuration else None,
                                  folds=folds, checkpoint=checkpoint, device=device)
        if len(self.models) != 1:
            raise AutosegError("the chosen pipeline is an ensemble of configurations; pass configuration=... "
                               "or use predict_folder")
        self.model = self.models[0]
        self.settings = settings or PredictionSettings()

    def predict(self, image, spacing: Sequence[float] | None = None):
        import SimpleITK as sitk

        if isinstance(image, (str, Path)):
            array, geometry = read_image(image)
            return predict_image(self.model, array, geometry, self.settings)
        if isinstance(image, sitk.Image):
            return self._predict_sitk(image)
        if isinstance(image, np.ndarray):
            if spacing is None:
                raise AutosegError("predict(array): pass spacing=(z, y, x) in mm")
            array = image[None] if image.ndim == 3 else image
            geometry = Geometry(shape=tuple(array.shape[1:]), spacing_zyx=tuple(float(s) for s in spacing))
            return predict_image(self.model, array.astype(np.float32), geometry, self.settings).segmentation
        raise AutosegError(f"predict: unsupported input type {type(image).__name__}")

    def _predict_sitk(self, image):
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(image).astype(np.float32)
        if image.GetNumberOfComponentsPerPixel() > 1:
            array = np.moveaxis(array, -1, 0)
        else:
            array = array[None]
        geometry = Geometry(shape=tuple(array.shape[1:]), spacing_zyx=tuple(reversed(image.GetSpacing())),
                            origin_xyz=image.GetOrigin(), direction=image.GetDirection())
        segmentation = predict_image(self.model, array, geometry, self.settings).segmentation
        result = sitk.GetImageFromArray(segmentation.astype(np.uint8))
        result.CopyInformation(image) if image.GetNumberOfComponentsPerPixel() == 1 else None
        return result

    def predict_folder(self, input_folder, output_folder, **options) -> FolderSummary:
        return predict_with_models(self.models, Path(input_folder), Path(output_folder), self.settings, **options)
