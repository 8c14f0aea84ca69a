"""`predict --runtime auto`: the fastest runtime on this machine that agrees with torch fp32, measured once
and cached in the workspace, as the planner measures and caches the device's training speed.

    settings = settings_with_runtime(workspace, models, settings, on_choice=report)   # auto -> a runtime by name

The measurement (`autoseg.inference.runtimes.measure_runtimes`) runs each candidate runtime on one batch
of windows of the model's patch size (as many as the sliding window batches) with its first fold's network:
windows of the first image to predict when the caller has it (predict: the first case, preprocessed; the
fold validation: its first case), else random noise. OpenVINO int8 is calibrated on the next few cases
(`autoseg.network.quantization`). It checks the labels (Dice >= 0.999) and, for fp32 arithmetic, the
probabilities (max difference < 1e-3) against torch fp32, and keeps the fastest that agrees (int8 only
1.2x faster than the fastest float runtime). The labels of the reduced precisions (bf16, int8) are compared
under the mirror TTA the prediction runs, on the mean of the passes: one pass flips labels that the mean of
8 keeps. It costs 1 + 2 x candidates window passes, plus one per mirror pass for torch fp32 and each reduced
precision, plus int8's calibration: seconds for the demo's network, 25-50 s for a full-size 3D network on a
small CPU (the versus task's), once.

The cache (HOME/runtime_choice.json) holds one choice per key. The key is everything that can change the
answer: the machine (host, CPU model, torch threads, torch / onnxruntime / openvino versions, device), the
network's shape class (architecture, patch size, probe batch), the mirror TTA, the candidates measured (they
depend on --precision) and
the weights of the network measured (a hash): a re-trained or different model, or another machine,
measures again; a second prediction with the same model measures nothing. The choice is measured on the
first model and applied to every model (configurations of an ensemble, a cascade's low-res stage) and fold.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from autoseg.artifacts import build_versioned, read_json, write_json
from autoseg.errors import AutosegError
from autoseg.inference.case import PredictionSettings, patch_tiling
from autoseg.inference.model import TrainedModel
from autoseg.inference.runtimes import (CALIBRATION_WINDOWS_PER_IMAGE, RuntimeMeasurement, check_runtime,
                                       fastest_agreeing, measure_runtimes, networks_for_runtime, random_probe,
                                       runtime_candidates)
from autoseg.inference.sliding_window import probe_windows
from autoseg.network.onnx_export import weights_hash
from autoseg.workspace import Workspace

RUNTIME_CHOICE_SCHEMA_VERSION = 2  # 2: the probe's source; openvino at bf16 (and at int8, same schema)


@dataclass
class RuntimeChoice:
    """The runtime (and torch precision) `auto` chose for one key, with what was measured."""

    runtime: str
    precision: str
    measurements: list[RuntimeMeasurement]
    identity: dict = field(default_factory=dict)  # what the key hashes (see the module's docstring)
    measured_seconds: float = 0.0  # wall time of the measurement, conversions and warm-ups included
    probe: str = "random"  # what the runtimes were measured on: "image" (windows of a case) or "random"
    schema_version: int = RUNTIME_CHOICE_SCHEMA_VERSION

    @property
    def summary(self) -> str:
        """e.g. "openvino bf16 (0.51 s per batch of 2 windows; torch fp32 1.56, openvino fp32 1.01)"."""
        chosen = next((m for m in self.measurements if (m.runtime, m.precision) == (self.runtime, self.precision)), None)
        if chosen is None:  # a single candidate, not measured
            return f"{self.runtime} at precision {self.precision}"
        others = [f"{m.name} {m.seconds:.3g}" if m.agrees else f"{m.name} {m.error or 'disagrees'}"
                  for m in self.measurements if m is not chosen]
        windows = self.identity.get("probe_shape", [1])[0]
        per = f"s per batch of {windows} windows" if windows != 1 else "s per window"
        return f"{chosen.name} ({chosen.seconds:.3g} {per}{'; ' + ', '.join(others) if others else ''})"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data, where: str) -> "RuntimeChoice":
        def build(fields: dict) -> "RuntimeChoice":
            measurements = [RuntimeMeasurement(**m) for m in fields["measurements"]]
            return cls(**{**fields, "measurements": measurements})

        return build_versioned(data, build, expected_version=RUNTIME_CHOICE_SCHEMA_VERSION, where=where,
                               what="runtime choice", what_to_do="delete the file to measure again")


def runtime_identity(model: TrainedModel, candidates: list[tuple[str, str]]) -> dict:
    """What a runtime choice depends on: the machine, the libraries, the network's shape and weights."""
    from importlib.metadata import PackageNotFoundError, version

    from autoseg.budget.speed import machine_identity

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return ""

    identity = machine_identity(str(model.device), "any", model.configuration.dimension)
    del identity["precision"]  # the candidates say which precisions were measured
    return {**identity, "onnxruntime": installed("onnxruntime"), "openvino": installed("openvino"),
            "architecture": model.configuration.architecture.to_json(),
            "patch_size": list(model.configuration.patch_size), "candidates": [list(c) for c in candidates],
            "weights": weights_hash(model.networks[0])}


