"""From images on disk to segmentations on disk, in the input's own geometry.

    model = load_trained_model(results_folder, plans, "3d_fullres", folds=None)   # every trained fold
    prediction = predict_image(model, image, geometry, settings)                  # arrays in, arrays out
    summary = predict_folder(model, "in/", "out/", settings)                      # files in, files out

Per case: preprocess exactly as for training (transpose, crop, normalize, resample), sliding window
with Gaussian weighting and mirror TTA over every fold's network (logits averaged), softmax,
restore to the original grid, argmax, postprocessing. In `predict_folder` the next case is read
and preprocessed, and the previous one restored and written, while the network runs.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autoseg.errors import AutosegError, CheckpointError
from autoseg.io import Geometry, SUPPORTED_ENDINGS, file_ending, read_image, write_segmentation

CHECKPOINT_NAMES = ("final", "best", "latest")


@dataclass
class PredictionSettings:
    step_fraction: float = 0.5
    use_tta: bool = True
    batch_windows: int | None = None  # None: chosen from the device
    device: str = "auto"
    precision: str = "auto"  # auto: fp16 on CUDA, the trained precision's choice on CPU (fp32 unless bf16)
    save_probabilities: bool = False
    postprocess: bool = True


@dataclass
class TrainedModel:
    """One configuration of a task, loaded once: a network per fold, in eval mode."""

    plans: object  # autoseg.planning.plans.Plans
    configuration_name: str
    configuration: object  # autoseg.planning.plans.Configuration
    networks: list
    folds: list[str]
    device: object  # torch.device
    label_values: list[int]  # label value of each output channel
    postprocessing: object | None = None  # autoseg.postprocessing.PostprocessingDecision
    previous_stage: "TrainedModel | None" = None  # the cascade's low-res model
    trained_precision: str = "fp32"

    @property
    def num_input_channels(self) -> int:
        return len(self.plans.modality)


@dataclass
class Prediction:
    segmentation: np.ndarray  # int16 (z, y, x), original grid, label values of dataset.json
    probabilities: np.ndarray | None  # float32 (K, z, y, x), original grid, when asked for
    geometry: Geometry


@dataclass
class FolderSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # case id -> one-line error


# ------------------------------------------------------------------------------------------ loading


def fold_folders(configuration_folder: Path, folds: Sequence[str] | None, checkpoint: str) -> list[tuple[str, Path]]:
    """(fold name, checkpoint path) of the requested folds, or of every fold with that checkpoint."""
    if checkpoint not in CHECKPOINT_NAMES:
        raise AutosegError(f"--checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINT_NAMES)}")
    name = f"checkpoint_{checkpoint}.pt"
    if folds is None:
        found = sorted(p for p in configuration_folder.glob("fold_*") if (p / name).is_file())
        if not found:
            raise CheckpointError(f"{configuration_folder}: no trained fold has {name}; run `autoseg train` first")
        return [(p.name[len("fold_"):], p / name) for p in found]
    chosen = []
    for fold in folds:
        path = configuration_folder / f"fold_{fold}" / name
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (fold {fold} not trained, or no {checkpoint} checkpoint)")
        chosen.append((str(fold), path))
    return chosen


def load_network(plans, configuration_name: str, checkpoint_path: Path, device):
    from autoseg.network import build_network
    from autoseg.training.checkpoint import check_identity, load_checkpoint
    from autoseg.training.trainer import identity_of_configuration

    state = load_checkpoint(checkpoint_path, map_location=device)
    check_identity(state, identity_of_configuration(plans, configuration_name), checkpoint_path)
    configuration = plans.configuration(configuration_name)
    network = build_network(configuration.architecture)
    network.load_state_dict(state["network_weights"])
    network.deep_supervision = False
    return network.to(device).eval(), state.get("inference", {})


def load_trained_model(configuration_folder: Path, plans, configuration_name: str, *,
                       folds: Sequence[str] | None = None, checkpoint: str = "final", device: str = "auto",
                       postprocessing=None, previous_stage: TrainedModel | None = None) -> TrainedModel:
    from autoseg.training.trainer import pick_device

    torch_device = pick_device(device)
    networks, chosen, precision = [], [], "fp32"
    for fold, path in fold_folders(Path(configuration_folder), folds, checkpoint):
        network, inference = load_network(plans, configuration_name, path, torch_device)
        networks.append(network)
        chosen.append(fold)
        precision = inference.get("precision", precision)
    configuration = plans.configuration(configuration_name)
    if configuration.previous_stage and previous_stage is None:
        raise AutosegError(f"configuration {configuration_name} is a cascade stage: load its "
                           f"{configuration.previous_stage} model first")
    return TrainedModel(plans, configuration_name, configuration, networks, chosen, torch_device,
                        sorted(int(v) for v in plans.labels), postprocessing, previous_stage, precision)


# ------------------------------------------------------------------------------------------ one case


def _autocast_dtype(model: TrainedModel, settings: PredictionSettings):
    import torch

    precision = settings.precision
    if precision == "auto":
        if model.device.type == "cuda":
            return torch.float16
        precision = model.trained_precision if model.trained_precision == "bf16" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _batch_windows(model: TrainedModel, settings: PredictionSettings) -> int:
    if settings.batch_windows:
        return settings.batch_windows
    # A CPU gains nothing from batches beyond keeping its cores busy; a GPU wants several windows.
    return 4 if model.device.type == "cuda" else 2


def preprocess_for(model: TrainedModel, image: np.ndarray, geometry: Geometry, case_id: str = "",
                   settings: PredictionSettings | None = None):
    """(data (C', z', y', x') float32, CaseProperties) in the configuration's grid; a cascade stage
    gets its previous stage's one-hot segmentation appended (that model runs here)."""
    from autoseg.preprocessing.pipeline import preprocess_case

    if image.shape[0] != model.num_input_channels:
        raise AutosegError(f"case {case_id or '?'}: {image.shape[0]} channel(s), but the model was trained on "
                           f"{model.num_input_channels} ({', '.join(model.plans.modality.values())})")
    configuration = model.configuration
    data, _, properties = preprocess_case(
        image, None, geometry, transpose_forward=model.plans.transpose_forward,
        target_spacing=configuration.spacing, normalization=configuration.normalization,
        use_mask_for_norm=configuration.use_mask_for_norm,
        intensity_stats={k: vars(v) for k, v in model.plans.intensity_per_channel.items()},
        is_2d_config=configuration.dimension == 2, case_id=case_id)
    if model.previous_stage is not None:
        from autoseg.cascade import append_predicted_previous_stage

        data = append_predicted_previous_stage(model, data, properties, image, geometry,
                                               settings or PredictionSettings())
    return data, properties


