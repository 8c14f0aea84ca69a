"""The Python API: every stage of the `autoseg` command line, one function each, with the same options
as keyword arguments and typed results. `home` is the workspace folder (the CLI's --home).

    from autoseg import api
    api.demo_data("autoseg_workspace/raw", cases=10)                      # -> the dataset folder
    report = api.check("Task900_Demo")                                    # -> CheckReport (.problems)
    api.fingerprint("Task900_Demo")                                       # -> FingerprintResult
    api.plan("Task900_Demo", time_budget="15m")                           # -> PlanResult (.plans)
    api.preprocess()                                                      # the task planned last
    result = api.train(TrainRequest(fold="0", epochs=50))                 # -> TrainResult (.validation)
    run = api.evaluate("pred/", "labelsTr/", labels=[1, 2])               # -> EvaluationRun (.summary)
    api.ensemble(["a/", "b/"], "out/")                                    # -> written segmentations
    api.postprocess("pred/", "out/")                                      # -> PostprocessResult
    best = api.find_best()                                                # -> FindBestResult
    summary = api.predict("imagesTs/", "out/", tta="off")                # -> FolderSummary
    api.export_model("model.zip")                                         # -> ExportResult (.manifest)
    api.predict("imagesTs/", "out/", model="model.zip")                   # a bundle, on another machine
    api.import_model("model.zip", home="other_workspace")                 # -> ImportResult (.task)

To segment images from Python, load a trained task once, then predict:

    from autoseg.api import Segmenter
    segmenter = Segmenter("autoseg_workspace")                  # task planned last, find-best's choice
    label_image = segmenter.predict(sitk_image)                  # SimpleITK in, SimpleITK out (same grid)
    labels = segmenter.predict(array_czyx, spacing=(2.5, 0.8, 0.8))   # numpy (C, z, y, x) or (z, y, x), mm
    prediction = segmenter.predict("case.nii.gz")                # path in: Prediction (array + geometry)
    prediction = segmenter.predict(["case_0000.nii.gz", "case_0001.nii.gz"])   # one file per channel
    segmenter.predict_folder("in/", "out/")
    segmenter = Segmenter(model="model.zip")                     # a model bundle, no workspace

The networks are loaded once, in the constructor (`load_models`, as `predict` does); every `predict`
reuses them. The constructor takes the same options (task, configuration, folds, checkpoint, device,
PredictionSettings), and `model` for a model bundle (`autoseg.bundle`); without settings it predicts with
runtime auto and the mirror TTA of `predict`'s `tta="auto"`, as `autoseg predict` (a PredictionSettings'
own default runtime is torch).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autoseg.demo import DemoSpec, make_demo_dataset
from autoseg.ensembling import ensemble_folders
from autoseg.errors import AutosegError
from autoseg.inference.case import PredictionSettings, predict_image
from autoseg.inference.sliding_window import DEFAULT_TILE_MODE, DEFAULT_TILE_OVERLAP
from autoseg.inference.folder import FolderSummary, calibration_cases, first_case_image
from autoseg.inference.model import TrainedModel, load_trained_model
from autoseg.inference.runtimes import check_runtime
from autoseg.io import Geometry, image_from_sitk, is_sitk_image, read_image, segmentation_to_sitk
from autoseg.preprocessing.store import PreprocessSummary
from autoseg.selection import load_choice
from autoseg.stages import bundle as bundle_stage
from autoseg.stages import dataset as dataset_stages
from autoseg.stages import evaluate as evaluate_stage
from autoseg.stages import find_best as find_best_stage
from autoseg.stages import postprocess as postprocess_stage
from autoseg.stages.case_reports import CaseReports
from autoseg.stages.choice import (MirroringDecision, check_tta, default_prediction_configurations,
                                   prediction_mirroring)
from autoseg.stages.plan import PlanResult, SpeedLookup, plan_task
from autoseg.stages.predict import predict_folder_with_models
from autoseg.stages.runtime import RuntimeChoice, settings_with_runtime
from autoseg.stages.train import TrainRequest, TrainResult, train_fold
from autoseg.workspace import DEFAULT_HOME, Workspace


def load_models(workspace: Workspace, task: str | None = None, configurations: Sequence[str] | None = None, *,
                folds: Sequence[str] | None = None, checkpoint: str = "final", device: str = "auto",
                postprocess: bool = True, model: str | Path | None = None) -> list[TrainedModel]:
    """The models `predict` uses: one per configuration (two when find-best chose an ensemble), from the
    workspace's task, or from the model bundle `model` (its configurations unless `configurations`)."""
    from autoseg.planning import Plans
    from autoseg.postprocessing import PostprocessingDecision

    if model is not None:
        return _load_bundle_models(Path(model), task, configurations, folds=folds, checkpoint=checkpoint,
                                   device=device, postprocess=postprocess)
    task_name = workspace.trained_task_name(task)
    plans = Plans.load(workspace.plans_file(task_name))
    results = workspace.task_results(task_name)
    names = list(configurations) if configurations else default_prediction_configurations(results, plans, checkpoint)
    decision_file = results.postprocessing_file
    decision = PostprocessingDecision.load(decision_file) if postprocess and decision_file.is_file() else None
    models = []
    for name in names:
        configuration = plans.configuration(name)
        previous = None
        if configuration.previous_stage:
            previous = load_trained_model(results, plans, configuration.previous_stage,
                                          folds=folds, checkpoint=checkpoint, device=device)
        models.append(load_trained_model(results, plans, name, folds=folds, checkpoint=checkpoint,
                                         device=device, postprocessing=decision if len(names) == 1 else None,
                                         previous_stage=previous))
    selection = load_choice(results)
    for model in models:
        model.ensemble_postprocessing = decision  # applied after averaging when there are several
        model.mirroring_choice = selection.mirroring.get(model.configuration_name) if selection else None
    return models


