"""How close a prediction comes to the machine: the device's measured convolution peak, and a network
wrapper that counts the FLOPs it executes and the seconds spent inside it.

    peak = measured_peak_gflops(dimension=3, precision="fp32")
    counted = CountingNetwork(network, architecture)      # use `counted` where the network was used
    ... predict ...
    counted.gflops_per_second(), counted.gflops_per_second() / peak, counted.seconds (inside the network)

The peak is forward-only on one large convolution block (64 -> 64 features, 3x3x3 kernel, no bias, a
32x64x64 input in 3D): what the CPU's convolution library reaches at its best on the layer type the
U-Net is made of, at the same precision. FLOPs are 2 x multiply-accumulates of the convolutions
(autoseg.network.cost.network_cost, the count the planner and cost model use, any network), per window batch executed,
so mirror passes and overlapping windows count as the work they are.
"""

from __future__ import annotations

import math
import time

import torch

from autoseg.network.architecture import Architecture
from autoseg.network.cost import network_cost


def _autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def measured_peak_gflops(dimension: int = 3, precision: str = "fp32", features: int = 64,
                         repeats: int = 5) -> float:
    """Best GFLOP/s of `repeats` forward passes of one large conv (after one warm-up pass). bf16 only where
    the CPU has it in hardware (autoseg.device.cpu_supports_bf16): emulated, it runs ~50x slower than fp32."""
    conv_type = torch.nn.Conv3d if dimension == 3 else torch.nn.Conv2d
    shape = (1, features, 32, 64, 64) if dimension == 3 else (1, features, 256, 256)
    convolution = conv_type(features, features, 3, padding=1, bias=False).eval()
    image = torch.randn(shape)
    macs = math.prod(shape[2:]) * features * features * 3 ** dimension
    best = math.inf
    with torch.inference_mode(), _autocast(precision):
        convolution(image)
        for _ in range(repeats):
            start = time.perf_counter()
            convolution(image)
            best = min(best, time.perf_counter() - start)
    return 2 * macs / best / 1e9


class CountingNetwork:
    """The network (a callable batch -> logits), counting its FLOPs and the seconds inside it."""

    def __init__(self, network, architecture: Architecture):
        self.network, self.architecture = network, architecture
        self.flops, self.seconds, self.calls = 0.0, 0.0, 0
        self._macs_by_shape: dict[tuple[int, ...], int] = {}

    def __call__(self, batch: torch.Tensor):
        spatial = tuple(int(v) for v in batch.shape[2:])
        if spatial not in self._macs_by_shape:
            self._macs_by_shape[spatial] = network_cost(self.architecture, list(spatial)).macs
        start = time.perf_counter()
        logits = self.network(batch)
        self.seconds += time.perf_counter() - start
        self.flops += 2.0 * self._macs_by_shape[spatial] * batch.shape[0]
        self.calls += 1
        return logits

    def __getattr__(self, name):  # .eval(), .parameters() ... of the wrapped network
        return getattr(self.network, name)

    def gflops_per_second(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds else 0.0


def flops_per_voxel(architecture: Architecture, patch_size: list[int]) -> float:
    """The network's FLOPs per input voxel for one pass over a window of `patch_size`."""
    return 2.0 * network_cost(architecture, patch_size).macs / math.prod(patch_size)