def predict_logits(model: TrainedModel, data: np.ndarray, settings: PredictionSettings,
                   progress: Callable[[int, int], None] | None = None):
    """Averaged logits (K, z', y', x') float32 tensor on the CPU for preprocessed data."""
    import torch

    from autoseg.inference.sliding_window import predict_slices_2d, predict_sliding_window

    configuration = model.configuration
    dimension = configuration.dimension
    options = dict(num_classes=configuration.architecture.num_classes, step_fraction=settings.step_fraction,
                   mirror_axes=None if settings.use_tta else (), batch_windows=_batch_windows(model, settings),
                   device=model.device, autocast_dtype=_autocast_dtype(model, settings), progress=progress)
    image = torch.from_numpy(np.ascontiguousarray(data))
    options.update(_accumulator_placement(model, image.shape[1:], configuration.architecture.num_classes))
    if dimension == 2:
        return predict_slices_2d(model.networks, image, configuration.patch_size, **options)
    return predict_sliding_window(model.networks, image, configuration.patch_size, **options)


def _accumulator_placement(model: TrainedModel, spatial_shape, num_classes: int) -> dict:
    """On CUDA keep the logits accumulator on the GPU (fp16) when it fits in a third of the free
    memory, so windows never travel back to the host; otherwise stitch on the CPU in float32."""
    import torch

    if model.device.type != "cuda":
        return {}
    free_bytes, _ = torch.cuda.mem_get_info(model.device)
    needed = (num_classes + 1) * 2 * int(np.prod(spatial_shape))
    if needed < free_bytes / 3:
        return {"accumulate_on": model.device, "accumulate_dtype": torch.float16}
    return {}


def logits_to_prediction(model: TrainedModel, logits, properties, keep_probabilities: bool,
                         postprocess: bool = True) -> Prediction:
    """Softmax, back to the original grid, argmax to label values, postprocessing."""
    import torch

    from autoseg.preprocessing.pipeline import restore_to_original

    probabilities = torch.softmax(logits.float(), dim=0).numpy()
    del logits
    restored = restore_to_original(probabilities, properties, is_segmentation=False)
    del probabilities
    label_values = np.asarray(model.label_values, dtype=np.int16)
    segmentation = label_values[np.argmax(restored, axis=0)]
    if postprocess and model.postprocessing is not None:
        from autoseg.postprocessing import apply_postprocessing

        segmentation = apply_postprocessing(segmentation, model.postprocessing)
    return Prediction(segmentation, restored if keep_probabilities else None, properties.original_geometry)


def predict_image(model: TrainedModel, image: np.ndarray, geometry: Geometry,
                  settings: PredictionSettings | None = None, progress=None, case_id: str = "") -> Prediction:
    """Segment one image (C, z, y, x) given its geometry; the result is in the same grid."""
    settings = settings or PredictionSettings()
    data, properties = preprocess_for(model, image, geometry, case_id, settings)
    logits = predict_logits(model, data, settings, progress)
    return logits_to_prediction(model, logits, properties, settings.save_probabilities, settings.postprocess)


# ------------------------------------------------------------------------------------------ folders