def _load_bundle_models(bundle_path: Path, task: str | None, configurations: Sequence[str] | None,
                        **options) -> list[TrainedModel]:
    """`load_models` on the bundle unpacked in a temporary workspace, removed once the networks are loaded."""
    from autoseg.bundle import unpacked_bundle
    from autoseg.stages.bundle import check_bundle_request

    if task is not None:
        raise AutosegError(f"give either a task ({task}) or a model bundle ({bundle_path}), not both")
    with unpacked_bundle(bundle_path) as (unpacked, manifest):
        check_bundle_request(manifest, str(bundle_path), configurations, options["folds"], options["checkpoint"])
        return load_models(unpacked, manifest.task, configurations or manifest.configurations, **options)


# ------------------------------------------------------------------------------- the CLI's stages


def demo_data(output_folder: str | Path, *, task_name: str = "Task900_Demo", cases: int = 20,
              shape: Sequence[int] = (40, 64, 64), spacing: Sequence[float] = (2.0, 1.0, 1.0), modality: str = "CT",
              channels: int = 1, seed: int = 0, two_d: bool = False) -> Path:
    """`autoseg demo-data`: a deterministic synthetic dataset in MSD format; returns its folder.
    shape: (z, y, x) voxels ((y, x) with two_d: RGB PNG pictures); spacing: (z, y, x) mm; CT or MRI."""
    shape = (1, *shape) if two_d and len(shape) == 2 else tuple(shape)
    if len(shape) != 3 or len(spacing) != 3:
        raise AutosegError("--shape and --spacing take three values (z,y,x)")
    if modality.upper() not in ("CT", "MRI"):
        raise AutosegError(f"--modality: expected CT or MRI, got {modality!r}")
    spec = DemoSpec(cases=cases, shape=shape, spacing=tuple(spacing), modality=modality.upper(),
                    channels=3 if two_d else channels, seed=seed, two_d=two_d)
    return make_demo_dataset(output_folder, task_name, spec)


def check(task: str | Path, *, workers: int = 2, home: str | Path = DEFAULT_HOME,
          progress: Callable[[int, int], None] | None = None) -> dataset_stages.CheckReport:
    """`autoseg check`: every problem of a dataset, with its case and file. progress(done, total) per case."""
    return dataset_stages.check(Workspace(Path(home)), task, workers=workers, progress=progress)