def _key(identity: dict) -> str:
    from autoseg.budget.speed import identity_key

    return identity_key(identity)


def _read_choices(cache_file: Path) -> dict:
    """The cached choices by key; {} when there is no usable cache (a lost cache is only a new measurement)."""
    if not cache_file.is_file():
        return {}
    try:
        data = read_json(cache_file)
    except AutosegError:
        return {}
    if not isinstance(data, dict) or data.get("schema_version") != RUNTIME_CHOICE_SCHEMA_VERSION:
        return {}
    return dict(data.get("choices", {}))


Measure = Callable[..., list[RuntimeMeasurement]]
# A preprocessed image (C, *spatial) to take the probe's windows from, made only when a measurement is due.
ProbeImage = Callable[[], np.ndarray | None]
# Preprocessed images to calibrate int8 on (other cases than the probe's where there are), made when needed.
CalibrationImages = Callable[[], list[np.ndarray]]


def calibration_windows(images: list[np.ndarray], model: TrainedModel) -> np.ndarray | None:
    """The windows `model`'s int8 form is calibrated on: CALIBRATION_WINDOWS_PER_IMAGE of each image near
    its centre (`probe_windows`), of the images with as many channels as its input (a cascade stage's
    input has more); None without such images."""
    channels = model.configuration.architecture.input_channels
    usable = [image for image in images if image.shape[0] == channels]
    if not usable:
        return None
    return np.concatenate([probe_windows(image, model.configuration.patch_size, CALIBRATION_WINDOWS_PER_IMAGE)
                           for image in usable])


