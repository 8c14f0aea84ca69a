"""Runtimes: how the sliding window runs a loaded network. Each turns the torch network into the plain
callable `predict_sliding_window` calls, (B, C, *spatial) float32 tensor -> (B, K, *spatial) logits.

    networks = networks_for_runtime(model, "onnxruntime")        # one per fold, converted once per model

- torch:         the network as loaded, under autocast at `--precision` (auto: fp16 on CUDA; on a CPU bf16
                 when training kept it, else fp32; `autoseg.device.inference_autocast_dtype`).
- torch-compile: `torch.compile` of it, same precision. Compiling takes minutes per tile shape on a small
                 CPU, which a probe of a few seconds cannot amortize: it is never chosen by `auto`.
- onnxruntime:   the ONNX export (`autoseg.network.onnx_export`) on onnxruntime's CPU provider, float32.
- openvino:      the same ONNX model compiled by OpenVINO for the CPU, one compiled model per input shape
                 (static shapes are faster than its dynamic ones, and a sliding window has few tile shapes).
                 Inference precision f32: OpenVINO's default on CPUs with AMX is bf16, which no longer
                 matches torch fp32 within 1e-3; bf16 arithmetic is the torch runtime's `--precision bf16`.

`--runtime` says which engine runs the network and `--precision` which arithmetic the torch engines use
(ONNX runtimes are float32 only), so `torch` at bf16 is `--runtime torch --precision bf16`, the one way to
say it. `auto` is resolved by the predict stage from a measurement (`autoseg.stages.runtime`).
The ONNX runtimes run on the CPU only, and are imported only when asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from autoseg.device import inference_autocast_dtype
from autoseg.errors import AutosegError

if TYPE_CHECKING:
    import torch

    from autoseg.inference.model import TrainedModel

RUNTIMES = ("torch", "torch-compile", "onnxruntime", "openvino")
ONNX_RUNTIMES = ("onnxruntime", "openvino")
# What a runtime must reach against torch fp32 on the probe to be chosen (issue 14's thresholds).
MIN_LABEL_AGREEMENT_DICE = 0.999
MAX_PROBABILITY_DIFFERENCE = 1e-3  # ONNX runtimes only: they claim to compute float32


class RuntimeUnavailable(AutosegError):
    """A runtime asked for by name cannot run here (not installed, wrong device, unknown name)."""


def check_runtime(runtime: str, precision: str = "auto", allow_auto: bool = True) -> None:
    """A RuntimeUnavailable naming the choices for an unknown runtime, or a precision an ONNX runtime lacks."""
    choices = ("auto", *RUNTIMES) if allow_auto else RUNTIMES
    if runtime not in choices:
        raise RuntimeUnavailable(f"--runtime {runtime!r}: expected {', '.join(choices[:-1])} or {choices[-1]}")
    if runtime in ONNX_RUNTIMES and precision not in ("auto", "fp32"):
        raise RuntimeUnavailable(f"--runtime {runtime} computes in fp32; --precision {precision} is for the torch "
                                 "runtimes (--runtime torch or torch-compile)")


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
    """An ONNX model compiled by OpenVINO for the CPU (f32), compiled once per input shape."""

    def __init__(self, onnx_model: bytes, threads: int):
        import openvino

        self.core = openvino.Core()
        self.model = self.core.read_model(model=onnx_model, weights=b"")
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
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
                    threads: int | None = None, onnx_model: bytes | None = None) -> Callable:
    """`network` (eval mode, deep supervision off, as `load_network` gives it) run by `runtime`;
    `threads` for the ONNX runtimes (default: the CPUs this process may use); `onnx_model`: the network's
    export when already made (`autoseg.network.onnx_export.export_onnx`)."""
    check_runtime(runtime, allow_auto=False)
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
    from autoseg.network.onnx_export import export_onnx

    if onnx_model is None:
        onnx_model = export_onnx(network, input_channels=input_channels, dimension=dimension)
    return (OnnxRuntimeNetwork if runtime == "onnxruntime" else OpenVinoNetwork)(onnx_model, threads)


def _check_installed(runtime: str) -> None:
    """A RuntimeUnavailable when the package of an ONNX runtime (named as the runtime) cannot be imported."""
    import importlib

    try:
        importlib.import_module(runtime)
    except ImportError:
        raise RuntimeUnavailable(f"--runtime {runtime}: {runtime} is not installed (pip install {runtime})") from None


def networks_for_runtime(model: "TrainedModel", runtime: str) -> list:
    """The model's networks (every fold) run by `runtime`, converted on first use and kept on the model."""
    if runtime == "auto":
        raise RuntimeUnavailable("runtime auto is chosen by the predict stage (autoseg.stages.runtime); "
                                 "pass a runtime by name here")
    if runtime == "torch":
        return model.networks
    if runtime not in model.runtime_networks:
        architecture = model.configuration.architecture
        model.runtime_networks[runtime] = [
            runtime_network(network, runtime, input_channels=architecture.input_channels,
                            dimension=architecture.dimension) for network in model.networks]
    return model.runtime_networks[runtime]