def fingerprint(task: str | Path, *, workers: int = 2, home: str | Path = DEFAULT_HOME,
                progress: Callable[[int, int], None] | None = None) -> dataset_stages.FingerprintResult:
    """`autoseg fingerprint`: the dataset fingerprint (reused when the dataset has not changed)."""
    return dataset_stages.fingerprint(Workspace(Path(home)), task, workers=workers, progress=progress)


def plan(task: str | Path | None = None, *, fingerprint_file: str | Path | None = None,
         gpu_memory_gb: float | None = None, time_budget: str | None = None, device: str = "auto",
         remeasure: bool = False, workers: int = 2, networks: Sequence[str] | None = None, preset: str | None = None,
         home: str | Path = DEFAULT_HOME, progress: Callable[[int, int], None] | None = None,
         on_measure: Callable[[SpeedLookup], None] | None = None) -> PlanResult:
    """`autoseg plan`: plans.json from the task's fingerprint (or a fingerprint file alone), sized for
    `gpu_memory_gb` (default: the `preset`'s, M 8 / L 24 / XL 40 GB, else 8), or with `time_budget` ("15m",
    "2h") for one fold per configuration on `device`; `networks` (e.g. ["resenc"]) adds a configuration per
    network and dimension."""
    options = {"on_case_done": progress} if progress else {}
    if on_measure:
        options["on_measure"] = on_measure
    return plan_task(Workspace(Path(home)), task, Path(fingerprint_file) if fingerprint_file else None,
                     gpu_memory_gb=gpu_memory_gb, time_budget=time_budget, device=device, remeasure=remeasure,
                     workers=workers, networks=list(networks) if networks else None, preset=preset, **options)


def train(request: TrainRequest | None = None, *, home: str | Path = DEFAULT_HOME, **options) -> TrainResult:
    """`autoseg train`: one fold of a configuration (`TrainRequest`: configuration, fold, epochs, ...;
    default: fold 0 of the default configuration), validated; `options` are train_fold's callbacks."""
    return train_fold(Workspace(Path(home)), request or TrainRequest(), **options)


def preprocess(task: str | Path | None = None, *, configurations: Sequence[str] | None = None, workers: int = 2,
               home: str | Path = DEFAULT_HOME, progress: Callable[[str, str, str], None] | None = None
               ) -> dict[str, PreprocessSummary]:
    """`autoseg preprocess`: the planned task's cases for its configurations (default all); a summary per
    data folder. progress(data folder, case id, outcome) per case."""
    return dataset_stages.preprocess(Workspace(Path(home)), task, configurations=configurations, workers=workers,
                                     progress=progress)


def evaluate(predictions: str | Path, references: str | Path, *, labels: evaluate_stage.Labels | None = None,
             regions: evaluate_stage.Regions | None = None, task: str | Path | None = None, workers: int = 2,
             pixel_spacing: float | Sequence[float] | None = None,
             home: str | Path = DEFAULT_HOME) -> evaluate_stage.EvaluationRun:
    """`autoseg evaluate`: scores per case and label, saved as summary.json/.csv in `predictions`.
    labels: [1, 2] or {1: "organ"}; regions: [(1, 2)] or {"name": (1, 2)}; pixel_spacing: of pictures, mm."""
    return evaluate_stage.evaluate(Workspace(Path(home)), Path(predictions), Path(references), labels=labels,
                                   regions=regions, task=task, workers=workers, pixel_spacing=pixel_spacing)


def ensemble(input_folders: Sequence[str | Path], output_folder: str | Path, *,
             save_probabilities: bool = False) -> list[str]:
    """`autoseg ensemble`: average the saved probabilities of several prediction folders; the written
    segmentations."""
    if len(input_folders) < 2:
        raise AutosegError("ensemble needs at least two input folders and an output folder")
    return ensemble_folders(input_folders, output_folder, save_probabilities=save_probabilities)


