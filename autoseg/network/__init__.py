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


def build_attention_unet(architecture: Architecture) -> "torch.nn.Module":
    from autoseg.network.attention_unet import build_attention_unet as build

    return build(architecture)


def build_unetpp(architecture: Architecture) -> "torch.nn.Module":
    from autoseg.network.unetpp import build_unetpp as build

    return build(architecture)


def build_u2net(architecture: Architecture) -> "torch.nn.Module":
    from autoseg.network.u2net import build_u2net as build

    return build(architecture)


def build_resenc_unet(architecture: Architecture) -> "torch.nn.Module":
    from autoseg.network.resenc import build_resenc_unet as build

    return build(architecture)


NETWORK_BUILDERS: dict[str, Callable[[Architecture], "torch.nn.Module"]] = {
    "plain_unet": build_plain_unet,
    "attention_unet": build_attention_unet,
    "unetpp": build_unetpp,
    "u2net": build_u2net,
    "resenc": build_resenc_unet,
}

# Networks whose deep-supervision outputs are alternative full-resolution predictions, each scored alike
# (UNet++'s top nodes X(0, j); U²-Net's fused output and side outputs): their papers average the losses.
# The others return one output per decoder level, highest resolution first, weighted as nnU-Net does.
EQUALLY_WEIGHTED_OUTPUTS = ("unetpp", "u2net")


def build_network(architecture: Architecture) -> "torch.nn.Module":
    """The untrained network the architecture describes (He-initialised, on CPU, float32)."""
    builder = NETWORK_BUILDERS.get(architecture.name)
    if builder is None:
        known = ", ".join(sorted(NETWORK_BUILDERS))
        raise PlanError(f"architecture.name {architecture.name!r} is not a known network; known: {known}")
    return builder(architecture)


def deep_supervision_outputs(architecture: Architecture) -> tuple[int, str]:
    """(number of outputs the network returns with deep supervision, how the loss weighs them: "halving"
    (nnU-Net's 1/2^i from the first, the last at 0) or "equal"). The first output is always the one
    inference uses."""
    if architecture.name == "u2net":
        return architecture.num_stages + 1, "equal"  # the fused output, then one side output per stage
    weighting = "equal" if architecture.name in EQUALLY_WEIGHTED_OUTPUTS else "halving"
    return architecture.num_stages - 1, weighting


def count_parameters(module: "torch.nn.Module") -> int:
    """Number of scalar parameters (trainable or not) in the module."""
    return int(sum(parameter.numel() for parameter in module.parameters()))
