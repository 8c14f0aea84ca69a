"""The loss registry: each loss against a value worked out by hand, finite gradients (absent classes and
ignored voxels included), a training step that lowers it, and the plan's entry choosing it."""

import math

import pytest
import torch

from autoseg.planning.loss_choice import LOSS_PARAMETERS, loss_from_json
from autoseg.training.loss import (LOSSES, DiceCELoss, build_loss, focal_loss, generalized_dice_loss,
                                   loss_for_architecture, tversky_loss)
from autoseg.network.architecture import Architecture

# Two classes, four voxels, logits 0 -> p = 0.5 everywhere; the reference is [1, 0, 0, 0].
UNDECIDED = torch.zeros(1, 2, 4)
TARGET = torch.tensor([[[1, 0, 0, 0]]])
LOG2 = math.log(2)


def test_generalized_dice_by_hand():
    # Reference volumes: background 3, class 1 -> weights 1/9 and 1, normalised 0.1 and 0.9.
    # Intersections 0.5 * 3 = 1.5 and 0.5; sums p + g: 2 + 3 = 5 and 2 + 1 = 3.
    # GD = 2 (0.1 * 1.5 + 0.9 * 0.5) / (0.1 * 5 + 0.9 * 3) = 1.2 / 3.2 = 0.375
    for batch_dice in (True, False):
        assert generalized_dice_loss(UNDECIDED, TARGET, batch_dice).item() == pytest.approx(-0.375, abs=1e-5)


def test_tversky_by_hand():
    # Class 1: TP = 0.5, FP = 2 - 0.5 = 1.5, FN = 1 - 0.5 = 0.5; TI = 0.5 / (0.5 + 0.3 * 1.5 + 0.7 * 0.5) = 0.5 / 1.3
    assert tversky_loss(UNDECIDED, TARGET, True, alpha=0.3, beta=0.7).item() == pytest.approx(-0.5 / 1.3, abs=1e-5)
    # alpha = beta = 0.5 is the soft Dice: 2 * 0.5 / (2 + 1) = 1/3
    assert tversky_loss(UNDECIDED, TARGET, True, alpha=0.5, beta=0.5).item() == pytest.approx(-1 / 3, abs=1e-5)


def test_focal_by_hand():
    # p_t = 0.5 everywhere: -(1 - 0.5)^2 log 0.5 = 0.25 log 2; gamma 0 is the cross-entropy, log 2.
    assert focal_loss(UNDECIDED, TARGET, gamma=2.0).item() == pytest.approx(0.25 * LOG2, abs=1e-6)
    assert focal_loss(UNDECIDED, TARGET, gamma=0.0).item() == pytest.approx(LOG2, abs=1e-6)
    # A voxel labelled -1 does not count: three voxels left, same mean.
    assert focal_loss(UNDECIDED, torch.tensor([[[1, 0, -1, 0]]]), gamma=2.0).item() == pytest.approx(0.25 * LOG2)


@pytest.mark.parametrize("entry, expected", [
    ({"name": "dice_ce"}, LOG2 - 1 / 3),  # CE log 2, soft Dice of class 1: 1/3
    ({"name": "dice_ce", "weight_ce": 2.0}, 2 * LOG2 - 1 / 3),
    ({"name": "generalized_dice"}, -0.375),
    ({"name": "tversky"}, -0.5 / 1.3),
    ({"name": "focal_dice"}, 0.25 * LOG2 - 1 / 3),
])
def test_the_plan_entry_builds_the_named_loss(entry, expected):
    loss = build_loss(loss_from_json(entry, "plans.json"), batch_dice=True)
    assert loss(UNDECIDED, TARGET).item() == pytest.approx(expected, abs=1e-5)


def test_registry_and_plan_names_agree_and_default_is_dice_ce():
    assert set(LOSSES) == set(LOSS_PARAMETERS)
    assert isinstance(build_loss(None, batch_dice=True), DiceCELoss)


@pytest.mark.parametrize("name", sorted(LOSS_PARAMETERS))
def test_gradient_is_finite_with_an_absent_class_and_ignored_voxels(name):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 2, (2, 1, 4, 4))  # class 2 absent
    target[0, 0, 0, :] = -1
    build_loss(loss_from_json({"name": name}, "plans.json"), batch_dice=False)(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSS_PARAMETERS))
def test_a_training_step_lowers_the_loss(name):
    architecture = Architecture(name="plain_unet", dimension=2, input_channels=1, num_classes=2,
                                features_per_stage=[4, 8], kernel_sizes=[[3, 3]] * 2, strides=[[1, 1], [2, 2]])
    from autoseg.network import build_network

    torch.manual_seed(0)
    network = build_network(architecture)
    loss = loss_for_architecture(architecture, batch_dice=True, loss=loss_from_json({"name": name}, "plans.json"))
    images = torch.randn(2, 1, 16, 16)
    target = (images > 0.5).long()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2)
    values = []
    for _ in range(3):
        optimizer.zero_grad()
        value = loss(network(images), target)
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[-1] < values[0]
