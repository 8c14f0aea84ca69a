"""U²-Net: fused + side outputs in 2D and 3D, inner U depths decreasing with the stage, RSU-F at the
bottom, equal deep-supervision weights, and learning."""

import pytest
import torch

from autoseg.network import build_network
from autoseg.training.loss import loss_for_architecture
from helpers_networks import PATCH, dice_after_training, outputs_with_and_without_deep_supervision, tiny_architecture


@pytest.mark.parametrize("dimension", [2, 3])
def test_fused_output_first_then_one_side_output_per_stage(dimension):
    architecture = tiny_architecture("u2net", dimension, num_classes=3)
    outputs, single = outputs_with_and_without_deep_supervision(architecture)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *PATCH[dimension])] * 4  # fused + 3 stages
    torch.testing.assert_close(single, outputs[0])
    assert loss_for_architecture(architecture, batch_dice=True).weights == pytest.approx([0.25] * 4)


def test_inner_u_depth_decreases_and_follows_the_plan_strides():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    architecture = tiny_architecture("u2net", 3, features_per_stage=[4, 8, 8, 8], kernel_sizes=[[3, 3, 3]] * 4,
                                     strides=strides)
    network = build_network(architecture)
    pools = [[list(pool.kernel_size) for pool in rsu.pools] for rsu in network.encoder]
    assert pools == [strides[1:], strides[2:], strides[3:], []]  # RSU-5, RSU-4, RSU-3, RSU-4F
    bottom_rsu = network.encoder[-1]
    assert [block[0].dilation for block in bottom_rsu.encoder] == [(1,) * 3, (2,) * 3, (4,) * 3]
    assert bottom_rsu.bottom[0].dilation == (8,) * 3
    # The decoder stages use their level's RSU type.
    assert [len(rsu.pools) for rsu in network.decoder] == [3, 2, 1]
    x = torch.randn(1, 1, 16, 16, 16)
    assert network(x)[0].shape == (1, 2, 16, 16, 16)


def test_learns_the_box_task():
    assert dice_after_training(tiny_architecture("u2net", 2), steps=12) > 0.7  # chance ~0.25