def postprocess(input_folder: str | Path, output_folder: str | Path, *, decision_file: str | Path | None = None,
                task: str | Path | None = None, workers: int = 2,
                home: str | Path = DEFAULT_HOME) -> postprocess_stage.PostprocessResult:
    """`autoseg postprocess`: apply `decision_file` (default: the task's postprocessing.json)."""
    return postprocess_stage.postprocess(Workspace(Path(home)), Path(input_folder), Path(output_folder),
                                         decision_file=Path(decision_file) if decision_file else None, task=task,
                                         workers=workers)


def find_best(*, task: str | None = None, configurations: Sequence[str] | None = None,
              folds: Sequence[str] | None = None, allow_ensembles: bool = True, workers: int = 2,
              home: str | Path = DEFAULT_HOME) -> find_best_stage.FindBestResult:
    """`autoseg find-best`: the best configuration (or pair ensemble) by cross-validation, and its postprocessing."""
    return find_best_stage.find_best(Workspace(Path(home)), task=task, configurations=configurations, folds=folds,
                                     allow_ensembles=allow_ensembles, workers=workers)


def predict(input_path: str | Path, output_folder: str | Path, *, task: str | None = None,
            configuration: str | None = None, folds: Sequence[str] | None = None, checkpoint: str = "final",
            tile_mode: str = DEFAULT_TILE_MODE, tile_overlap: int = DEFAULT_TILE_OVERLAP,
            step_size: float = 0.5, tta: str = "auto", save_probabilities: bool = False, device: str = "auto",
            precision: str = "auto", runtime: str = "auto", batch_windows: int | None = None,
            overwrite: bool = False, part: tuple[int, int] = (0, 1), postprocess: bool = True,
            output_format: str = "nifti", statistics: bool = False, preview: bool = False,
            home: str | Path = DEFAULT_HOME, model: str | Path | None = None,
            on_models: Callable[[list[TrainedModel]], None] | None = None,
            on_runtime: Callable[[RuntimeChoice, bool], None] | None = None,
            on_mirroring: Callable[[dict[str, MirroringDecision]], None] | None = None,
            on_case: Callable[[str, str], None] | None = None,
            progress: Callable[[int, int], None] | None = None) -> FolderSummary:
    """`autoseg predict`: segment a folder of images (or one image file) with find-best's choice (or
    `configuration`) of the workspace, or of the model bundle `model` (then no workspace is read), as
    label map files or (output_format "dicom-seg", DICOM input) DICOM-SEGs.
    on_models(models) once they are loaded; on_case(case id, status) per case;
    progress(windows done, windows total) inside a case. Failed cases are in the summary's failures.
    statistics: statistics.json/.csv (volume, intensities, bounding box per case and label); preview: a
    PNG per case in previews/ and index.html (`autoseg.stages.case_reports`).
    tile_mode "patch": the training patch at step_size (nnU-Net's sliding window); "large": tiles as large
    as memory allows, overlapping by tile_overlap voxels (faster; see `sliding_window.DEFAULT_TILE_MODE`).
    tta: the mirror test-time augmentation, "auto" (find-best's choice per configuration, else all axes),
    "off", "all" or "axis:N" (`stages.choice.prediction_mirroring`); on_mirroring({configuration:
    MirroringDecision}) once the models are loaded.
    runtime: auto (the fastest that agrees with torch fp32, measured once: `autoseg.stages.runtime`; told to
    on_runtime(choice, whether cached)), torch, torch-compile, onnxruntime or openvino; precision: the
    arithmetic (any for the torch runtimes, fp32 for onnxruntime, fp32, bf16 or int8 for openvino: int8
    is calibrated on the cases after the first, the first when it is alone; `autoseg.network.quantization`)."""
    check_runtime(runtime, precision)
    check_tta(tta)
    settings = PredictionSettings(tile_mode=tile_mode, step_fraction=step_size, tile_overlap=tile_overlap,
                                  batch_windows=batch_windows, device=device, precision=precision,
                                  runtime=runtime, save_probabilities=save_probabilities,
                                  postprocess=postprocess)  # checks the tile mode before any model loads
    workspace = Workspace(Path(home))
    models = load_models(workspace, task, [configuration] if configuration else None, folds=folds,
                         checkpoint=checkpoint, device=device, postprocess=postprocess, model=model)
    if on_models is not None:
        on_models(models)
    mirroring = prediction_mirroring(tta, models)
    if on_mirroring is not None:
        on_mirroring(mirroring)
    # A bundle predicting where there is no workspace leaves none behind: its runtime choice is not cached.
    cache = workspace if model is None or workspace.home.is_dir() else None
    # The runtime is judged under the first model's mirror TTA (each model predicts with its own below).
    settings = dataclasses.replace(settings, mirror_axes=mirroring[models[0].configuration_name].mirror_axes)
    settings = settings_with_runtime(cache, models, settings, on_choice=on_runtime,
                                     probe_image=lambda: first_case_image(models[0], Path(input_path)),
                                     calibration_images=lambda: calibration_cases(models[0], Path(input_path)))
    reports = CaseReports.for_model(models[0], statistics, preview)
    return predict_folder_with_models(models, Path(input_path), Path(output_folder), settings, overwrite=overwrite,
                                      part=part, on_case=on_case, progress=progress, output_format=output_format,
                                      reports=reports, mirror_axes={name: d.mirror_axes for name, d in mirroring.items()})