# ----------------------------------------------------------------------------------- measuring a runtime
@dataclass
class RuntimeMeasurement:
    """One runtime at one precision timed on a probe batch and compared with torch fp32 on it."""

    runtime: str
    precision: str  # fp32, bf16 or fp16
    seconds: float  # median per probe batch, after one warm-up call (NaN when it failed or disagreed)
    label_agreement_dice: float  # mean over foreground labels of the Dice of its argmax vs torch fp32's
    max_probability_difference: float
    agrees: bool
    error: str = ""  # why it could not run (not installed...), else empty

    @property
    def name(self) -> str:
        return self.runtime if self.runtime in ONNX_RUNTIMES else f"{self.runtime} {self.precision}"


def label_agreement_dice(reference_labels: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean over the foreground classes present in either label map of their Dice (1.0 when none is)."""
    from autoseg.metrics import overlap_metrics

    scores = [overlap_metrics(labels == k, reference_labels == k)["Dice"] for k in range(1, num_classes)
              if np.any(labels == k) or np.any(reference_labels == k)]
    return float(np.mean(scores)) if scores else 1.0


def measure_runtime(network: Callable, runtime: str, precision: str, probe: "torch.Tensor",
                    reference_logits: "torch.Tensor", *, timed_calls: int = 2,
                    clock: Callable[[], float] = time.perf_counter) -> RuntimeMeasurement:
    """Time `network` (already converted to `runtime`) on `probe` under `precision` and compare its output
    with `reference_logits` (torch fp32 on the same probe). A runtime that disagrees is not timed."""
    import contextlib

    import torch

    from autoseg.device import dtype_of
    from autoseg.network.onnx_export import max_probability_difference

    dtype = None if runtime in ONNX_RUNTIMES else dtype_of(precision)
    autocast = torch.autocast(probe.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def call() -> "torch.Tensor":
        with torch.inference_mode(), autocast:
            return network(probe).float()

    logits = call()  # the warm-up: allocations, kernel choice, OpenVINO's compilation for this shape
    num_classes = reference_logits.shape[1]
    dice = label_agreement_dice(reference_logits.argmax(1).numpy(), logits.argmax(1).numpy(), num_classes)
    difference = max_probability_difference(reference_logits, logits)
    agrees = dice >= MIN_LABEL_AGREEMENT_DICE and (runtime not in ONNX_RUNTIMES
                                                    or difference < MAX_PROBABILITY_DIFFERENCE)
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
    """The (runtime, precision) pairs `auto` measures: on a CPU torch fp32, torch bf16 when the CPU has bf16
    hardware, onnxruntime and openvino, keeping only those at `precision` unless it is auto; elsewhere torch
    alone (the ONNX runtimes here run on the CPU), at `precision`. torch-compile is left out: see above."""
    if device_type != "cpu":
        return [("torch", precision)]
    candidates = [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
    if cpu_bf16:
        candidates.insert(1, ("torch", "bf16"))
    if precision == "auto":
        return candidates
    return [pair for pair in candidates if pair[1] == precision] or [("torch", precision)]


def measure_runtimes(network: "torch.nn.Module", candidates: list[tuple[str, str]], probe_shape: tuple[int, ...],
                     *, seed: int = 0, clock: Callable[[], float] = time.perf_counter, timed_calls: int = 2,
                     threads: int | None = None) -> list[RuntimeMeasurement]:
    """Each candidate (runtime, precision) measured on one random batch of `probe_shape` (B, C, *spatial)
    against the torch fp32 network itself (`threads`: the ONNX runtimes', see `runtime_network`). A runtime
    that cannot be built here (not installed) is recorded with its error, never chosen. Costs about
    1 + 3 x len(candidates) network calls."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn(probe_shape, generator=generator)
    with torch.inference_mode():
        reference = network(probe).float()
    channels, dimension = probe_shape[1], len(probe_shape) - 2
    onnx_model, export_error = None, None
    if any(runtime in ONNX_RUNTIMES for runtime, _ in candidates):  # one export for both ONNX runtimes
        from autoseg.network.onnx_export import export_onnx

        try:
            onnx_model = export_onnx(network, input_channels=channels, dimension=dimension,
                                     example_spatial=tuple(probe_shape[2:]))
        except AutosegError as error:
            export_error = error
    measurements = []
    for runtime, precision in candidates:
        try:
            if export_error is not None and runtime in ONNX_RUNTIMES:
                raise export_error
            converted = runtime_network(network, runtime, input_channels=channels, dimension=dimension,
                                        threads=threads, onnx_model=onnx_model)
        except AutosegError as error:
            nan = float("nan")
            measurements.append(RuntimeMeasurement(runtime, precision, nan, nan, nan, False, str(error)))
            continue
        measurements.append(measure_runtime(converted, runtime, precision, probe, reference,
                                            timed_calls=timed_calls, clock=clock))
    return measurements


def fastest_agreeing(measurements: list[RuntimeMeasurement]) -> RuntimeMeasurement:
    """The fastest measurement that agrees with torch fp32 (torch fp32 itself always does)."""
    agreeing = [m for m in measurements if m.agrees and np.isfinite(m.seconds)]
    if not agreeing:
        raise RuntimeUnavailable("no runtime agrees with torch fp32 on the probe: "
                                 + "; ".join(f"{m.name}: {m.error or 'disagrees'}" for m in measurements))
    return min(agreeing, key=lambda m: m.seconds)
