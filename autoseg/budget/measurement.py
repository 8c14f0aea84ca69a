"""Timing the device: training iterations of probe networks and the data pipeline, fitted into a DeviceSpeed.

A probe's iteration is `autoseg.training.step.train_step`, the trainer's own step, so the cost
model predicts the step that training runs. Measurements are cached per machine identity
(`load_or_measure`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autoseg.artifacts import write_json
from autoseg.budget.speed import (DEVICE_SPEED_SCHEMA_VERSION, DataPipelineModel, DeviceSpeed, Probe, SpeedSample,
                                  fit_cost_model, identity_key, machine_identity, read_cache, relative_nnls, work_of)
from autoseg.device import PRECISIONS, dtype_of
from autoseg.errors import PlanError

# Timing protocol: the first step allocates buffers and picks kernels; it is not timed. The median of
# 3 timed steps survives one step slowed by another process.
WARMUP_STEPS = 1
TIMED_STEPS = 3


def time_training_iteration(probe: Probe, device, precision: str, warmup_steps: int, timed_steps: int,
                            clock: Callable[[], float], seed: int) -> float:
    """Median seconds of `timed_steps` training iterations of the probe on random data."""
    import torch

    from autoseg.network import build_network
    from autoseg.training.loss import loss_for_architecture
    from autoseg.training.step import make_grad_scaler, make_optimizer, train_step

    architecture = probe.architecture
    torch.manual_seed(seed)
    network = build_network(architecture).to(device)
    loss_function = loss_for_architecture(architecture, batch_dice=False)
    optimizer = make_optimizer(network.parameters())
    amp_dtype = dtype_of(precision)
    scaler = make_grad_scaler(device, amp_dtype)
    shape = (probe.batch_size, architecture.input_channels, *probe.patch_size)
    data = torch.randn(shape, device=device)
    target = torch.randint(0, architecture.num_classes, (probe.batch_size, 1, *probe.patch_size), device=device)

    network.train()
    for _ in range(warmup_steps):
        train_step(network, loss_function, optimizer, scaler, data, target, amp_dtype)
    durations = []
    for _ in range(timed_steps):
        started = clock()
        train_step(network, loss_function, optimizer, scaler, data, target, amp_dtype)  # returns a float: synchronized
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


def load_or_measure(cache_path: str | Path, device: str, probes: Sequence[Probe], precision: str, *,
                    measure: Callable[..., DeviceSpeed] = measure_device_speed, refresh: bool = False) -> DeviceSpeed:
    """The cached speed for this machine/device/precision/dimension, or a new measurement added to the cache.

    `cache_path` is a JSON file ({"schema_version", "measurements": {key: DeviceSpeed}}) holding one
    measurement per identity, e.g. HOME/device_speed.json. `refresh` measures again even when cached.
    """
    cache_path = Path(cache_path)
    dimension = probes[0].architecture.dimension if probes else 3
    key = identity_key(machine_identity(device, precision, dimension))
    cached = read_cache(cache_path)
    if key in cached and not refresh:
        return DeviceSpeed.from_json(cached[key], where=f"{cache_path}: measurement {key}")
    speed = measure(device, probes, precision)
    cached[key] = speed.to_json()
    write_json(cache_path, {"schema_version": DEVICE_SPEED_SCHEMA_VERSION, "measurements": cached})
    return speed
