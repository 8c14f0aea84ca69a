"""Python API for prediction: load a trained task once, then segment images.

    from autoseg.api import Segmenter
    segmenter = Segmenter("autoseg_workspace")                  # task planned last, find-best's choice
    label_image = segmenter.predict(sitk_image)                  # SimpleITK in, SimpleITK out (same grid)
    labels = segmenter.predict(array_czyx, spacing=(2.5, 0.8, 0.8))   # numpy (C, z, y, x) or (z, y, x), mm
    prediction = segmenter.predict("case.nii.gz")                # path in: Prediction (array + geometry)
    prediction = segmenter.predict(["case_0000.nii.gz", "case_0001.nii.gz"])   # one file per channel
    segmenter.predict_folder("in/", "out/")

The networks are loaded once, in the constructor; every `predict` reuses them. The CLI's
`autoseg predict` is a thin wrapper over `load_models` and `predict_with_models`; the constructor
takes the same options (task, configuration, folds, checkpoint, device, PredictionSettings).
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


def load_models(workspace: Workspace, task: str | None = None, configurations: Sequence[str] | None = None, *,
                folds: Sequence[str] | None = None, checkpoint: str = "final", device: str = "auto",
                postprocess: bool = True) -> list[TrainedModel]:
    """The models `predict` uses: one per configuration (two when find-best chose an ensemble)."""
    from autoseg.planning import Plans
    from autoseg.postprocessing import PostprocessingDecision
    from autoseg.stages.choice import default_prediction_configurations

    task_name = task if task is not None and not (Path(task) / "dataset.json").is_file() else None
    task_name = task_name or (workspace.task_name(task) if task else workspace.current_task())
    plans = Plans.load(workspace.plans_file(task_name))
    results = workspace.results(task_name)
    names = list(configurations) if configurations else default_prediction_configurations(
        workspace.task_results(task_name), plans, checkpoint)
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
    """One model: predict directly. Several (find-best chose an ensemble of configurations): each
    predicts into OUTPUT/.members/CONFIG with its probabilities, then they are averaged per case and
    the segmentations (and with `save_probabilities` the averaged probabilities) land in OUTPUT."""
    if len(models) == 1:
        return predict_folder(models[0], input_folder, output_folder, settings, overwrite=overwrite, part=part,
                              on_case=on_case, progress=progress)
    import shutil
    from dataclasses import replace

    from autoseg.ensembling import ensemble_folders
    from autoseg.inference.predictor import group_input_files
    from autoseg.io import file_ending, segmentation_ending_for
    from autoseg.postprocessing import postprocess_folder

    members = []
    summary = FolderSummary()
    for model in models:
        member_folder = Path(output_folder) / ".members" / model.configuration_name
        member = predict_folder(model, input_folder, member_folder, replace(settings, save_probabilities=True),
                                overwrite=overwrite, part=part, on_case=on_case, progress=progress)
        summary.failures.update(member.failures)
        summary.windows += member.windows
        summary.network_seconds += member.network_seconds
        members.append(member_folder)
    cases = group_input_files(Path(input_folder), models[0].num_input_channels)
    ending = segmentation_ending_for(file_ending(next(iter(cases.values()))[0]))  # the inputs' format
    averaged = Path(output_folder) / ".ensembled"
    written = ensemble_folders(members, averaged, output_ending=ending, save_probabilities=settings.save_probabilities)
    decision = getattr(models[0], "ensemble_postprocessing", None)
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

    def predict(self, image, spacing: Sequence[float] | None = None, progress=None):
        """Segment one image, in the input's own geometry:
        - a path (or a list of per-channel paths): returns a `Prediction` (int16 (z, y, x) segmentation,
          its Geometry, probabilities when settings.save_probabilities); a picture (.png, ...) is read
          at the pixel spacing its model was planned for (`TrainedModel.pixel_spacing`);
        - a SimpleITK image (3D scalar or vector, or 4D with channels along the 4th axis): returns a
          SimpleITK label image with the same size, spacing, origin and direction;
        - a numpy array (C, z, y, x) or (z, y, x) with spacing=(z, y, x) in mm: returns the int16
          (z, y, x) segmentation.
        progress(windows_done, windows_total) is called as the sliding window advances."""
        import SimpleITK as sitk

        if isinstance(image, (str, Path, list, tuple)):
            array, geometry = read_image(image, self.model.pixel_spacing)
            return predict_image(self.model, array, geometry, self.settings, progress)
        if isinstance(image, sitk.Image):
            return self._predict_sitk(image, progress)
        if isinstance(image, np.ndarray):
            if spacing is None or len(spacing) != 3:
                raise AutosegError("predict(array): pass spacing=(z, y, x) in mm")
            if image.ndim not in (3, 4):
                raise AutosegError(f"predict(array): expected (z, y, x) or (C, z, y, x), got shape {image.shape}")
            array = image[None] if image.ndim == 3 else image
            geometry = Geometry(shape=tuple(array.shape[1:]), spacing_zyx=tuple(float(s) for s in spacing))
            return predict_image(self.model, array.astype(np.float32, copy=False), geometry, self.settings,
                                 progress).segmentation
        raise AutosegError(f"predict: unsupported input type {type(image).__name__}")

    def _predict_sitk(self, image, progress=None):
        import SimpleITK as sitk

        array, geometry = _sitk_to_array(image)
        segmentation = predict_image(self.model, array, geometry, self.settings, progress).segmentation
        fits_uint8 = segmentation.size == 0 or (segmentation.min() >= 0 and segmentation.max() < 256)
        result = sitk.GetImageFromArray(segmentation.astype(np.uint8 if fits_uint8 else np.int16))
        result.SetSpacing(tuple(reversed(geometry.spacing_zyx)))
        result.SetOrigin(geometry.origin_xyz)
        result.SetDirection(geometry.direction)
        return result

    def predict_folder(self, input_folder, output_folder, **options) -> FolderSummary:
        return predict_with_models(self.models, Path(input_folder), Path(output_folder), self.settings, **options)


def _sitk_to_array(image) -> tuple[np.ndarray, Geometry]:
    """float32 (C, z, y, x) and the geometry of a SimpleITK image: 3D scalar (one channel), 3D vector
    (components = channels) or 4D (channels along the 4th ITK axis, as MSD files)."""
    import SimpleITK as sitk

    array = np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)
    dimension, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dimension == 3:
        array = np.moveaxis(array, -1, 0) if components > 1 else array[None]
    elif dimension != 4 or components > 1:
        raise AutosegError(f"predict(SimpleITK image): {dimension}D image with {components} component(s); "
                           "expected 3D (scalar or vector) or 4D scalar")
    spacing, origin = image.GetSpacing()[:3], image.GetOrigin()[:3]
    direction = np.asarray(image.GetDirection()).reshape(dimension, dimension)[:3, :3].ravel()
    geometry = Geometry(shape=tuple(int(n) for n in array.shape[1:]), spacing_zyx=tuple(reversed(spacing)),
                        origin_xyz=tuple(float(v) for v in origin), direction=tuple(float(v) for v in direction))
    return array, geometry


# ---------------------------------------------------------------------------------- planning and training
# The stages behind `autoseg plan` and `autoseg train`, and the rules for which configuration to use when
# none is named, for Python users:
#
#     from autoseg.api import TrainRequest, plan_task, train_fold
#     from autoseg.workspace import Workspace
#     workspace = Workspace(Path("autoseg_workspace"))
#     plan_task(workspace, "Task900_Demo", time_budget="15m")        # then preprocess
#     result = train_fold(workspace, TrainRequest(fold="0"))          # the default configuration
#     print(result.validation.format_table())

from autoseg.stages.choice import default_prediction_configurations, default_training_configuration  # noqa: E402, F401
from autoseg.stages.plan import PlanResult, plan_task  # noqa: E402, F401
from autoseg.stages.train import TrainRequest, TrainResult, train_fold  # noqa: E402, F401
