"""Networks registered by key: a plan names a builder in `NETWORK_BUILDERS`, never a module path.

torch is imported lazily (inside the functions) so that importing `autoseg.network` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from autoseg.errors import PlanError
from autoseg.network.architecture import Architecture

if TYPE_CHECKING:
    import torch


def build_plain_unet(architecture: Architecture) -> "torch.nn.Module":
    from autoseg.network.unet import build_plain_unet as build

    return build(architecture)


def build_resenc_unet(architecture: Architecture) -> "torch.nn.Module":
    from autoseg.network.resenc import build_resenc_unet as build

    return build(architecture)


NETWORK_BUILDERS: dict[str, Callable[[Architecture], "torch.nn.Module"]] = {
    "plain_unet": build_plain_unet,
    "resenc": build_resenc_unet,
}


def build_network(architecture: Architecture) -> "torch.nn.Module":
    """The untrained network the architecture describes (He-initialised, on CPU, float32)."""
    builder = NETWORK_BUILDERS.get(architecture.name)
    if builder is None:
        known = ", ".join(sorted(NETWORK_BUILDERS))
        raise PlanError(f"architecture.name {architecture.name!r} is not a known network; known: {known}")
    return builder(architecture)


def count_parameters(module: "torch.nn.Module") -> int:
    """Number of scalar parameters (trainable or not) in the module."""
    return int(sum(parameter.numel() for parameter in module.parameters()))
