"""One case, arrays in and arrays out, in the input's own geometry.

    prediction = predict_image(model, image, geometry, settings)

Preprocess exactly as for training (transpose, crop, normalize, resample), sliding window with
Gaussian weighting and mirror TTA over every fold's network (softmax averaged over passes and folds),
each class resampled back to the cropped original grid, argmax, placed into the full image,
postprocessing. A cascade stage runs its low-res model on the raw image first.

Memory per case, in bytes per voxel (K classes, C channels; N' voxels of the network's grid, N of
the original image): the image as read 4C N plus preprocessing temporaries; the accumulator 4K N'
(the probabilities: no separate weight map, no second copy); restoring 4 N (best probability so far)
+ 4 N (one resampled class) + 2 N (int16 labels) + 1 N (comparison mask), never the restored (K, N)
probabilities unless they are saved. `bench/predict.py` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from autoseg.errors import AutosegError
from autoseg.inference.model import TrainedModel
from autoseg.inference.sliding_window import DEFAULT_STEP_FRACTION, DEFAULT_TILE_MODE, DEFAULT_TILE_OVERLAP, TILE_MODES
from autoseg.io import Geometry


@dataclass
class PredictionSettings:
    """How to predict: what `autoseg predict` options map onto (see its --help)."""

    # "patch": the training patch at step_fraction (nnU-Net's sliding window); "large": tiles chosen by
    # `choose_tiling`, overlapping by tile_overlap voxels per axis (at most half the training patch).
    tile_mode: str = DEFAULT_TILE_MODE
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    step_fraction: float = DEFAULT_STEP_FRACTION
    # The network's spatial axes to mirror (every subset is a pass, `autoseg.inference.mirroring`):
    # None = all of them (8 passes in 3D), () = no TTA. `autoseg predict --tta` resolves it.
    mirror_axes: tuple[int, ...] | None = None
    batch_windows: int | None = None  # None: chosen from the device
    device: str = "auto"
    precision: str = "auto"  # auto: fp16 on CUDA, the trained precision's choice on CPU (fp32 unless bf16)
    # torch, torch-compile, onnxruntime or openvino (`autoseg.inference.runtimes`); the predict stage turns
    # auto into the runtime measured fastest on this machine (`autoseg.stages.runtime`).
    runtime: str = "torch"
    save_probabilities: bool = False
    postprocess: bool = True

    def __post_init__(self):
        if self.tile_mode not in TILE_MODES:
            raise AutosegError(f"tile mode {self.tile_mode!r}: expected one of {', '.join(TILE_MODES)}")


@dataclass
class Prediction:
    segmentation: np.ndarray  # int16 (z, y, x), original grid, label values of dataset.json
    probabilities: np.ndarray | None  # float32 (K, z, y, x), original grid, when asked for
    geometry: Geometry


# Large tiles: the forward-only estimate (`forward_peak_elements`) measured 1.13-1.23x below the peak
# resident memory of a CPU forward pass (oneDNN's reorders and scratch), so a tile is charged this much
# more; and per voxel the stitching holds about this many class maps (logits, softmax, the running
# mean over passes, the weighted copy).
FORWARD_MEMORY_FACTOR = 1.5
STITCHING_CLASS_MAPS = 4


@dataclass
class Tiling:
    """Where the windows of one image lie: `window` voxels per axis; `overlap` None for patch mode
    (windows at step_fraction), voxels per axis for large tiles."""

    window: list[int]
    overlap: list[int] | None
    batch_windows: int


def _available_bytes(model: TrainedModel) -> int:
    if model.device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(model.device)[0]
    from autoseg.hardware import available_memory_bytes

    return available_memory_bytes()


def patch_tiling(model: TrainedModel, settings: PredictionSettings) -> Tiling:
    """Today's windows: the training patch; --batch-windows, else from the device, its CPU count and
    free memory (autoseg.hardware), charging a window the training estimate of its activations."""
    from autoseg.hardware import inference_batch_windows, usable_cpus
    from autoseg.network.cost import network_cost

    configuration = model.configuration
    batch = settings.batch_windows
    if not batch:
        # Forward only, but skip connections keep the encoder's maps alive: count every map, 4 bytes each.
        bytes_per_window = 4 * network_cost(configuration.architecture, configuration.patch_size).feature_map_elements
        batch = inference_batch_windows(model.device.type, usable_cpus(), _available_bytes(model), bytes_per_window)
    return Tiling(list(configuration.patch_size), None, batch)


def choose_tiling(model: TrainedModel, spatial_shape: Sequence[int], settings: PredictionSettings,
                  bytes_per_element: int = 4, mirror_passes: int = 1) -> Tiling:
    """The windows for preprocessed data of `spatial_shape` (z', y', x'; a 2d configuration tiles each
    slice): in patch mode the training patch; in large mode `choose_tile_size`'s tile within
    MEMORY_SHARE of the available (device) memory, with the forward-only activations of one tile
    (at `bytes_per_element`) and its stitching maps, then as many tiles per batch as fit. On a CPU
    the tiles fill whole batches of the device's batch size, counting that the `mirror_passes` of a
    tile share network calls (`stitching._means_over_passes`), so an image of one tile is cut in two
    only without TTA:
    for a batch of one PyTorch takes its native convolution instead of oneDNN's wherever
    batch x channels x the first two spatial sizes <= 20480 (deep, small-map layers and thin tiles),
    measured 2-6x slower per voxel here (bench/tiles.py)."""
    if settings.tile_mode == "patch":
        return patch_tiling(model, settings)
    from autoseg.hardware import MEMORY_SHARE, inference_batch_windows, usable_cpus
    from autoseg.inference.sliding_window import choose_tile_size, padded_shape, tile_overlap
    from autoseg.network.architecture import feature_map_elements, forward_peak_elements

    from autoseg.network.cost import network_cost

    configuration, architecture = model.configuration, model.configuration.architecture
    patch = list(configuration.patch_size)
    classes = architecture.num_classes
    # forward_peak_elements counts the plain U-Net's maps; another network is charged in proportion to
    # its own feature maps (network_cost) against the plain U-Net's on the training patch.
    scale = network_cost(architecture, patch).feature_map_elements / feature_map_elements(architecture, patch)

    def tile_bytes(tile: list[int]) -> int:
        voxels = int(np.prod(tile))
        return int(FORWARD_MEMORY_FACTOR * bytes_per_element * scale * forward_peak_elements(architecture, tile)
                   + 4 * STITCHING_CLASS_MAPS * classes * voxels)

    available = _available_bytes(model)
    overlap = tile_overlap(patch, settings.tile_overlap)
    image = padded_shape(list(spatial_shape)[-len(patch):], patch)
    # The batch the device wants (memory aside): on a CPU an image's tiles are chosen to fill whole
    # batches; slices of a 2d configuration share batches already.
    wanted = settings.batch_windows or inference_batch_windows(model.device.type, usable_cpus(), available, 1)
    fill = max(1, wanted // mirror_passes) if model.device.type == "cpu" and len(patch) == len(spatial_shape) else 1
    tile = choose_tile_size(image, patch, architecture.total_downsampling(), overlap, tile_bytes,
                            int(available * MEMORY_SHARE), batch=fill)
    batch = settings.batch_windows or inference_batch_windows(model.device.type, usable_cpus(), available,
                                                              tile_bytes(tile))
    return Tiling(tile, overlap, batch)


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
    softmax averaged over windows (Gaussian-weighted), the mirror passes of `settings.mirror_axes`
    and the model's folds."""
    return predict_probabilities_mirror_sets(model, data, settings, [settings.mirror_axes], progress)[0]


