"""Attention U-Net: outputs per deep-supervision level in 2D and 3D, the gate's arithmetic, and learning."""

import pytest
import torch

from autoseg.network.attention_unet import AttentionGate
from helpers_networks import dice_after_training, outputs_with_and_without_deep_supervision, tiny_architecture


@pytest.mark.parametrize("dimension, expected_shapes", [
    (2, [(32, 32), (16, 16)]),
    (3, [(16, 16, 16), (16, 8, 8)]),  # stage 1 strides (1, 2, 2): the first axis stays at full resolution
])
def test_one_output_per_decoder_level_highest_resolution_first(dimension, expected_shapes):
    architecture = tiny_architecture("attention_unet", dimension, num_classes=3)
    outputs, single = outputs_with_and_without_deep_supervision(architecture)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *s) for s in expected_shapes]
    torch.testing.assert_close(single, outputs[0])


def test_gate_with_zero_attention_logit_halves_the_skip():
    # psi = 0 everywhere -> alpha = sigmoid(0) = 0.5 whatever x and g: the skip comes out halved.
    gate = AttentionGate(3, skip_channels=4, gating_channels=8, stride=[1, 2, 2])
    torch.nn.init.zeros_(gate.psi.weight)
    torch.nn.init.zeros_(gate.psi.bias)
    skip, gating = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 8, 4, 4, 4)
    torch.testing.assert_close(gate(skip, gating), 0.5 * skip)


def test_gate_coefficients_are_on_the_skip_grid_and_in_zero_one():
    gate = AttentionGate(2, skip_channels=4, gating_channels=8, stride=[2, 2])
    alpha = gate.coefficients(torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8))
    assert alpha.shape == (2, 1, 16, 16) and 0 <= alpha.min() and alpha.max() <= 1


def test_learns_the_box_task():
    assert dice_after_training(tiny_architecture("attention_unet", 2), steps=12) > 0.7  # chance ~0.25
