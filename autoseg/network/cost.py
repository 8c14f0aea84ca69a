"""What a network costs for a patch: activation elements, forward multiply-accumulates, parameters.

The planner's memory estimate and the budget's cost model need these for many patches of whatever
network a configuration names. `network_cost` counts them on the network itself: it is built on
torch's "meta" device (shapes, no data, no compute) and run once with hooks on every convolution and
transposed convolution, so any registered builder is measured by its module types, never by its name:

    feature map elements = the input + the output of every conv / transposed conv that runs (per sample),
    MACs                 = per conv: output voxels x in_channels / groups x out_channels x kernel volume
                           (transposed: input voxels x in_channels x out_channels / groups x kernel volume),
    parameters           = every scalar parameter of the module.

The trace is taken once per architecture at a reference patch (REFERENCE_PATCH_MULTIPLE times the
network's total downsampling) and scaled to other patches by their volume: for a patch that is a
multiple of the downsampling every feature map is the patch divided by its cumulative stride, so the
scaling is exact. (A patch that is not a multiple cannot run through a U-Net, whose skips would not
match; it gets the volume-scaled estimate all the same.) It costs a fraction of a second
per architecture (after a one-time warm-up of torch's meta kernels, a few seconds) and is cached, so the planner's many candidate patches of one topology cost one trace.

The plain U-Net (without optional fields set) is counted by its analytical formulas
(`autoseg.network.architecture`: feature_map_elements, convolution_macs, parameter_count): they give
the same numbers (tests/network/test_cost.py) in microseconds, and keep planning without --networks
free of torch.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, fields

from autoseg.network.architecture import (ARCHITECTURE_DEFAULTS, FIRST_SCHEMA_FIELDS, Architecture, convolution_macs,
                                          feature_map_elements, parameter_count)

# The traced patch is this many times the network's total downsampling per axis: big enough that the
# coarsest stage still has several voxels per axis (blocks with their own pooling inside, such as
# U²-Net's, stay proportional), and free on the meta device whatever its size.
REFERENCE_PATCH_MULTIPLE = 8
TRACES_CACHED = 256


@dataclass(frozen=True)
class NetworkCost:
    """One sample's cost of a network for one patch (training forward pass: deep supervision as planned)."""

    feature_map_elements: int
    macs: int  # forward pass; backward costs about twice as much
    parameters: int


def network_cost(architecture: Architecture, patch_size: list[int]) -> NetworkCost:
    """Activation elements, forward MACs and parameters of one sample of `patch_size` (voxels)."""
    patch = tuple(int(p) for p in patch_size)
    if is_analytical(architecture):
        return NetworkCost(feature_map_elements(architecture, list(patch)), convolution_macs(architecture, list(patch)),
                           parameter_count(architecture))
    return traced_cost(architecture, list(patch))


def flops_per_voxel(architecture: Architecture, patch_size: list[int]) -> float:
    """Forward FLOPs (2 per MAC) per voxel of the patch: comparable across networks whatever their patch."""
    return 2.0 * network_cost(architecture, patch_size).macs / math.prod(patch_size)


def is_analytical(architecture: Architecture) -> bool:
    """A plain U-Net whose optional fields (added after the first schema, e.g. a block variant) are all at
    their defaults: exactly what the analytical formulas describe."""
    optional = [f.name for f in fields(Architecture) if f.name not in FIRST_SCHEMA_FIELDS]
    return architecture.name == "plain_unet" and all(
        getattr(architecture, name) == ARCHITECTURE_DEFAULTS.get(name) for name in optional)


def traced_cost(architecture: Architecture, patch_size: list[int]) -> NetworkCost:
    """The cost counted on the built network (module docstring), whatever the architecture."""
    key = json.dumps(architecture.to_json(), sort_keys=True)
    divisor = architecture.total_downsampling()
    reference = tuple(d * REFERENCE_PATCH_MULTIPLE for d in divisor)
    traced = _trace(key, reference)
    voxels, reference_voxels = math.prod(patch_size), math.prod(reference)
    return NetworkCost(traced.feature_map_elements * voxels // reference_voxels,
                       traced.macs * voxels // reference_voxels, traced.parameters)


@functools.lru_cache(maxsize=TRACES_CACHED)
def _trace(architecture_json: str, patch_size: tuple[int, ...]) -> NetworkCost:
    import torch
    from torch import nn

    from autoseg.network import build_network, count_parameters

    architecture = Architecture.from_json(json.loads(architecture_json))
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    transposed_convs = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    with torch.device("meta"):
        network = build_network(architecture)
    parameters = count_parameters(network)
    _without_normalization(network)
    network.train()  # what training runs: every deep-supervision head
    elements, macs = [architecture.input_channels * math.prod(patch_size)], []

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kernel = math.prod(module.kernel_size)
        elements.append(output[0].numel())
        if isinstance(module, transposed_convs):
            voxels = math.prod(inputs[0].shape[2:])
            macs.append(voxels * module.in_channels * module.out_channels // module.groups * kernel)
        else:
            voxels = math.prod(output.shape[2:])
            macs.append(voxels * module.in_channels // module.groups * module.out_channels * kernel)

    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, (*convs, *transposed_convs))]
    try:
        with torch.no_grad():
            network(torch.empty((1, architecture.input_channels, *patch_size), device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return NetworkCost(int(sum(elements)), int(sum(macs)), parameters)


def _without_normalization(module) -> None:
    """Replace every normalization layer by an identity, in place. They keep their input's shape and are
    not counted, and on the meta device torch runs them through slow Python decompositions (instance
    norm was two thirds of a ResEnc trace)."""
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.instancenorm import _InstanceNorm

    for name, child in module.named_children():
        if isinstance(child, (_InstanceNorm, _BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            setattr(module, name, nn.Identity())
        else:
            _without_normalization(child)