def predict_probabilities_mirror_sets(model: TrainedModel, data: np.ndarray, settings: PredictionSettings,
                                      mirror_sets: Sequence[Sequence[int] | None],
                                      progress: Callable[[int, int], None] | None = None) -> list:
    """`predict_probabilities` for several mirror sets at once (settings.mirror_axes ignored): one
    (K, z', y', x') tensor per set, from network passes run once (`predict_sliding_window_mirror_sets`)."""
    import torch

    from autoseg.inference.runtimes import networks_for_runtime, runtime_autocast_dtype
    from autoseg.inference.stitching import mirror_pass_count, predict_sliding_window_mirror_sets

    configuration = model.configuration
    num_classes = configuration.architecture.num_classes
    autocast_dtype = runtime_autocast_dtype(settings.runtime, settings.precision, model.device, model.trained_precision)
    passes = mirror_pass_count(mirror_sets, len(configuration.patch_size))
    tiling = choose_tiling(model, data.shape[1:], settings, 4 if autocast_dtype is None else 2, passes)
    options = dict(num_classes=num_classes, step_fraction=settings.step_fraction, overlap=tiling.overlap,
                   mirror_sets=mirror_sets, batch_windows=tiling.batch_windows, device=model.device,
                   progress=progress, autocast_dtype=autocast_dtype)
    image = torch.from_numpy(np.ascontiguousarray(data))
    options.update(_accumulator_placement(model, image.shape[1:], num_classes * len(mirror_sets)))
    # A 2d configuration's patch is (y, x): the volume is predicted slice by slice.
    networks = networks_for_runtime(model, settings.runtime, settings.precision)
    return predict_sliding_window_mirror_sets(networks, image, tiling.window, **options)


def _accumulator_placement(model: TrainedModel, spatial_shape, num_classes: int) -> dict:
    """On CUDA keep the accumulators on the GPU in float16 (probabilities are at most 1, so float16 is
    safe) when they fit in a third of the free memory, so windows never travel back to the host;
    otherwise stitch on the CPU in float32. The result comes back to the CPU as float32 either way.
    num_classes: of all the accumulators together (classes x mirror sets)."""
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
