"""The candidates compute-aware planning chooses among: smaller patches, narrower networks, smaller batches.

The receptive field follows the patch: each candidate's topology is recomputed by the planner's
rules, so keeping the coverage keeps the number of poolings. `benchmark_probes` picks the networks
the device benchmark times for the cost model of a configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from autoseg.budget.speed import Probe
from autoseg.network.architecture import Architecture
from autoseg.network.cost import network_cost
from autoseg.planning import rules
from autoseg.planning.plans import Configuration, Plans

# Features at full resolution; 32 is nnU-Net's. Only multiples of 8 that keep every stage a multiple
# of 16 (or 8 at the narrowest): on an AVX-512 CPU a base of 20 or 24 costs as much as 32 (oneDNN's
# fast kernels want channels in multiples of the 16 float lanes; measured on 24x40x32 patches: widths
# 8/16/20/24/32 take 0.057/0.088/0.182/0.206/0.245 s per fp32 iteration), and GPUs' tensor cores want
# multiples of 8. The cost model, fitted to widths 32 and 8, cannot see that, so it is not offered.
BASE_WIDTHS = (32, 16, 8)
MIN_PATCH_EDGE = 16  # voxels: a patch axis is never shrunk below this (or below the plan's, if smaller)
# --- probes for the micro-benchmark --------------------------------------------------------------
# Feature-map elements of the largest probe's batch: big enough that per-step overheads and cache
# effects do not dominate (the candidates are 10-100x bigger), ~1 s per step on a 2-core CPU.
# The smaller probe holds about PROBE_SIZE_RATIO times fewer.
PROBE_ELEMENTS = {"cpu": 2e7, "mps": 1e8, "cuda": 1e9}
PROBE_SIZE_RATIO = 4.0
PROBE_WIDTHS = (32, 8)  # the widest and narrowest candidates: the fit interpolates between them


@dataclass(frozen=True)
class Candidate:
    """A network and batch to train: the patch (voxels, a multiple of the downsampling), width, batch."""

    patch_size: tuple[int, ...]
    base_features: int
    batch_size: int


# --- candidates -------------------------------------------------------------------------------------
def scaled_features(n_stages: int, dimension: int, base_features: int) -> list[int]:
    """nnU-Net's features per stage (base, doubling, capped) with the base and the cap scaled together,
    so a base of 16 is the whole network at half width (cap 160 in 3D)."""
    cap = rules.MAX_FEATURES[dimension] * base_features // rules.BASE_FEATURES
    return [min(base_features * 2**stage, cap) for stage in range(n_stages)]


def candidate_architecture(configuration: Configuration, patch_size: list[int], base_features: int) -> Architecture:
    """The configuration's network re-derived for another patch (topology by the planner's rules) and width."""
    dimension = configuration.dimension
    topology = rules.topology_for(configuration.spacing[-dimension:], list(patch_size), dimension)
    planned, n_stages = configuration.architecture, len(topology.strides)
    return replace(planned, features_per_stage=scaled_features(n_stages, dimension, base_features),
                   kernel_sizes=topology.kernel_sizes, strides=topology.strides,
                   blocks_per_stage=rules.encoder_blocks(planned.name, n_stages))


def patch_chain(configuration: Configuration) -> list[list[int]]:
    """The planned patch, then ever smaller patches by nnU-Net's shrinking rule (see module docstring).

    Each patch is padded to a multiple of its own topology's downsampling; no axis goes below
    MIN_PATCH_EDGE (or the planned size, if smaller).
    """
    dimension = configuration.dimension
    spacing, median = configuration.spacing[-dimension:], configuration.median_shape[-dimension:]
    patch = list(configuration.patch_size)
    floor = [min(p, MIN_PATCH_EDGE) for p in patch]
    chain, stuck = [list(patch)], set()
    while True:
        ratios = [p / m for p, m in zip(patch, median)]
        axes = [a for a in range(dimension) if a not in stuck and patch[a] > floor[a]]
        if not axes:
            return chain
        axis = max(axes, key=lambda a: (ratios[a], a))
        shorter = list(patch)
        shorter[axis] = max(floor[axis], patch[axis] - rules.topology_for(spacing, patch, dimension).divisor[axis])
        step = rules.topology_for(spacing, shorter, dimension).divisor[axis]
        shorter[axis] = max(floor[axis], patch[axis] - step)
        padded = rules.topology_for(spacing, shorter, dimension).patch_size
        if padded[axis] >= patch[axis] or any(n > p for n, p in zip(padded, patch)):
            stuck.add(axis)  # padding undid the step (or grew another axis): this axis is done
            continue
        patch = padded
        chain.append(list(patch))


def batch_sizes(planned_batch: int) -> list[int]:
    """The planned batch, halved down to the planner's minimum (2)."""
    sizes = [planned_batch]
    while sizes[-1] // 2 >= rules.MIN_BATCH_SIZE:
        sizes.append(sizes[-1] // 2)
    if sizes[-1] > rules.MIN_BATCH_SIZE:
        sizes.append(rules.MIN_BATCH_SIZE)
    return sizes


# --- probes -------------------------------------------------------------------------------------------
def benchmark_probes(plans: Plans, config_name: str, device: str,
                     probe_elements: float | None = None) -> list[Probe]:
    """Four networks to time for the cost model of this configuration: two patch sizes from its patch
    chain (the first whose batch of 2 holds <= `probe_elements` feature-map elements at width 32, and
    the first with PROBE_SIZE_RATIO times fewer) at base widths 32 and 8. Two sizes and two widths
    let the fit separate its terms.
    """
    configuration = plans.configuration(config_name)
    limit = PROBE_ELEMENTS.get(device.split(":")[0], PROBE_ELEMENTS["cpu"]) if probe_elements is None else probe_elements
    batch = rules.MIN_BATCH_SIZE
    chain = patch_chain(configuration)

    def elements(patch: list[int]) -> int:
        architecture = candidate_architecture(configuration, patch, rules.BASE_FEATURES)
        return network_cost(architecture, patch).feature_map_elements * batch

    large = next((p for p in chain if elements(p) <= limit), chain[-1])
    small = next((p for p in chain if elements(p) <= elements(large) / PROBE_SIZE_RATIO), chain[-1])
    sizes = [(large, batch), (small, batch if small != large else 1)]
    return [Probe(candidate_architecture(configuration, patch, width), list(patch), b)
            for patch, b in sizes for width in PROBE_WIDTHS]