def choose_runtime(cache_file: Path | None, model: TrainedModel, precision: str, *, batch_windows: int = 1,
                   probe_image: ProbeImage | None = None, calibration_images: CalibrationImages | None = None,
                   refresh: bool = False, measure: Measure = measure_runtimes, cpu_bf16: bool | None = None,
                   onnx_cache: Path | None = None,
                   mirror_axes: tuple[int, ...] | None = ()) -> tuple[RuntimeChoice, bool]:
    """(the choice for `model` at `precision` (auto or an explicit one), whether it came from the cache).

    Measures (`measure(network, candidates, probe)`, a probe of `batch_windows` windows: the batch the
    sliding window will run, as a CPU's speed per window depends on it; windows of `probe_image()` when it
    gives an image, else noise) only when the cache has no choice for this key, or `refresh`; a single
    candidate (a GPU) is chosen without measuring. The key leaves out which image the probe came from: the
    choice belongs to the model on this machine, whichever stage (the fold validation, predict) made it.
    `calibration_images`: what openvino int8 is calibrated on (the probe image when they give none; with
    neither, int8 is measured only if `onnx_cache` holds its int8 form, else recorded as unavailable).
    `onnx_cache`: where the ONNX runtimes' export (and int8 form) is kept
    (`autoseg.network.onnx_export.cached_export_onnx`). `mirror_axes`: the TTA the prediction runs (None:
    all axes), under which the reduced precisions' labels are compared (`measure_runtimes`); in the key."""
    from autoseg.device import cpu_supports_bf16

    if cpu_bf16 is None:
        cpu_bf16 = model.device.type == "cpu" and cpu_supports_bf16()
    candidates = runtime_candidates(model.device.type, precision, cpu_bf16)
    if len(candidates) == 1:
        runtime, chosen_precision = candidates[0]
        return RuntimeChoice(runtime, chosen_precision, []), False
    architecture = model.configuration.architecture
    probe_shape = (batch_windows, architecture.input_channels, *model.configuration.patch_size)
    identity = {**runtime_identity(model, candidates), "probe_shape": list(probe_shape),
                "mirror_axes": "all" if mirror_axes is None else list(mirror_axes)}
    key = _key(identity)
    choices = _read_choices(cache_file) if cache_file is not None else {}
    if key in choices and not refresh:
        return RuntimeChoice.from_json(choices[key], where=f"{cache_file}: choice {key}"), True
    started = time.perf_counter()
    image = probe_image() if probe_image is not None else None
    probe = random_probe(probe_shape) if image is None else probe_windows(image, model.configuration.patch_size,
                                                                          batch_windows)
    calibration = None
    if ("openvino", "int8") in candidates:
        images = calibration_images() if calibration_images is not None else []
        if not images and image is not None:
            images = [image]  # the probe's own image: better than no int8 candidate
        calibration = calibration_windows(images, model)
    measurements = measure(model.networks[0], candidates, probe, onnx_cache=onnx_cache, calibration=calibration,
                           mirror_axes=mirror_axes)
    best = fastest_agreeing(measurements)
    choice = RuntimeChoice(best.runtime, best.precision, measurements, identity, time.perf_counter() - started,
                           probe="random" if image is None else "image")
    choices[key] = choice.to_json()
    if cache_file is not None:
        write_json(cache_file, {"schema_version": RUNTIME_CHOICE_SCHEMA_VERSION, "choices": choices})
    return choice, False


def settings_with_runtime(workspace: Workspace | None, models: list[TrainedModel], settings: PredictionSettings, *,
                          probe_image: ProbeImage | None = None,
                          calibration_images: CalibrationImages | None = None, refresh: bool = False,
                          measure: Measure = measure_runtimes,
                          on_choice: Callable[[RuntimeChoice, bool], None] | None = None) -> PredictionSettings:
    """`settings` with runtime auto replaced by the choice for the first model (and precision by the
    choice's; `probe_image`, `calibration_images`: see `choose_runtime`), told to on_choice(choice, whether
    it was cached); an explicit runtime is kept as it is (openvino int8 calibrated on `calibration_images`
    when the workspace holds no int8 form of the network).
    Every model's networks (each fold, a cascade's low-res stage too) are converted to the runtime here, so
    a runtime that cannot run (not installed, not on this device) fails once, before any case. Without a
    workspace (a model bundle predicting where there is none) the choice is measured and not cached."""
    check_runtime(settings.runtime, settings.precision)
    cache_file = workspace.runtime_choice_file if workspace is not None else None
    if calibration_images is not None:  # read at most once, for the measurement and every fold's int8 form
        calibration_images = functools.cache(calibration_images)
    onnx_cache = workspace.onnx_cache_folder if workspace is not None else None
    if settings.runtime == "auto":
        choice, cached = choose_runtime(cache_file, models[0], settings.precision,
                                        batch_windows=patch_tiling(models[0], settings).batch_windows,
                                        probe_image=probe_image, calibration_images=calibration_images,
                                        refresh=refresh, measure=measure, onnx_cache=onnx_cache,
                                        mirror_axes=settings.mirror_axes)
        if on_choice is not None:
            on_choice(choice, cached)
        settings = replace(settings, runtime=choice.runtime, precision=choice.precision)
    images = calibration_images or list  # without images an int8 form must come from the cache
    for model in models:
        for stage in (model.previous_stage, model):
            if stage is not None:
                def calibration(stage: TrainedModel = stage) -> np.ndarray | None:
                    return calibration_windows(images(), stage)

                networks_for_runtime(stage, settings.runtime, settings.precision, onnx_cache=onnx_cache,
                                     calibration=calibration)
    return settings