def group_input_files(folder: Path, num_channels: int) -> dict[str, list[Path]]:
    """case id -> image files. Accepts one file per case (3D, 4D multi-channel, RGB) or the
    per-channel layout CASE_0000.nii.gz, CASE_0001.nii.gz."""
    if folder.is_file():
        ending = file_ending(folder)
        return {folder.name[: -len(ending)]: [folder]}
    if not folder.is_dir():
        raise AutosegError(f"{folder}: input folder not found")
    pattern = re.compile(r"^(.*)_(\d{4})$")
    groups: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        ending = file_ending(path)
        if path.name.startswith(".") or ending not in SUPPORTED_ENDINGS or not path.is_file():
            continue
        stem = path.name[: -len(ending)]
        match = pattern.match(stem)
        if match and num_channels >= 1:
            groups.setdefault(match.group(1), {})[int(match.group(2))] = path
        else:
            groups.setdefault(stem, {})[-1] = path
    cases = {}
    for case_id, channels in groups.items():
        cases[case_id] = [channels[-1]] if -1 in channels else [channels[c] for c in sorted(channels)]
    if not cases:
        raise AutosegError(f"{folder}: no images with a supported ending ({', '.join(SUPPORTED_ENDINGS)})")
    return cases


def output_path_for(output_folder: Path, case_id: str, input_files: list[Path]) -> Path:
    """Same format as the input, except where that format cannot hold a label map exactly (JPEG)
    or is a header/data pair (.mhd): see `segmentation_ending_for`."""
    from autoseg.io import segmentation_ending_for

    return output_folder / f"{case_id}{segmentation_ending_for(file_ending(input_files[0]))}"


def _read_and_preprocess(model, files, case_id, settings):
    image, geometry = read_image(files)
    return preprocess_for(model, image, geometry, case_id, settings)


def _export(model, logits, properties, output_path: Path, settings: PredictionSettings) -> str:
    prediction = logits_to_prediction(model, logits, properties, settings.save_probabilities, settings.postprocess)
    if prediction.probabilities is not None:
        from autoseg.ensembling import save_probabilities

        save_probabilities(output_path.parent / properties.case_id, prediction.probabilities,
                           prediction.geometry, labels=model.label_values)
    write_segmentation(prediction.segmentation, prediction.geometry, output_path)
    return str(output_path)


def predict_folder(model: TrainedModel, input_folder: Path, output_folder: Path,
                   settings: PredictionSettings | None = None, *, overwrite: bool = False,
                   part: tuple[int, int] = (0, 1), on_case: Callable[[str, str], None] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> FolderSummary:
    """Predict every case of `input_folder` (every `part[1]`-th from `part[0]`) into `output_folder`.

    Existing outputs are skipped unless `overwrite` (so an interrupted batch resumes). A case that
    fails is recorded with its error and the others go on. `on_case(case_id, status)` reports each case.
    """
    settings = settings or PredictionSettings()
    index, count = part
    if not (count >= 1 and 0 <= index < count):
        raise AutosegError(f"--part {index}/{count}: expected 0 <= I < N")
    cases = group_input_files(Path(input_folder), model.num_input_channels)
    chosen = sorted(cases)[index::count]
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    summary = FolderSummary()
    report = on_case or (lambda case_id, status: None)
    todo = []
    for case_id in chosen:
        if output_path_for(output_folder, case_id, cases[case_id]).exists() and not overwrite:
            summary.skipped.append(case_id)
            report(case_id, "skipped (exists)")
        else:
            todo.append(case_id)

    # One reader thread and one writer thread overlap I/O and resampling with the network.
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending: list[tuple[str, Future]] = []
        next_input = reader.submit(_read_and_preprocess, model, cases[todo[0]], todo[0], settings) if todo else None
        for position, case_id in enumerate(todo):
            current = next_input
            if position + 1 < len(todo):
                following = todo[position + 1]
                next_input = reader.submit(_read_and_preprocess, model, cases[following], following, settings)
            try:
                data, properties = current.result()
                logits = predict_logits(model, data, settings, progress)
                del data
            except (AutosegError, ValueError, RuntimeError, OSError) as e:
                summary.failures[case_id] = _one_line(e)
                report(case_id, f"failed: {summary.failures[case_id]}")
                continue
            target = output_path_for(output_folder, case_id, cases[case_id])
            pending.append((case_id, writer.submit(_export, model, logits, properties, target, settings)))
            pending = _collect_finished(pending, summary, report, wait=False)
        _collect_finished(pending, summary, report, wait=True)
    return summary


def _collect_finished(pending, summary: FolderSummary, report, wait: bool):
    still_running = []
    for case_id, future in pending:
        if not wait and not future.done():
            still_running.append((case_id, future))
            continue
        try:
            summary.written.append(future.result())
            report(case_id, "written")
        except (AutosegError, ValueError, RuntimeError, OSError) as e:
            summary.failures[case_id] = _one_line(e)
            report(case_id, f"failed: {summary.failures[case_id]}")
    return still_running


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
