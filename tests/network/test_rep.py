"""Rep blocks: fused and unfused networks compute the same function (random weights with non-trivial
norm statistics, and a briefly trained model), the fused network is the plain network, bad kernels fail."""

import pytest
import torch

from autoseg.errors import PlanError
from autoseg.network import build_network
from autoseg.network.rep import RepConv, fuse_rep_blocks
from autoseg.training.loss import loss_for_architecture
from autoseg.training.step import train_step
from helpers_networks import PATCH, box_images, tiny_architecture

PARITY_TOLERANCE = 1e-4  # fp32


def randomise(network: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random: conv and branch weights, biases, and the norms' affine scale and shift (so
    the normalised sums are scaled and shifted away from the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + 0.1)


def fused_difference(network: torch.nn.Module, x: torch.Tensor) -> float:
    network.eval()
    network.deep_supervision = False
    with torch.no_grad():
        unfused = network(x)
        fuse_rep_blocks(network)
        fused = network(x)
    assert not any(isinstance(m, RepConv) for m in network.modules())
    return float((unfused - fused).abs().max())


@pytest.mark.parametrize("name", ["plain_unet", "attention_unet", "unetpp", "u2net"])
@pytest.mark.parametrize("dimension", [2, 3])
def test_fused_equals_unfused_on_random_weights(name, dimension):
    network = build_network(tiny_architecture(name, dimension, conv_block="rep"))
    branches = [m for m in network.modules() if isinstance(m, RepConv)]
    assert any(m.has_identity for m in branches) and any(max(m.kxk.stride) > 1 or max(m.kxk.dilation) > 1
                                                          for m in branches)
    randomise(network)
    x = torch.randn(2, 1, *PATCH[dimension]) * 2
    assert fused_difference(network, x) < PARITY_TOLERANCE


def test_fused_network_is_the_plain_network():
    rep_architecture = tiny_architecture("plain_unet", 3, conv_block="rep")
    rep = build_network(rep_architecture)
    randomise(rep)
    fuse_rep_blocks(rep).eval()
    plain = build_network(tiny_architecture("plain_unet", 3))
    plain.load_state_dict(rep.state_dict())  # same keys and shapes: strict load
    x = torch.randn(1, 1, *PATCH[3])
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), rep(x))


def test_fused_equals_unfused_after_training():
    architecture = tiny_architecture("plain_unet", 2, conv_block="rep")
    torch.manual_seed(0)
    network = build_network(architecture)
    loss = loss_for_architecture(architecture, batch_dice=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        images, labels = box_images(4, 2, generator)
        train_step(network, loss, optimizer, None, images, labels, None)
    images, _ = box_images(4, 2, generator)
    assert fused_difference(network, images) < PARITY_TOLERANCE


def test_rep_needs_odd_kernels():
    with pytest.raises(PlanError, match="odd kernel"):
        build_network(tiny_architecture("plain_unet", 2, conv_block="rep", kernel_sizes=[[3, 3], [2, 2], [3, 3]]))
    with pytest.raises(PlanError, match="conv_block 'fancy'"):
        build_network(tiny_architecture("plain_unet", 2, conv_block="fancy"))
