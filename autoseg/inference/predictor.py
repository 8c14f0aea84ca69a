"""From images on disk to segmentations on disk, in the input's own geometry.

    model = load_trained_model(results_folder, plans, "3d_fullres", folds=None)   # every trained fold
    prediction = predict_image(model, image, geometry, settings)                  # arrays in, arrays out
    summary = predict_folder(model, "in/", "out/", settings)                      # files in, files out

Per case: preprocess exactly as for training (transpose, crop, normalize, resample), sliding window
with Gaussian weighting and mirror TTA over every fold's network (softmax averaged over passes and
folds), each class resampled back to the cropped original grid, argmax, placed into the full image,
postprocessing. In `predict_folder` the next case is read and preprocessed in one background thread,
and the previous one restored and written in another, while the network runs.

Memory per case, in bytes per voxel (K classes, C channels; N' voxels of the network's grid, N of
the original image): the image as read 4C N plus preprocessing temporaries; the accumulator 4K N'
(the probabilities: no separate weight map, no second copy); restoring 4 N (best probability so far)
+ 4 N (one resampled class) + 2 N (int16 labels) + 1 N (comparison mask), never the restored (K, N)
probabilities unless they are saved. `bench/predict.py` measures it.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from autoseg.checkpoint import check_identity, identity_of_configuration, load_checkpoint
from autoseg.device import inference_autocast_dtype, pick_device
from autoseg.errors import AutosegError, CheckpointError
from autoseg.inference.sliding_window import DEFAULT_STEP_FRACTION
from autoseg.io import Geometry, SUPPORTED_ENDINGS, file_ending, read_image, write_segmentation

CHECKPOINT_NAMES = ("final", "best", "latest")


@dataclass
class PredictionSettings:
    """How to predict: what `autoseg predict` options map onto (see its --help)."""

    step_fraction: float = DEFAULT_STEP_FRACTION
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

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        """(y, x) mm at which given pictures are read (`Plans.pixel_spacing`); None for volumes."""
        return self.plans.pixel_spacing


@dataclass
class Prediction:
    segmentation: np.ndarray  # int16 (z, y, x), original grid, label values of dataset.json
    probabilities: np.ndarray | None  # float32 (K, z, y, x), original grid, when asked for
    geometry: Geometry


@dataclass
class FolderSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # case id -> one-line error naming the file
    windows: int = 0  # sliding windows run (each with all its TTA passes and folds)
    network_seconds: float = 0.0  # wall time spent in the sliding window

    @property
    def windows_per_second(self) -> float:
        return self.windows / self.network_seconds if self.network_seconds else 0.0


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

    state = load_checkpoint(checkpoint_path, map_location=device)
    check_identity(state, identity_of_configuration(plans, configuration_name), checkpoint_path)
    configuration = plans.configuration(configuration_name)
    network = build_network(configuration.architecture)
    network.load_state_dict(state["network_weights"])
    network.deep_supervision = False
    return network.to(device).eval(), state.get("inference", {})


def load_trained_model(configuration_folder: Path, plans, configuration_name: str, *,
                       folds: Sequence[str] | None = None, checkpoint: str = "final", device: str = "auto",
                       postprocessing=None, previous_stage: TrainedModel | None = None,
                       previous_stage_from_files: bool = False) -> TrainedModel:
    """The networks of a configuration's folds. A cascade stage needs its `previous_stage` model, unless
    `previous_stage_from_files`: the caller appends stored previous-stage segmentations (fold validation)."""
    torch_device = pick_device(device)
    networks, chosen, precision = [], [], "fp32"
    for fold, path in fold_folders(Path(configuration_folder), folds, checkpoint):
        network, inference = load_network(plans, configuration_name, path, torch_device)
        networks.append(network)
        chosen.append(fold)
        precision = inference.get("precision", precision)
    configuration = plans.configuration(configuration_name)
    if configuration.previous_stage and previous_stage is None and not previous_stage_from_files:
        raise AutosegError(f"configuration {configuration_name} is a cascade stage: load its "
                           f"{configuration.previous_stage} model first")
    return TrainedModel(plans, configuration_name, configuration, networks, chosen, torch_device,
                        sorted(int(v) for v in plans.labels), postprocessing, previous_stage, precision)


# ------------------------------------------------------------------------------------------ one case


def _batch_windows(model: TrainedModel, settings: PredictionSettings) -> int:
    """--batch-windows, else from the device, its CPU count and free memory (autoseg.hardware)."""
    if settings.batch_windows:
        return settings.batch_windows
    from autoseg.hardware import available_memory_bytes, inference_batch_windows, usable_cpus
    from autoseg.network.architecture import feature_map_elements

    configuration = model.configuration
    # Forward only, but skip connections keep the encoder's maps alive: count every map, 4 bytes each.
    bytes_per_window = 4 * feature_map_elements(configuration.architecture, configuration.patch_size)
    if model.device.type == "cuda":
        import torch

        available = torch.cuda.mem_get_info(model.device)[0]
    else:
        available = available_memory_bytes()
    return inference_batch_windows(model.device.type, usable_cpus(), available, bytes_per_window)


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
        data = _append_previous_stage(model, data, properties, image, geometry, settings or PredictionSettings())
    return data, properties


def _append_previous_stage(model: TrainedModel, data: np.ndarray, properties, image, geometry,
                           settings: PredictionSettings) -> np.ndarray:
    """Run the low-res model on the raw image and append its one-hot segmentation to `data`."""
    from dataclasses import replace

    from autoseg.cascade import foreground_labels_of, one_hot, segmentation_to_grid

    low_res = predict_image(model.previous_stage, image, geometry,
                            replace(settings, save_probabilities=False, postprocess=False))
    previous = segmentation_to_grid(low_res.segmentation, properties)
    return np.concatenate([data, one_hot(previous, foreground_labels_of(model.plans))])


def predict_probabilities(model: TrainedModel, data: np.ndarray, settings: PredictionSettings,
                          progress: Callable[[int, int], None] | None = None):
    """Class probabilities (K, z', y', x') float32 tensor on the CPU for preprocessed data: the
    softmax averaged over windows (Gaussian-weighted), mirror passes and the model's folds."""
    import torch

    from autoseg.inference.stitching import predict_sliding_window

    configuration = model.configuration
    options = dict(num_classes=configuration.architecture.num_classes, step_fraction=settings.step_fraction,
                   mirror_axes=None if settings.use_tta else (), batch_windows=_batch_windows(model, settings),
                   device=model.device, autocast_dtype=inference_autocast_dtype(settings.precision, model.device, model.trained_precision), progress=progress)
    image = torch.from_numpy(np.ascontiguousarray(data))
    options.update(_accumulator_placement(model, image.shape[1:], configuration.architecture.num_classes))
    # A 2d configuration's patch is (y, x): the volume is predicted slice by slice.
    return predict_sliding_window(model.networks, image, configuration.patch_size, **options)


def _accumulator_placement(model: TrainedModel, spatial_shape, num_classes: int) -> dict:
    """On CUDA keep the accumulator on the GPU in float16 (probabilities are at most 1, so float16 is
    safe) when it fits in a third of the free memory, so windows never travel back to the host;
    otherwise stitch on the CPU in float32. The result comes back to the CPU as float32 either way."""
    import torch

    if model.device.type != "cuda":
        return {}
    free_bytes, _ = torch.cuda.mem_get_info(model.device)
    needed = num_classes * 2 * int(np.prod(spatial_shape))
    if needed < free_bytes / 3:
        return {"accumulate_on": model.device, "accumulate_dtype": torch.float16}
    return {}


def _argmax_labels(classes: Iterable[np.ndarray], label_values: Sequence[int], shape) -> np.ndarray:
    """int16 label map of `shape`: per voxel the label value of the largest of the class arrays
    (one float array of `shape` per class, in label order; the first wins ties, as np.argmax).

    Classes are consumed one at a time, so only the best value so far is held besides the labels:
    4 + 2 bytes per voxel (+1 for the comparison), instead of the int64 of np.argmax on (K, ...)."""
    labels = np.full(shape, label_values[0], dtype=np.int16)
    best = None
    for value, probability in zip(label_values, classes):
        if best is None:
            best = np.array(probability, dtype=np.float32)
            continue
        wins = probability > best
        labels[wins] = value
        np.maximum(best, probability, out=best)
        del wins
    return labels


def _restored_labels(probabilities: np.ndarray, properties, label_values: Sequence[int]) -> np.ndarray:
    """The segmentation on the original grid without the restored (K, z, y, x) probabilities:
    each class is resampled to the cropped original grid in turn (linear, nearest slice along a
    separate axis: as `restore_to_original`), the argmax taken there, and the labels placed into
    the full image (0 outside the crop box), transposed back. int16 (z, y, x)."""
    from autoseg.preprocessing.resampling import resample_probabilities, separate_axis_for

    permutation = list(properties.transpose_forward)
    geometry = properties.original_geometry
    if list(probabilities.shape[1:]) != list(properties.shape_after_resampling):
        raise ValueError(f"case {properties.case_id}: probabilities of spatial shape {list(probabilities.shape[1:])}, "
                         f"expected {properties.shape_after_resampling}")
    cropped_shape_t = [properties.shape_after_crop[axis] for axis in permutation]
    crop_t = tuple(slice(*properties.crop_box[axis]) for axis in permutation)
    separate_axis = separate_axis_for(properties.spacing_after_resampling,
                                      [geometry.spacing_zyx[axis] for axis in permutation])

    def resampled_classes():
        for k in range(probabilities.shape[0]):
            if list(probabilities.shape[1:]) == cropped_shape_t:  # the network's grid is the original one
                yield probabilities[k]
            else:
                yield resample_probabilities(probabilities[k:k + 1], cropped_shape_t, separate_axis)[0]

    segmentation = np.zeros(geometry.shape, dtype=np.int16)
    segmentation.transpose(permutation)[crop_t] = _argmax_labels(resampled_classes(), label_values, cropped_shape_t)
    return segmentation


def probabilities_to_prediction(model: TrainedModel, probabilities, properties, keep_probabilities: bool,
                                postprocess: bool = True) -> Prediction:
    """Probabilities (K, z', y', x') on the network's grid -> segmentation in the original geometry
    (label values of dataset.json), postprocessed; with `keep_probabilities` also the (K, z, y, x)
    float32 probabilities on the original grid (1 for background outside the crop box)."""
    probabilities = probabilities.numpy() if hasattr(probabilities, "numpy") else np.asarray(probabilities)
    label_values = [int(v) for v in model.label_values]
    restored = None
    if keep_probabilities:
        from autoseg.preprocessing.pipeline import restore_to_original

        restored = restore_to_original(probabilities, properties, is_segmentation=False)
        segmentation = _argmax_labels(iter(restored), label_values, restored.shape[1:])
    else:
        segmentation = _restored_labels(probabilities, properties, label_values)
    del probabilities
    if postprocess and model.postprocessing is not None:
        from autoseg.postprocessing import apply_postprocessing

        segmentation = apply_postprocessing(segmentation, model.postprocessing)
    return Prediction(segmentation, restored, properties.original_geometry)


def predict_image(model: TrainedModel, image: np.ndarray, geometry: Geometry,
                  settings: PredictionSettings | None = None, progress=None, case_id: str = "") -> Prediction:
    """Segment one image (C, z, y, x) given its geometry; the result is in the same grid."""
    settings = settings or PredictionSettings()
    data, properties = preprocess_for(model, image, geometry, case_id, settings)
    del image  # the caller may still hold it; we no longer need it
    probabilities = [predict_probabilities(model, data, settings, progress)]
    del data
    # Handed over without a local reference, so they are freed as soon as they are restored.
    return probabilities_to_prediction(model, probabilities.pop(), properties, settings.save_probabilities,
                                       settings.postprocess)


# ------------------------------------------------------------------------------------------ folders

CHANNEL_FILE = re.compile(r"^(.*)_(\d{4})$")  # nnU-Net v2 per-channel layout: CASE_0000, CASE_0001, ...


def group_input_files(folder: Path, num_channels: int) -> dict[str, list[Path]]:
    """case id -> image files. Accepts one file per case (3D, 4D multi-channel, RGB) or the
    per-channel layout CASE_0000.nii.gz, CASE_0001.nii.gz (channel files in channel order).

    Names ending in _NNNN are channel files only when every such number is a channel of the model
    (< num_channels) and some case has _0000; otherwise (e.g. a 1-channel task whose cases are
    called scan_0001, scan_0002) the whole name is the case id. `missing_channel_files` says
    which channel files a case lacks.
    """
    folder = Path(folder)
    if folder.is_file():
        ending = file_ending(folder)
        return {folder.name[: -len(ending)]: [folder]}
    if not folder.is_dir():
        raise AutosegError(f"{folder}: input folder not found")
    images = [path for path in sorted(folder.iterdir())
              if path.is_file() and not path.name.startswith(".") and file_ending(path) in SUPPORTED_ENDINGS]
    if not images:
        raise AutosegError(f"{folder}: no images with a supported ending ({', '.join(SUPPORTED_ENDINGS)})")
    stems = {path: path.name[: -len(file_ending(path))] for path in images}
    matches = {path: CHANNEL_FILE.match(stem) for path, stem in stems.items()}
    numbers = [int(m.group(2)) for m in matches.values() if m]
    per_channel = bool(numbers) and max(numbers) < num_channels and 0 in numbers
    groups: dict[str, dict[int, Path]] = {}
    for path in images:
        match = matches[path] if per_channel else None
        if match:
            groups.setdefault(match.group(1), {})[int(match.group(2))] = path
        else:
            groups.setdefault(stems[path], {})[-1] = path
    return {case_id: [channels[-1]] if -1 in channels else [channels[c] for c in sorted(channels)]
            for case_id, channels in groups.items()}


def missing_channel_files(case_id: str, files: list[Path], num_channels: int) -> list[str]:
    """Names of the per-channel files CASE_NNNN a case needs but lacks ([] for single-file cases,
    whose channel count is checked after reading)."""
    stem = files[0].name[: -len(file_ending(files[0]))]
    if stem == case_id:
        return []
    ending = file_ending(files[0])
    present = {path.name for path in files}
    return [name for name in (f"{case_id}_{c:04d}{ending}" for c in range(num_channels)) if name not in present]


def output_path_for(output_folder: Path, case_id: str, input_files: list[Path]) -> Path:
    """Same format as the input, except where that format cannot hold a label map exactly (JPEG)
    or is a header/data pair (.mhd): see `segmentation_ending_for`."""
    from autoseg.io import segmentation_ending_for

    return output_folder / f"{case_id}{segmentation_ending_for(file_ending(input_files[0]))}"


def _read_and_preprocess(model, files, case_id, settings):
    missing = missing_channel_files(case_id, files, model.num_input_channels)
    if missing:
        raise AutosegError(f"case {case_id}: missing channel file(s) {', '.join(missing)} next to {files[0]} "
                           f"(the model reads {model.num_input_channels} channel(s))")
    image, geometry = read_image(files, model.pixel_spacing)
    return preprocess_for(model, image, geometry, case_id, settings)


def _export(model, holder: list, properties, output_path: Path, settings: PredictionSettings) -> str:
    """Restore, postprocess and write one case. `holder` is [probabilities]: emptied here, so the
    probabilities are freed once restored (the executor keeps its arguments until the call ends)."""
    prediction = probabilities_to_prediction(model, holder.pop(), properties, settings.save_probabilities,
                                             settings.postprocess)
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
    fails (unreadable, wrong channels, ...) is recorded with its file name and error and the others
    go on. `on_case(case_id, status)` reports each case as "[done/total] status"; `progress(done,
    total)` the windows of the case being predicted.

    Pipelining: one reader thread reads and preprocesses the next case, one writer thread restores
    and writes the previous one, while the network runs on the current case. At most one case waits
    in each, so memory stays at three cases in flight.
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

    def report(case_id: str, status: str) -> None:
        if on_case is not None:
            done = len(summary.written) + len(summary.skipped) + len(summary.failures)
            on_case(case_id, f"[{done}/{len(chosen)}] {status}")

    def done_before(case_id: str) -> bool:  # probabilities are written first, the segmentation last
        written = output_path_for(output_folder, case_id, cases[case_id]).exists()
        return written and (not settings.save_probabilities or (output_folder / f"{case_id}.npz").exists())

    todo = []
    for case_id in chosen:
        if not overwrite and done_before(case_id):
            summary.skipped.append(case_id)
            report(case_id, "skipped (exists)")
        else:
            todo.append(case_id)

    def read(position: int) -> Future | None:
        if position >= len(todo):
            return None
        case_id = todo[position]
        return reader.submit(_read_and_preprocess, model, cases[case_id], case_id, settings)

    speeds: dict[str, str] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="predict-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="predict-write") as writer:
        pending: list[tuple[str, Future]] = []
        next_input = read(0)
        for position, case_id in enumerate(todo):
            current, next_input = next_input, read(position + 1)
            try:
                data, properties = current.result()
                del current  # the future would keep the preprocessed image alive
                windows, seconds, probabilities = _timed_prediction(model, data, settings, progress)
                del data
            except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
                _record_failure(summary, report, case_id, cases[case_id], e)
                continue
            summary.windows += windows
            summary.network_seconds += seconds
            speeds[case_id] = f"{windows} windows in {seconds:.1f} s, {windows / max(seconds, 1e-9):.3g} windows/s"
            # Back-pressure: the previous export must be done before this one is queued.
            pending = _collect_finished(pending, summary, report, cases, speeds, wait=True)
            target = output_path_for(output_folder, case_id, cases[case_id])
            pending.append((case_id, writer.submit(_export, model, [probabilities], properties, target, settings)))
            del probabilities
        _collect_finished(pending, summary, report, cases, speeds, wait=True)
    return summary


def _timed_prediction(model, data, settings, progress):
    """(windows, seconds, probabilities) of one case's sliding window."""
    windows = [0]

    def counting(done: int, total: int) -> None:
        windows[0] = total
        if progress is not None:
            progress(done, total)

    started = time.perf_counter()
    probabilities = predict_probabilities(model, data, settings, counting)
    return windows[0], time.perf_counter() - started, probabilities


def _collect_finished(pending, summary: FolderSummary, report, cases, speeds, wait: bool):
    still_running = []
    for case_id, future in pending:
        if not wait and not future.done():
            still_running.append((case_id, future))
            continue
        try:
            summary.written.append(future.result())
            report(case_id, f"written ({speeds.get(case_id, '')})")
        except Exception as e:  # noqa: BLE001 - reported per case, the batch goes on
            _record_failure(summary, report, case_id, cases[case_id], e)
    return still_running


def _record_failure(summary: FolderSummary, report, case_id: str, files: list[Path], error: Exception) -> None:
    message = _one_line(error)
    if not isinstance(error, AutosegError):
        message = f"{type(error).__name__}: {message}"
    if not any(path.name in message for path in files):
        message = f"{', '.join(path.name for path in files)}: {message}"
    summary.failures[case_id] = message
    report(case_id, f"failed: {message}")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
