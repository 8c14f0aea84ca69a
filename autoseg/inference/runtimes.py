"""Runtimes: how the sliding window runs a loaded network. Each turns the torch network into the plain
callable `predict_sliding_window` calls, (B, C, *spatial) float32 tensor -> (B, K, *spatial) logits.

    networks = networks_for_runtime(model, "onnxruntime")        # one per fold, converted once per model

- torch:         the network as loaded, under autocast at `--precision` (auto: fp16 on CUDA; on a CPU bf16
                 when training kept it, else fp32; `autoseg.device.inference_autocast_dtype`).
- torch-compile: `torch.compile` of it, same precision. Compiling takes minutes per tile shape on a small
                 CPU, which a probe of a few seconds cannot amortize: it is never chosen by `auto`.
- onnxruntime:   the ONNX export (`autoseg.network.onnx_export`) on onnxruntime's CPU provider, float32.
- openvino:      the same ONNX model compiled by OpenVINO for the CPU, one compiled model per input shape
                 (static shapes are faster than its dynamic ones, and a sliding window has few tile shapes),
                 at f32 or, with `--precision bf16`, bf16 (its INFERENCE_PRECISION_HINT, set explicitly:
                 OpenVINO's own default on CPUs with AMX is bf16, which would not be the fp32 asked for),
                 or int8: the export quantized after calibration on windows of real images
                 (`autoseg.network.quantization`; full-resolution convolutions stay at bf16 or f32).

`--runtime` says which engine runs the network and `--precision` which arithmetic it uses: the torch engines
fp32, bf16 or fp16 under autocast, onnxruntime fp32 only, openvino fp32, bf16 or int8; so OpenVINO at bf16 is
`--runtime openvino --precision bf16`, the one way to say it. `auto` is resolved by the predict stage from a
measurement (`autoseg.stages.runtime`).
The ONNX runtimes run on the CPU only, and are imported only when asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from autoseg.device import check_precision, inference_autocast_dtype
from autoseg.errors import AutosegError

if TYPE_CHECKING:
    import torch

    from autoseg.inference.model import TrainedModel

RUNTIMES = ("torch", "torch-compile", "onnxruntime", "openvino")
ONNX_RUNTIMES = ("onnxruntime", "openvino")
# The arithmetic each ONNX runtime offers (`auto` is the first); the torch runtimes take any `--precision`.
ONNX_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "int8")}
# Calibration for openvino int8 (`autoseg.network.quantization`): windows per image, images. On the versus
# task 1 window of each of 4 cases calibrated as well as 2 (8-17 voxels per case changed against 9-19) in
# 12 s less: the calibration runs onnxruntime fp32 over every window, keeping every activation.
CALIBRATION_WINDOWS_PER_IMAGE = 1
CALIBRATION_IMAGES = 4
# What a runtime must reach against torch fp32 on the probe to be chosen (issue 14's thresholds).
MIN_LABEL_AGREEMENT_DICE = 0.999
MAX_PROBABILITY_DIFFERENCE = 1e-3  # for runtimes that claim to compute in float32
# int8 moves more labels than bf16 on cases the probe did not see (versus task: 8-17 voxels per case against
# 1-4; the weakly trained bench network's MRI volume: organ 0.9915 against 0.9986), so it must pay for it:
# it is chosen only this many times faster than the fastest float runtime (versus: 1.49x; bench: 1.02x).
INT8_MIN_SPEEDUP = 1.2


class RuntimeUnavailable(AutosegError):
    """A runtime asked for by name cannot run here (not installed, wrong device, unknown name)."""


def check_runtime(runtime: str, precision: str = "auto", allow_auto: bool = True) -> None:
    """A RuntimeUnavailable naming the choices for an unknown runtime, or a precision an ONNX runtime lacks."""
    choices = ("auto", *RUNTIMES) if allow_auto else RUNTIMES
    if runtime not in choices:
        raise RuntimeUnavailable(f"--runtime {runtime!r}: expected {', '.join(choices[:-1])} or {choices[-1]}")
    if precision == "int8" and runtime not in ("auto", "openvino"):
        raise RuntimeUnavailable(f"--precision int8 runs on --runtime openvino (or auto), not {runtime}")
    if precision != "int8":
        check_precision(precision)
    offered = ONNX_PRECISIONS.get(runtime)
    if offered is not None and precision not in ("auto", *offered):
        named = f"{', '.join(offered[:-1])} or {offered[-1]}" if len(offered) > 1 else offered[0]
        raise RuntimeUnavailable(f"--runtime {runtime} computes in {named}, not --precision "
                                 f"{precision} (the torch runtimes take any: --runtime torch or torch-compile)")


def onnx_precision(runtime: str, precision: str) -> str:
    """The arithmetic an ONNX runtime runs at for `precision` (auto: its first, fp32)."""
    return ONNX_PRECISIONS[runtime][0] if precision == "auto" else precision


def runtime_autocast_dtype(runtime: str, precision: str, device, trained_precision: str):
    """The autocast dtype the sliding window runs `runtime` under: the torch rule, none for ONNX runtimes."""
    if runtime in ONNX_RUNTIMES:
        return None
    return inference_autocast_dtype(precision, device, trained_precision)


class OnnxRuntimeNetwork:
    """An ONNX model on onnxruntime's CPU provider as a tensor -> tensor callable."""

    def __init__(self, onnx_model: bytes, threads: int):
        from autoseg.network.onnx_export import onnxruntime_session

        self.session = onnxruntime_session(onnx_model, threads)

    def __call__(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch

        from autoseg.network.onnx_export import INPUT_NAME, OUTPUT_NAME

        feed = {INPUT_NAME: np.ascontiguousarray(batch.detach().float().numpy())}
        return torch.from_numpy(self.session.run([OUTPUT_NAME], feed)[0])


class OpenVinoNetwork:
    """An ONNX model compiled by OpenVINO for the CPU at `precision` (fp32 or bf16; int8 for a quantized
    model, whose layers left in float run at bf16 where the CPU has it), once per input shape."""

    def __init__(self, onnx_model: bytes, threads: int, precision: str = "fp32"):
        import openvino

        from autoseg.device import cpu_supports_bf16

        self.core = openvino.Core()
        self.model = self.core.read_model(model=onnx_model, weights=b"")
        float_of_int8 = "bf16" if cpu_supports_bf16() else "f32"
        hint = {"fp32": "f32", "bf16": "bf16", "int8": float_of_int8}[precision]
        self.config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": int(threads)}
        self.compiled: dict[tuple[int, ...], object] = {}

    def compiled_for(self, shape: tuple[int, ...]):
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape(list(shape))
            self.compiled[shape] = self.core.compile_model(model, "CPU", self.config)
        return self.compiled[shape]

    def __call__(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch

        array = np.ascontiguousarray(batch.detach().float().numpy())
        return torch.from_numpy(np.array(self.compiled_for(tuple(array.shape))(array)[0]))


def runtime_network(network: "torch.nn.Module", runtime: str, *, input_channels: int, dimension: int,
                    precision: str = "fp32", threads: int | None = None, onnx_model: bytes | None = None,
                    onnx_cache: Path | None = None, example_spatial: tuple[int, ...] | None = None,
                    calibration: Callable[[], np.ndarray | None] | None = None) -> Callable:
    """`network` (eval mode, deep supervision off, as `load_network` gives it) run by `runtime`;
    `precision` the ONNX runtimes' arithmetic (the torch ones take theirs from autocast around the call);
    `threads` for the ONNX runtimes (default: the CPUs this process may use); `onnx_model`: the network's
    export when already made, else exported (`autoseg.network.onnx_export.cached_export_onnx`, through
    `onnx_cache` when given, tracing a zero image of `example_spatial`). openvino int8: the export
    quantized (`autoseg.network.quantization.cached_quantized_onnx`: read from `onnx_cache`, else
    calibrated on `calibration()`'s windows)."""
    check_runtime(runtime, precision, allow_auto=False)
    if runtime == "torch":
        return network
    if runtime == "torch-compile":
        import torch

        return torch.compile(network)  # dynamic=None: a second tile shape recompiles once with dynamic shapes
    if next(network.parameters()).device.type != "cpu":
        raise RuntimeUnavailable(f"--runtime {runtime} runs on the CPU; use --device cpu (or --runtime torch)")
    if threads is None:
        from autoseg.hardware import usable_cpus

        threads = usable_cpus()
    _check_installed(runtime)  # before the export, which takes seconds
    from autoseg.network.onnx_export import cached_export_onnx

    if onnx_model is None:
        onnx_model = cached_export_onnx(network, input_channels=input_channels, dimension=dimension,
                                        cache_folder=onnx_cache, example_spatial=example_spatial)
    if runtime == "onnxruntime":
        return OnnxRuntimeNetwork(onnx_model, threads)
    if precision == "int8":
        from autoseg.network.quantization import cached_quantized_onnx

        onnx_model = cached_quantized_onnx(onnx_model, calibration or (lambda: None), onnx_cache)
    return OpenVinoNetwork(onnx_model, threads, onnx_precision(runtime, precision))


def _check_installed(runtime: str) -> None:
    """A RuntimeUnavailable when the package of an ONNX runtime (named as the runtime) cannot be imported."""
    import importlib

    try:
        importlib.import_module(runtime)
    except ImportError:
        raise RuntimeUnavailable(f"--runtime {runtime}: {runtime} is not installed (pip install {runtime})") from None


def runtime_networks_key(runtime: str, precision: str) -> str:
    """Where `networks_for_runtime` keeps a runtime's networks on the model: one per ONNX runtime and arithmetic."""
    return runtime if runtime not in ONNX_RUNTIMES else f"{runtime} {onnx_precision(runtime, precision)}"


def networks_for_runtime(model: "TrainedModel", runtime: str, precision: str = "auto",
                         onnx_cache: Path | None = None,
                         calibration: Callable[[], np.ndarray | None] | None = None) -> list:
    """The model's networks (every fold) run by `runtime` (at `precision` for an ONNX runtime), converted on
    first use (their ONNX exports, and int8 forms, read from `onnx_cache` when there; `calibration`: see
    `runtime_network`) and kept on the model."""
    if runtime == "auto":
        raise RuntimeUnavailable("runtime auto is chosen by the predict stage (autoseg.stages.runtime); "
                                 "pass a runtime by name here")
    if runtime == "torch":
        return model.networks
    key = runtime_networks_key(runtime, precision)
    if key not in model.runtime_networks:
        architecture = model.configuration.architecture
        model.runtime_networks[key] = [
            runtime_network(network, runtime, input_channels=architecture.input_channels,
                            dimension=architecture.dimension, precision=precision, onnx_cache=onnx_cache,
                            example_spatial=tuple(model.configuration.patch_size), calibration=calibration)
            for network in model.networks]
    return model.runtime_networks[key]


# ----------------------------------------------------------------------------------- measuring a runtime
@dataclass
class RuntimeMeasurement:
    """One runtime at one precision timed on a probe batch and compared with torch fp32 on it."""

    runtime: str
    precision: str  # fp32, bf16, fp16 or int8
    seconds: float  # median per probe batch, after one warm-up call (NaN when it failed or disagreed)
    label_agreement_dice: float  # mean over foreground labels of the Dice of its argmax vs torch fp32's
    max_probability_difference: float
    agrees: bool
    error: str = ""  # why it could not run (not installed...), else empty

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"


def label_agreement_dice(reference_labels: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean over the foreground classes present in either label map of their Dice (1.0 when none is)."""
    from autoseg.metrics import overlap_metrics

    scores = [overlap_metrics(labels == k, reference_labels == k)["Dice"] for k in range(1, num_classes)
              if np.any(labels == k) or np.any(reference_labels == k)]
    return float(np.mean(scores)) if scores else 1.0


def measure_runtime(network: Callable, runtime: str, precision: str, probe: "torch.Tensor",
                    reference_logits: "torch.Tensor", *, timed_calls: int = 1,
                    clock: Callable[[], float] = time.perf_counter, mirror_axes: tuple[int, ...] | None = (),
                    reference_mirrored: "torch.Tensor | None" = None) -> RuntimeMeasurement:
    """Time `network` (already converted to `runtime`) on `probe` under `precision` and compare its output
    with `reference_logits` (torch fp32 on the same probe): labels within MIN_LABEL_AGREEMENT_DICE, and at
    fp32 probabilities within MAX_PROBABILITY_DIFFERENCE (bf16 and fp16 round every activation to 8 or 11
    bits, int8 to 256 levels: only their labels are held to fp32's). A runtime that disagrees is not timed.
    One warm-up call (kernel choice, OpenVINO's compilation for this shape) then `timed_calls`: on a busy
    2-core machine the median of more calls moved the choice less than the seconds they cost.
    With `reference_mirrored` (torch fp32's mean over the mirror passes of `mirror_axes`), the labels of a
    reduced precision are compared on that mean, as predict computes them: a single pass flips labels
    that the mean of 8 keeps (versus task: int8 at 0.99899 on one pass of the probe, its 5 predicted cases
    at 0.9996-0.9999)."""
    import contextlib

    import torch

    from autoseg.device import dtype_of
    from autoseg.network.onnx_export import max_probability_difference

    dtype = None if runtime in ONNX_RUNTIMES else dtype_of(precision)  # ONNX runtimes: set at conversion
    autocast = torch.autocast(probe.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def call() -> "torch.Tensor":
        with torch.inference_mode(), autocast:
            return network(probe).float()

    logits = call()  # the warm-up: allocations, kernel choice, OpenVINO's compilation for this shape
    num_classes = reference_logits.shape[1]
    if precision != "fp32" and reference_mirrored is not None:
        from autoseg.inference.stitching import mirrored_mean

        mirrored = mirrored_mean(network, probe, mirror_axes, num_classes, dtype)
        dice = label_agreement_dice(reference_mirrored.argmax(1).numpy(), mirrored.argmax(1).numpy(), num_classes)
    else:
        dice = label_agreement_dice(reference_logits.argmax(1).numpy(), logits.argmax(1).numpy(), num_classes)
    difference = max_probability_difference(reference_logits, logits)
    agrees = dice >= MIN_LABEL_AGREEMENT_DICE and (precision != "fp32" or difference < MAX_PROBABILITY_DIFFERENCE)
    seconds = float("nan")
    if agrees:
        durations = []
        for _ in range(timed_calls):
            started = clock()
            call()
            durations.append(clock() - started)
        seconds = float(np.median(durations))
    return RuntimeMeasurement(runtime, precision, seconds, dice, difference, agrees)


def runtime_candidates(device_type: str, precision: str, cpu_bf16: bool) -> list[tuple[str, str]]:
    """The (runtime, precision) pairs `auto` measures: on a CPU torch, onnxruntime and openvino at fp32,
    torch and openvino at bf16 when the CPU has bf16 hardware (emulated bf16 is slower than fp32), and
    openvino at int8 (measured when there are images to calibrate on or its int8 form is cached), keeping
    only those at `precision` unless it is auto; elsewhere torch alone (the ONNX runtimes here run on the
    CPU), at `precision`. torch-compile is left out: see above."""
    if device_type != "cpu":
        return [("torch", precision)]
    candidates = [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
    if cpu_bf16:
        candidates += [("torch", "bf16"), ("openvino", "bf16")]
    candidates.append(("openvino", "int8"))
    if precision == "auto":
        return candidates
    return [pair for pair in candidates if pair[1] == precision] or [("torch", precision)]


def random_probe(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A (B, C, *spatial) batch of standard normal noise: the probe when no image is at hand."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def measure_runtimes(network: "torch.nn.Module", candidates: list[tuple[str, str]], probe: np.ndarray, *,
                     clock: Callable[[], float] = time.perf_counter, timed_calls: int = 1,
                     threads: int | None = None, onnx_cache: Path | None = None,
                     calibration: np.ndarray | None = None,
                     mirror_axes: tuple[int, ...] | None = ()) -> list[RuntimeMeasurement]:
    """Each candidate (runtime, precision) measured on the batch `probe` (B, C, *spatial): windows of a real
    preprocessed image (`autoseg.inference.sliding_window.probe_windows`) where there is one, whose confident
    labels say more about agreement than noise does, else `random_probe`; against the torch fp32 network
    itself (`threads`: the ONNX runtimes', see `runtime_network`). A runtime that cannot be built here (not
    installed) is recorded with its error, never chosen. Costs 1 + (1 + timed_calls) x len(candidates)
    network calls, and an ONNX export unless `onnx_cache` holds it (`runtime_network`); openvino int8 is
    calibrated on `calibration` (windows of other images than the probe's where there are any, so its
    agreement is measured on windows it was not calibrated on) unless `onnx_cache` holds its int8 form.
    `mirror_axes`: the mirror TTA predict will run (None: every axis; () none); with TTA the reduced
    precisions' labels are compared on the mean of the mirror passes (`measure_runtime`), which costs
    one pass per flip of torch fp32 and of each of them."""
    import torch

    probe = torch.from_numpy(np.ascontiguousarray(probe, dtype=np.float32))
    with torch.inference_mode():
        reference = network(probe).float()
    reference_mirrored = None
    if mirror_axes != () and any(precision != "fp32" for _, precision in candidates):
        from autoseg.inference.stitching import mirrored_mean

        reference_mirrored = mirrored_mean(network, probe, mirror_axes, reference.shape[1])
    probe_shape = tuple(probe.shape)
    channels, dimension = probe_shape[1], len(probe_shape) - 2
    onnx_model, export_error = None, None
    if any(runtime in ONNX_RUNTIMES for runtime, _ in candidates):  # one export for both ONNX runtimes
        from autoseg.network.onnx_export import cached_export_onnx

        try:
            onnx_model = cached_export_onnx(network, input_channels=channels, dimension=dimension,
                                            cache_folder=onnx_cache, example_spatial=tuple(probe_shape[2:]))
        except AutosegError as error:
            export_error = error
    measurements = []
    for runtime, precision in candidates:
        try:
            if export_error is not None and runtime in ONNX_RUNTIMES:
                raise export_error
            converted = runtime_network(network, runtime, input_channels=channels, dimension=dimension,
                                        precision=precision, threads=threads, onnx_model=onnx_model,
                                        onnx_cache=onnx_cache, calibration=lambda: calibration)
        except AutosegError as error:
            nan = float("nan")
            measurements.append(RuntimeMeasurement(runtime, precision, nan, nan, nan, False, str(error)))
            continue
        measurements.append(measure_runtime(converted, runtime, precision, probe, reference,
                                            timed_calls=timed_calls, clock=clock, mirror_axes=mirror_axes,
                                            reference_mirrored=reference_mirrored))
    return measurements


def fastest_agreeing(measurements: list[RuntimeMeasurement]) -> RuntimeMeasurement:
    """The fastest measurement that agrees with torch fp32 (torch fp32 itself always does); int8 only when
    it is INT8_MIN_SPEEDUP times faster than the fastest agreeing float runtime."""
    agreeing = [m for m in measurements if m.agrees and np.isfinite(m.seconds)]
    if not agreeing:
        raise RuntimeUnavailable("no runtime agrees with torch fp32 on the probe: "
                                 + "; ".join(f"{m.name}: {m.error or 'disagrees'}" for m in measurements))
    fastest = min(agreeing, key=lambda m: m.seconds)
    floats = [m for m in agreeing if m.precision != "int8"]
    if fastest.precision == "int8" and floats:
        fastest_float = min(floats, key=lambda m: m.seconds)
        if fastest_float.seconds < INT8_MIN_SPEEDUP * fastest.seconds:
            return fastest_float
    return fastest
