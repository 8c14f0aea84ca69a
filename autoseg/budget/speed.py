"""How fast this machine trains a U-Net: a micro-benchmark and a linear cost model fitted to it.

The planner needs the seconds of one training iteration (forward + deep-supervised Dice+CE loss +
backward + SGD step) for many candidate (patch, width, batch) combinations without running each.
We time a handful of probe networks (a couple of warm-up steps, then a few timed steps each) and fit

    seconds_per_iteration = seconds_fixed
                            + seconds_per_element * batch * feature_map_elements(network, patch)
                            + seconds_per_mac     * batch * convolution_macs(network, patch)

with non-negative least squares (both measures counted per network by `autoseg.network.cost.network_cost`,
so a ResEnc's residual blocks count as what they cost). Why two terms: `feature_map_elements` (the
activations every conv, norm and nonlinearity writes) counts the memory-bound work and grows linearly with the width;
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from autoseg.artifacts import read_json
from autoseg.device import cpu_model
from autoseg.errors import AutosegError, PlanError
from autoseg.network.architecture import Architecture
from autoseg.network.cost import network_cost

DEVICE_SPEED_SCHEMA_VERSION = 2  # 2: the data pipeline's cost


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
def work_of(architecture: Architecture, patch_size: list[int], batch_size: int) -> tuple[float, float]:
    """(activation elements, forward MACs) of one batch: the cost model's two regressors, counted for the
    architecture's own network (`autoseg.network.cost.network_cost`)."""
    cost = network_cost(architecture, patch_size)
    return float(cost.feature_map_elements) * batch_size, float(cost.macs) * batch_size


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


# --- machine identity and cache -----------------------------------------------------------------
def machine_identity(device: str, precision: str, dimension: int) -> dict:
    """What the measured speed depends on; a cached measurement is reused only when all of it matches."""
    import torch

    torch_device = torch.device(device)
    gpu = torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else ""
    return {
        "host": platform.node(), "cpu": cpu_model(), "machine": platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": torch_device.type,
        "gpu": gpu, "precision": precision, "dimension": int(dimension),
    }


def identity_key(identity: dict) -> str:
    """A short stable key for an identity (the cache's dictionary key)."""
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_cache(cache_path: Path) -> dict:
    """The cached measurements by identity key; {} when there is no usable cache."""
    if not cache_path.is_file():
        return {}
    try:
        data = read_json(cache_path)
    except AutosegError:
        return {}  # a corrupt cache is only a lost measurement: measure again and overwrite it
    if not isinstance(data, dict) or data.get("schema_version") != DEVICE_SPEED_SCHEMA_VERSION:
        return {}
    return dict(data.get("measurements", {}))
