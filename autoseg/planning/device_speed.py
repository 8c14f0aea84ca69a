"""How fast this machine trains a U-Net: a micro-benchmark and a linear cost model fitted to it.

The planner needs the seconds of one training iteration (forward + deep-supervised Dice+CE loss +
backward + SGD step) for many candidate (patch, width, batch) combinations without running each.
We time a handful of probe networks (a couple of warm-up steps, then a few timed steps each) and fit

    seconds_per_iteration = seconds_fixed
                            + seconds_per_element * batch * feature_map_elements(architecture, patch)
                            + seconds_per_mac     * batch * convolution_macs(architecture, patch)

with non-negative least squares. Why two terms: `feature_map_elements` (the activations every
conv, norm and nonlinearity writes) counts the memory-bound work and grows linearly with the width;
the multiply-accumulates of the convolutions count the compute-bound work and grow with the square
of the width. Neither alone describes both a narrower and a smaller network. `seconds_fixed` absorbs
per-step overheads (kernel launches, optimizer bookkeeping). `DeviceSpeed.max_relative_error` records
the fit's worst relative error on its own probes: a large value means noisy timings (another process
sharing the CPU) or a machine the linear model does not describe, and the predictions are as rough.

Measurements are cached as JSON, keyed by the machine's identity (host, CPU model, torch version,
threads, GPU name, precision, dimension): `load_or_measure`. torch is imported inside the functions
that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from autoseg.artifacts import read_json, write_json
from autoseg.errors import AutosegError, PlanError
from autoseg.network.architecture import Architecture, feature_map_elements, stage_shapes

DEVICE_SPEED_SCHEMA_VERSION = 2  # 2: the data pipeline's cost
PRECISIONS = ("fp32", "bf16", "fp16")
# Timing protocol: the first step allocates buffers and picks kernels; it is not timed. The median of
# 3 timed steps survives one step slowed by another process.
WARMUP_STEPS = 1
TIMED_STEPS = 3
# nnU-Net's optimiser (SGD, Nesterov momentum 0.99, weight decay 3e-5, gradient norm clipped to 12),
# so the step costs what a real training step costs.
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, GRAD_CLIP_NORM = 1e-2, 0.99, 3e-5, 12.0
CPUINFO_PATH = Path("/proc/cpuinfo")
# CPU flags that give bf16 matrix arithmetic in hardware (oneDNN uses them for bf16 convolutions).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class Probe(NamedTuple):
    """One network to time: an architecture, the patch it is fed (voxels) and the batch size."""

    architecture: Architecture
    patch_size: list[int]
    batch_size: int


@dataclass
class SpeedSample:
    """One timed probe: its size measures (per batch) and the median seconds of its timed steps."""

    patch_size: list[int]
    features_per_stage: list[int]
    batch_size: int
    elements: float  # feature_map_elements x batch
    macs: float  # convolution_macs x batch (forward pass)
    seconds: float  # per training iteration


@dataclass
class CostModel:
    """seconds = seconds_fixed + seconds_per_element * elements + seconds_per_mac * macs (per batch)."""

    seconds_fixed: float
    seconds_per_element: float
    seconds_per_mac: float

    def seconds(self, elements: float, macs: float) -> float:
        return float(self.seconds_fixed + self.seconds_per_element * elements + self.seconds_per_mac * macs)


@dataclass
class DataPipelineModel:
    """Seconds to sample and augment one training batch on one CPU core (as a loader worker runs it):
    seconds_fixed + seconds_per_voxel * batch * (input channels + 1 label map) * patch voxels."""

    seconds_fixed: float
    seconds_per_voxel: float

    def seconds(self, patch_size: list[int], batch_size: int, input_channels: int) -> float:
        return float(self.seconds_fixed + self.seconds_per_voxel * batch_size * (input_channels + 1)
                     * math.prod(patch_size))


@dataclass
class DeviceSpeed:
    """The measured speed of one device at one precision for networks of one dimension.

    On a CPU the augmentation workers share the cores with the network (measured on 2 cores: a
    training iteration with one worker takes as long as with in-process loading, network plus data
    time), so `data_pipeline` is added to each iteration; on a GPU the workers run on otherwise idle
    cores and keep up (bench/data_loading.py), so it is not.
    """

    device: str  # "cpu" | "cuda" | "mps"
    precision: str  # "fp32" | "bf16" | "fp16"
    dimension: int  # 2 or 3: the probes' dimension (2D and 3D convolutions run at different speeds)
    model: CostModel
    max_relative_error: float  # worst |predicted - measured| / measured over `samples`
    samples: list[SpeedSample] = field(default_factory=list)
    identity: dict = field(default_factory=dict)  # machine identity (see `machine_identity`)
    measured_seconds: float = 0.0  # wall-clock the benchmark took, warm-ups included
    data_pipeline: DataPipelineModel | None = None
    schema_version: int = DEVICE_SPEED_SCHEMA_VERSION

    def seconds_per_iteration(self, architecture: Architecture, patch_size: list[int], batch_size: int) -> float:
        """Predicted seconds of one training iteration (forward, loss, backward, optimizer step, and on a
        CPU the sampling and augmentation of its batch)."""
        elements, macs = work_of(architecture, patch_size, batch_size)
        seconds = self.model.seconds(elements, macs)
        if self.device == "cpu" and self.data_pipeline is not None:
            seconds += self.data_pipeline.seconds(patch_size, batch_size, architecture.input_channels)
        return seconds

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "device speed") -> "DeviceSpeed":
        if not isinstance(data, dict) or data.get("schema_version") != DEVICE_SPEED_SCHEMA_VERSION:
            found = data.get("schema_version") if isinstance(data, dict) else type(data).__name__
            raise PlanError(f"{where}: schema_version {found!r}, expected {DEVICE_SPEED_SCHEMA_VERSION}; "
                            "delete the file to measure again")
        try:
            pipeline = data.get("data_pipeline")
            return cls(**{**data, "model": CostModel(**data["model"]),
                          "samples": [SpeedSample(**s) for s in data.get("samples", [])],
                          "data_pipeline": DataPipelineModel(**pipeline) if pipeline is not None else None})
        except (TypeError, KeyError) as e:
            raise PlanError(f"{where}: malformed device speed ({e}); delete the file to measure again") from None


# --- work measures ------------------------------------------------------------------------------
def convolution_macs(architecture: Architecture, patch_size: list[int]) -> int:
    """Multiply-accumulates of one sample's forward pass through the U-Net's convolutions.

    Counts what `autoseg.network.unet.PlainUNet` runs: per encoder stage `convs_per_stage` convs (the
    first strided, from the previous stage's features), per decoder stage a transposed conv
    (kernel = stride) from the stage below, then convs on the concatenated skip (2x features) and a
    1x1 segmentation head (every decoder stage with deep supervision, else only the top one).
    """
    shapes = stage_shapes(architecture, patch_size)
    voxels = [math.prod(s) for s in shapes]
    features, kernels = architecture.features_per_stage, architecture.kernel_sizes
    total, in_channels = 0, architecture.input_channels
    for stage, size in enumerate(voxels):
        kernel = math.prod(kernels[stage])
        total += size * kernel * in_channels * features[stage]
        total += (architecture.convs_per_stage - 1) * size * kernel * features[stage] ** 2
        in_channels = features[stage]
    for stage in range(len(voxels) - 2, -1, -1):
        size, kernel = voxels[stage], math.prod(kernels[stage])
        up_kernel = math.prod(architecture.strides[stage + 1])
        total += voxels[stage + 1] * up_kernel * features[stage + 1] * features[stage]
        total += size * kernel * 2 * features[stage] * features[stage]
        total += (architecture.convs_per_stage - 1) * size * kernel * features[stage] ** 2
        if architecture.deep_supervision or stage == 0:
            total += size * features[stage] * architecture.num_classes
    return int(total)


def work_of(architecture: Architecture, patch_size: list[int], batch_size: int) -> tuple[float, float]:
    """(activation elements, forward MACs) of one batch: the cost model's two regressors."""
    return (float(feature_map_elements(architecture, patch_size)) * batch_size,
            float(convolution_macs(architecture, patch_size)) * batch_size)


# --- cost model ---------------------------------------------------------------------------------
def fit_cost_model(samples: Sequence[SpeedSample]) -> tuple[CostModel, float]:
    """Non-negative least squares of seconds on (1, elements, macs), relative errors weighted equally.

    Each row is divided by its measured seconds, so a 0.05 s probe counts as much as a 5 s one (we
    care about relative error across the whole range of candidates). Returns the model and its
    worst relative error on the samples. Needs at least 3 samples.
    """
    if len(samples) < 3:
        raise PlanError(f"the cost model needs at least 3 timed probes, got {len(samples)}")
    seconds = np.array([s.seconds for s in samples], dtype=np.float64)
    if np.any(seconds <= 0):
        raise PlanError(f"timed probes must take a positive time, got {seconds.tolist()}")
    design = np.array([[1.0, s.elements, s.macs] for s in samples], dtype=np.float64)
    coefficients = relative_nnls(design, seconds)
    model = CostModel(*(float(c) for c in coefficients))
    predicted = design @ coefficients
    return model, float(np.max(np.abs(predicted - seconds) / seconds))


def relative_nnls(design: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative coefficients c minimizing the relative errors (design @ c - seconds) / seconds."""
    from scipy.optimize import nnls

    scale = design.max(axis=0)  # columns to ~1 so that NNLS is well conditioned
    scale[scale == 0] = 1.0
    coefficients, _ = nnls(design / scale / seconds[:, None], np.ones_like(seconds))
    return coefficients / scale


# --- measurement --------------------------------------------------------------------------------
def time_training_iteration(probe: Probe, device, precision: str, warmup_steps: int, timed_steps: int,
                clock: Callable[[], float], seed: int) -> float:
    """Median seconds of `timed_steps` training iterations of the probe on random data."""
    import torch

    from autoseg.network import build_network
    from autoseg.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights

    architecture = probe.architecture
    torch.manual_seed(seed)
    network = build_network(architecture).to(device)
    loss_fn = DiceCELoss(batch_dice=False)
    if architecture.deep_supervision:  # as the trainer: one output per decoder stage
        loss_fn = DeepSupervisionLoss(loss_fn, deep_supervision_weights(architecture.num_stages - 1))
    optimizer = torch.optim.SGD(network.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY, nesterov=True)
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    shape = (probe.batch_size, architecture.input_channels, *probe.patch_size)
    data = torch.randn(shape, device=device)
    target = torch.randint(0, architecture.num_classes, (probe.batch_size, 1, *probe.patch_size), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = network(data)
        loss = loss_fn(outputs, target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), GRAD_CLIP_NORM)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    network.train()
    for _ in range(warmup_steps):
        step()
    durations = []
    for _ in range(timed_steps):
        started = clock()
        step()
        durations.append(clock() - started)
    return float(np.median(durations))


def measure_device_speed(device: str, probes: Sequence[Probe], precision: str, *,
                         warmup_steps: int = WARMUP_STEPS, timed_steps: int = TIMED_STEPS,
                         clock: Callable[[], float] = time.perf_counter, seed: int = 0) -> DeviceSpeed:
    """Time each probe's training iteration on `device` ("cpu", "cuda", "cuda:1", "mps") at
    `precision` and fit the cost model. All probes must have the same dimension (2 or 3).

    Costs (warmup_steps + timed_steps) iterations per probe: choose probes of a fraction of a second each.
    """
    import torch

    if precision not in PRECISIONS:
        raise PlanError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dimensions = {p.architecture.dimension for p in probes}
    if len(dimensions) != 1:
        raise PlanError(f"probes must all have one dimension, got {sorted(dimensions)}")
    dimension = dimensions.pop()
    torch_device = torch.device(device)
    started = time.perf_counter()
    samples = []
    for index, probe in enumerate(probes):
        seconds = time_training_iteration(probe, torch_device, precision, warmup_steps, timed_steps, clock, seed + index)
        elements, macs = work_of(probe.architecture, probe.patch_size, probe.batch_size)
        samples.append(SpeedSample(list(probe.patch_size), list(probe.architecture.features_per_stage),
                                   probe.batch_size, elements, macs, seconds))
    model, error = fit_cost_model(samples)
    pipeline = measure_data_pipeline(probes, timed_steps, clock, seed) if torch_device.type == "cpu" else None
    return DeviceSpeed(device=torch_device.type, precision=precision, dimension=dimension, model=model,
                       max_relative_error=error, samples=samples, identity=machine_identity(device, precision, dimension),
                       measured_seconds=time.perf_counter() - started, data_pipeline=pipeline)


# --- data pipeline ------------------------------------------------------------------------------
class _SyntheticCase:
    """A CaseSource (autoseg.training.sampling) of one random case, for timing the data pipeline."""

    def __init__(self, shape: tuple[int, ...], channels: int, seed: int):
        rng = np.random.default_rng(seed)
        self.data = rng.standard_normal((channels, *shape)).astype(np.float32)
        self.seg = (rng.random(shape) < 0.1).astype(np.int16)
        self.locations = {1: np.argwhere(self.seg == 1)[:10_000]}

    def arrays(self, case_id: str):
        return self.data, self.seg

    def foreground_locations(self, case_id: str):
        return self.locations


def time_data_pipeline(patch_size: list[int], batch_size: int, channels: int, timed_steps: int,
                       clock: Callable[[], float], seed: int) -> float:
    """Median seconds to sample and augment one batch of `patch_size` (the training pipeline of
    autoseg.training.data, enlarged reads included) with one BLAS thread, as a loader worker runs it."""
    from autoseg.training.augmentation import rotation_and_dummy_2d_for, training_transforms
    from autoseg.training.data import read_patch_size_for
    from autoseg.training.loader import single_threaded_numerics
    from autoseg.training.sampling import PatchSampler

    dimension = len(patch_size)
    setup = rotation_and_dummy_2d_for(patch_size, dimension)
    read_size = read_patch_size_for(patch_size, setup)
    case_shape = tuple(int(math.ceil(1.2 * r)) for r in read_size)
    if dimension == 2:  # a 2D configuration samples slices of 3D arrays
        case_shape = (4, *case_shape)
    sampler = PatchSampler(_SyntheticCase(case_shape, channels, seed), ["case"], patch_size, batch_size,
                           read_patch_size=read_size)
    transforms = training_transforms(patch_size, dimension=dimension, rotation_range_deg=setup.rotation_range_deg,
                                     do_dummy_2d=setup.do_dummy_2d, mirror_axes=setup.mirror_axes,
                                     use_mask_for_norm_any=False)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # batchgenerators draws from numpy's global generator
    durations = []
    with single_threaded_numerics():
        for step in range(WARMUP_STEPS + timed_steps):
            started = clock()
            transforms(**sampler.sample_batch(rng))
            if step >= WARMUP_STEPS:
                durations.append(clock() - started)
    return float(np.median(durations))


def measure_data_pipeline(probes: Sequence[Probe], timed_steps: int, clock: Callable[[], float],
                          seed: int) -> DataPipelineModel:
    """The data pipeline's cost per batch, fitted (non-negative least squares) to the probes' patch sizes."""
    sizes = sorted({(tuple(p.patch_size), p.batch_size, p.architecture.input_channels) for p in probes})
    rows, seconds = [], []
    for patch, batch, channels in sizes:
        seconds.append(time_data_pipeline(list(patch), batch, channels, timed_steps, clock, seed))
        rows.append([1.0, float(batch * (channels + 1) * math.prod(patch))])
    fixed, per_voxel = relative_nnls(np.array(rows), np.array(seconds))
    return DataPipelineModel(float(fixed), float(per_voxel))


# --- machine identity and cache -----------------------------------------------------------------
def _cpu_model(cpuinfo_text: str) -> str:
    for line in cpuinfo_text.splitlines():
        if line.split(":")[0].strip() in ("model name", "Hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _read_cpuinfo() -> str:
    try:
        return CPUINFO_PATH.read_text()
    except OSError:  # not Linux
        return ""


def machine_identity(device: str, precision: str, dimension: int) -> dict:
    """What the measured speed depends on; a cached measurement is reused only when all of it matches."""
    import torch

    torch_device = torch.device(device)
    gpu = torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else ""
    return {
        "host": platform.node(), "cpu": _cpu_model(_read_cpuinfo()), "machine": platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": torch_device.type,
        "gpu": gpu, "precision": precision, "dimension": int(dimension),
    }


def identity_key(identity: dict) -> str:
    """A short stable key for an identity (the cache's dictionary key)."""
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _read_cache(cache_path: Path) -> dict:
    if not cache_path.is_file():
        return {}
    try:
        data = read_json(cache_path)
    except AutosegError:
        return {}  # a corrupt cache is only a lost measurement: measure again and overwrite it
    if not isinstance(data, dict) or data.get("schema_version") != DEVICE_SPEED_SCHEMA_VERSION:
        return {}
    return dict(data.get("measurements", {}))


def load_or_measure(cache_path: str | Path, device: str, probes: Sequence[Probe], precision: str, *,
                    measure: Callable[..., DeviceSpeed] = measure_device_speed, refresh: bool = False) -> DeviceSpeed:
    """The cached speed for this machine/device/precision/dimension, or a new measurement added to the cache.

    `cache_path` is a JSON file ({"schema_version", "measurements": {key: DeviceSpeed}}) holding one
    measurement per identity, e.g. HOME/device_speed.json. `refresh` measures again even when cached.
    """
    cache_path = Path(cache_path)
    dimension = probes[0].architecture.dimension if probes else 3
    key = identity_key(machine_identity(device, precision, dimension))
    cached = _read_cache(cache_path)
    if key in cached and not refresh:
        return DeviceSpeed.from_json(cached[key], where=f"{cache_path}: measurement {key}")
    speed = measure(device, probes, precision)
    cached[key] = speed.to_json()
    write_json(cache_path, {"schema_version": DEVICE_SPEED_SCHEMA_VERSION, "measurements": cached})
    return speed


# --- precision ----------------------------------------------------------------------------------
def cpu_supports_bf16(cpuinfo_text: str | None = None, capability: str | None = None) -> bool:
    """True when the CPU has hardware bf16 (AVX-512 BF16 or AMX) and torch uses AVX-512 kernels.

    `cpuinfo_text` defaults to /proc/cpuinfo (empty elsewhere: False), `capability` to
    torch.backends.cpu.get_cpu_capability() (e.g. "AVX2", "AVX512").
    """
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    text = _read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    flags = set()
    for line in text.splitlines():
        if line.split(":")[0].strip() == "flags":
            flags.update(line.split(":", 1)[1].split())
    return capability.upper().startswith("AVX512") and any(flag in flags for flag in CPU_BF16_FLAGS)


def choose_precision(device: str, bf16_supported: bool) -> str:
    """The precision to propose: fp16 mixed precision on CUDA, bf16 autocast on CPUs with hardware
    bf16 (`cpu_supports_bf16`), fp32 elsewhere (MPS, older CPUs). A proposal is only measured, not
    taken: bf16 on AVX-512 BF16 without AMX is not always faster, so the planner keeps the precision
    whose budget decision is better (`autoseg.planning.compute_aware.best_decision`).
    """
    kind = device.split(":")[0]
    if kind == "cuda":
        return "fp16"
    if kind == "cpu" and bf16_supported:
        return "bf16"
    return "fp32"