def export_model(bundle_path: str | Path, *, task: str | None = None, configurations: Sequence[str] | None = None,
                 folds: Sequence[str] | None = None, onnx: bool = False,
                 home: str | Path = DEFAULT_HOME) -> bundle_stage.ExportResult:
    """`autoseg export-model`: a model bundle (zip) of the task's models: find-best's choice (or
    `configurations`), every fold with a final checkpoint (or `folds`); with `onnx`, each fold's network
    as ONNX too (parity with torch checked at export: ExportResult.onnx_parity)."""
    return bundle_stage.export_model(Workspace(Path(home)), Path(bundle_path), task=task,
                                     configurations=configurations, folds=folds, onnx=onnx)


def import_model(bundle_path: str | Path, *, task_name: str | None = None,
                 home: str | Path = DEFAULT_HOME) -> bundle_stage.ImportResult:
    """`autoseg import-model`: install a model bundle as a task of the workspace (the bundle's task name,
    or `task_name`), which becomes the current task."""
    return bundle_stage.import_model(Workspace(Path(home)), Path(bundle_path), task_name=task_name)


class Segmenter:
    """A trained task loaded once; `predict` accepts SimpleITK images, file paths or numpy arrays."""

    def __init__(self, home: str | Path = "autoseg_workspace", task: str | None = None,
                 configuration: str | None = None, *, folds: Sequence[str] | None = None,
                 checkpoint: str = "final", device: str = "auto", settings: PredictionSettings | None = None,
                 model: str | Path | None = None):
        self.workspace = Workspace(Path(home))
        self.models = load_models(self.workspace, task, [configuration] if configuration else None,
                                  folds=folds, checkpoint=checkpoint, device=device, model=model)
        if len(self.models) != 1:
            raise AutosegError("the chosen pipeline is an ensemble of configurations; pass configuration=... "
                               "or use predict_folder")
        self.model = self.models[0]
        if settings is None:
            mirroring = prediction_mirroring("auto", self.models)[self.model.configuration_name]
            settings = PredictionSettings(mirror_axes=mirroring.mirror_axes, runtime="auto")
        cache = self.workspace if model is None or self.workspace.home.is_dir() else None
        self.settings = settings_with_runtime(cache, self.models, settings)

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
        if isinstance(image, (str, Path, list, tuple)):
            array, geometry = read_image(image, self.model.pixel_spacing)
            return predict_image(self.model, array, geometry, self.settings, progress)
        if is_sitk_image(image):
            array, geometry = image_from_sitk(image)
            segmentation = predict_image(self.model, array, geometry, self.settings, progress).segmentation
            return segmentation_to_sitk(segmentation, geometry)
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

    def predict_folder(self, input_folder, output_folder, **options) -> FolderSummary:
        return predict_folder_with_models(self.models, Path(input_folder), Path(output_folder), self.settings,
                                          **options)

