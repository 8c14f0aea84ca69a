"""UNet++: top-node outputs in 2D and 3D, equal deep-supervision weights, pruned inference that computes
only the nodes of its depth and gives exactly the unpruned network's top node, and learning."""

import pytest
import torch
from torch import nn

from autoseg.errors import PlanError
from autoseg.network import build_network
from autoseg.network.unetpp import prune_to_depth
from autoseg.training.loss import loss_for_architecture
from helpers_networks import PATCH, dice_after_training, outputs_with_and_without_deep_supervision, tiny_architecture


@pytest.mark.parametrize("dimension", [2, 3])
def test_one_full_resolution_output_per_top_node_deepest_first(dimension):
    architecture = tiny_architecture("unetpp", dimension, num_classes=3, features_per_stage=[4, 8, 8, 8],
                                     kernel_sizes=[[3] * dimension] * 4,
                                     strides=[[1] * dimension] + [[2] * dimension] * 3)
    outputs, single = outputs_with_and_without_deep_supervision(architecture)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *PATCH[dimension])] * 3  # X(0,3), X(0,2), X(0,1)
    torch.testing.assert_close(single, outputs[0])
    assert loss_for_architecture(architecture, batch_dice=True).weights == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("dimension", [2, 3])
def test_pruned_network_gives_exactly_the_top_node_of_its_depth(dimension):
    architecture = tiny_architecture("unetpp", dimension)
    network = build_network(architecture).eval()
    x = torch.randn(1, 1, *PATCH[dimension])
    with torch.no_grad():
        every_top_node = network(x)  # [X(0,2), X(0,1)]
        network.deep_supervision = False
        for depth in (1, 2):
            assert torch.equal(prune_to_depth(network, depth)(x), every_top_node[2 - depth])


def test_pruned_network_skips_the_deeper_nodes():
    network = build_network(tiny_architecture("unetpp", 2)).eval()
    network.deep_supervision = False
    ran = set()
    for name, module in network.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.register_forward_hook(lambda *_, name=name: ran.add(".".join(name.split(".")[:3])))
    with torch.no_grad():
        prune_to_depth(network, 1)(torch.randn(1, 1, 32, 32))
    # Depth 1: X(0,0), X(1,0), the upsampling of X(1,0), X(0,1) and its head; not X(2,0), X(1,1), X(0,2).
    assert ran == {"columns.0.0", "columns.0.1", "upsamplers.0.0", "columns.1.0", "heads.0"}
    with pytest.raises(PlanError, match="1..2"):
        prune_to_depth(network, 3)


def test_learns_the_box_task():
    assert dice_after_training(tiny_architecture("unetpp", 2), steps=12) > 0.7  # chance ~0.25
