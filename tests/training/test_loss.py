"""Dice + CE loss, deep supervision weights and target downsampling, with values worked out by hand."""

import pytest
import torch
import torch.nn.functional as F

from autoseg.training.loss import (DeepSupervisionLoss, DiceCELoss, build_training_loss, cross_entropy_loss,
                                   deep_supervision_weights, downsample_target, soft_dice_loss)

CONFIDENT = 30.0  # logit margin: softmax is 1 - O(e^-30), i.e. a hard 0/1 prediction


def confident_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *spatial) labels -> (B, C, *spatial) logits that predict exactly these labels."""
    one_hot = F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()
    return CONFIDENT * one_hot


def three_class_target() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 3, (2, 1, 4, 6, 6))


def test_perfect_prediction_is_at_the_minimum_and_a_wrong_one_is_high():
    target = three_class_target()
    perfect = confident_logits(target, 3)
    wrong = confident_logits((target + 1) % 3, 3)
    for batch_dice in (True, False):
        assert soft_dice_loss(perfect, target, batch_dice).item() == pytest.approx(-1.0, abs=1e-5)
        assert soft_dice_loss(wrong, target, batch_dice).item() == pytest.approx(0.0, abs=1e-5)
    assert cross_entropy_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_entropy_loss(wrong, target).item() == pytest.approx(CONFIDENT, rel=1e-4)
    loss = DiceCELoss(batch_dice=True)
    assert loss(perfect, target).item() == pytest.approx(-1.0, abs=1e-5)
    assert loss(wrong, target).item() == pytest.approx(CONFIDENT, rel=1e-3)


def test_soft_dice_of_an_undecided_prediction():
    # Two classes, logits 0 -> p(fg) = 0.5 everywhere; gt fg = [1, 0]:
    # dice = 2 * 0.5 / (1 + 1) = 0.5
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1, 0]]]])
    assert soft_dice_loss(logits, target, batch_dice=False).item() == pytest.approx(-0.5, abs=1e-5)


def test_batch_dice_and_per_sample_dice_differ_as_computed_by_hand():
    # Two classes, 4 voxels per sample (2D, 1x4), hard predictions.
    # sample 0: gt fg [1,1,0,0], pred fg [1,1,0,0] -> I=2, |g|=2, |p|=2 -> dice 1
    # sample 1: gt fg [1,1,1,1], pred fg [1,0,0,0] -> I=1, |g|=4, |p|=1 -> dice 2/5 = 0.4
    # per sample: mean(1, 0.4) = 0.7;  batch: 2*(2+1) / ((2+4) + (2+1)) = 6/9
    target = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).reshape(2, 1, 1, 4)
    predicted = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]).reshape(2, 1, 1, 4)
    logits = confident_logits(predicted, 2)
    assert soft_dice_loss(logits, target, batch_dice=False).item() == pytest.approx(-0.7, abs=1e-5)
    assert soft_dice_loss(logits, target, batch_dice=True).item() == pytest.approx(-6 / 9, abs=1e-5)


def test_label_minus_one_and_ignore_mask_exclude_voxels():
    # Correct everywhere except 3 voxels; labelling those -1 (or masking them) restores the minimum.
    target = three_class_target()
    predicted = target.clone()
    predicted[0, 0, 0, 0, :3] = (target[0, 0, 0, 0, :3] + 1) % 3
    logits = confident_logits(predicted, 3)
    loss = DiceCELoss(batch_dice=False)
    assert loss(logits, target).item() > -0.9
    with_minus_one = target.clone()
    with_minus_one[0, 0, 0, 0, :3] = -1
    assert loss(logits, with_minus_one).item() == pytest.approx(-1.0, abs=1e-5)
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[0, 0, 0, 0, :3] = True
    assert loss(logits, target, ignore_mask=mask).item() == pytest.approx(-1.0, abs=1e-5)
    # Everything ignored: CE is 0, not NaN.
    assert cross_entropy_loss(logits, torch.full_like(target, -1)).item() == 0.0


def test_deep_supervision_weights_for_five_outputs():
    assert deep_supervision_weights(5) == pytest.approx([0.5333, 0.2667, 0.1333, 0.0667, 0.0], abs=1e-3)
    assert deep_supervision_weights(2) == pytest.approx([1.0, 0.0])
    assert deep_supervision_weights(1) == [1.0]


def test_downsample_target_picks_pixel_centres():
    # 4x4 -> 2x2 nearest-exact picks source index floor((i + 0.5) * 2) = 1, 3 on each axis.
    target = torch.arange(16).reshape(1, 1, 4, 4)
    (half,) = downsample_target(target, [(2, 2)])
    assert half.tolist() == [[[[5, 7], [13, 15]]]]
    assert half.dtype == target.dtype


def test_downsample_target_shapes_and_label_values():
    torch.manual_seed(1)
    target = torch.tensor([0, 2, 5, -1])[torch.randint(0, 4, (2, 1, 8, 16, 16))].to(torch.int16)
    shapes = [(8, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2)]
    resized = downsample_target(target, shapes)
    assert [tuple(t.shape) for t in resized] == [(2, 1, *s) for s in shapes]
    assert resized[0] is target
    for t in resized:
        assert t.dtype == torch.int16
        assert set(t.unique().tolist()) <= {0, 2, 5, -1}


def test_deep_supervision_loss_downsamples_and_skips_the_zero_weight_output():
    target = three_class_target()  # (2, 1, 4, 6, 6)
    shapes = [(4, 6, 6), (4, 3, 3), (2, 3, 3)]
    outputs = [confident_logits(t, 3) for t in downsample_target(target, shapes)]
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=True), deep_supervision_weights(3))
    assert loss(outputs, target).item() == pytest.approx(-1.0, abs=1e-5)
    # The lowest resolution has weight 0: a garbage prediction there changes nothing.
    outputs[-1] = torch.randn_like(outputs[-1])
    assert loss(outputs, target).item() == pytest.approx(-1.0, abs=1e-5)
    # Weights (1, 1/2, 0) / 1.5 = (2/3, 1/3, 0). A wrong highest-resolution output has DiceCE of
    # about 30 (CE) + 0 (Dice); the correct middle one -1.
    outputs[0] = confident_logits((target + 1) % 3, 3)
    expected = 2 / 3 * (CONFIDENT + 0.0) + 1 / 3 * (-1.0)
    assert loss(outputs, target).item() == pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="2 outputs but 3"):
        loss(outputs[:2], target)


def test_build_training_loss_with_and_without_deep_supervision():
    assert isinstance(build_training_loss(batch_dice=False, n_outputs=1), DiceCELoss)
    ds = build_training_loss(batch_dice=True, n_outputs=4)
    assert isinstance(ds, DeepSupervisionLoss) and ds.weights == pytest.approx(deep_supervision_weights(4))


def test_loss_is_float32_and_differentiable_under_bf16_autocast():
    target = three_class_target()
    logits = torch.randn(2, 3, 4, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = DiceCELoss(batch_dice=False)(logits.to(torch.bfloat16), target)
    assert value.dtype == torch.float32
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_target_without_channel_axis_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        soft_dice_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), batch_dice=True)
