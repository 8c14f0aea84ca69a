"""The residual-encoder U-Net: output shapes at every deep-supervision level in 2D and 3D, its blocks
(projection skips only where the shape changes), the plan's field check, and that it learns."""

import pytest
import torch

from autoseg.errors import PlanError
from autoseg.network import build_network, count_parameters
from autoseg.network.architecture import Architecture
from autoseg.network.resenc import BasicResidualBlock


def resenc_3d(**overrides) -> Architecture:
    """Anisotropic 3D: the first axis keeps full resolution at stage 1 and has a 1x3x3 kernel in stage 0."""
    fields = dict(name="resenc", dimension=3, input_channels=2, num_classes=3, features_per_stage=[4, 8, 16, 16],
                  kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], convs_per_stage=1,
                  blocks_per_stage=[1, 3, 4, 6])
    fields.update(overrides)
    return Architecture(**fields)


def resenc_2d(**overrides) -> Architecture:
    fields = dict(name="resenc", dimension=2, input_channels=1, num_classes=2, features_per_stage=[4, 8, 16],
                  kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]], convs_per_stage=1,
                  blocks_per_stage=[1, 3, 4])
    fields.update(overrides)
    return Architecture(**fields)


@pytest.mark.parametrize("architecture, patch, expected_shapes", [
    # 3D strides per axis: (1,2,2), (2,2,2), (2,2,2) -> decoder stages at 8x16x16, 8x8x8, 4x4x4.
    (resenc_3d(), [8, 16, 16], [(8, 16, 16), (8, 8, 8), (4, 4, 4)]),
    (resenc_2d(), [32, 24], [(32, 24), (16, 12)]),
])
def test_deep_supervision_outputs_at_every_level_highest_resolution_first(architecture, patch, expected_shapes):
    net = build_network(architecture)
    x = torch.randn(2, architecture.input_channels, *patch)
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(2, architecture.num_classes, *s) for s in expected_shapes]
    net.eval()
    with torch.no_grad():
        top = net(x)[0]
        net.deep_supervision = False
        single = net(x)
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, top)


def test_blocks_per_stage_and_projection_skips():
    net = build_network(resenc_2d())
    assert [len(stage) for stage in net.encoder_stages] == [1, 3, 4]
    # Stage 0's block keeps 4 channels at full resolution (the stem made them): identity skip.
    assert isinstance(net.encoder_stages[0][0].skip, torch.nn.Identity)
    # A stage's first block strides and doubles the channels: 1x1 conv skip with the stride; the others not.
    projection = net.encoder_stages[1][0].skip[0]
    assert projection.kernel_size == (1, 1) and projection.stride == (2, 2) and projection.out_channels == 8
    assert all(isinstance(block.skip, torch.nn.Identity) for block in net.encoder_stages[1][1:])
    # The decoder is PlainUNet's with one conv per stage.
    assert [len(stage) for stage in net.decoder_stages] == [1, 1]


def test_residual_block_parameters_by_hand():
    # 2D, 2 -> 4 channels, 3x3, stride 2: conv1 2*4*9 + 4 + norm 8 = 84; conv2 4*4*9 + 4 + 8 = 156;
    # skip 1x1 conv 2*4 + 4 + norm 8 = 20.
    block = BasicResidualBlock(2, 2, 4, [3, 3], [2, 2])
    assert count_parameters(block) == 84 + 156 + 20
    assert block(torch.randn(1, 2, 7, 5)).shape == (1, 4, 4, 3)  # ceil(n / 2) on both paths


def test_missing_blocks_per_stage_names_the_field():
    with pytest.raises(PlanError, match="blocks_per_stage"):
        build_network(resenc_2d(blocks_per_stage=[1, 3]))
    with pytest.raises(PlanError, match="blocks_per_stage"):
        build_network(resenc_2d(blocks_per_stage=None))


def test_resenc_learns_a_bright_square_within_a_few_seconds():
    """Tiny 2D ResEnc, the trainer's own step (SGD, Dice+CE with deep supervision): Dice of the square
    well above chance after 30 steps (an all-foreground guess scores about 0.3 here)."""
    from autoseg.training.loss import loss_for_architecture
    from autoseg.training.step import make_optimizer, train_step

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    architecture = resenc_2d(features_per_stage=[8, 8, 16], blocks_per_stage=[1, 2, 2])
    net = build_network(architecture)
    loss_function = loss_for_architecture(architecture, batch_dice=False)
    optimizer = make_optimizer(net.parameters())

    def batch(n: int = 4):
        target = torch.zeros(n, 1, 24, 24, dtype=torch.long)
        for i in range(n):
            y, x = torch.randint(2, 12, (2,), generator=generator).tolist()
            target[i, 0, y:y + 10, x:x + 10] = 1
        return target.float() + 0.3 * torch.randn(n, 1, 24, 24, generator=generator), target

    losses = [train_step(net, loss_function, optimizer, None, *batch(), None) for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    data, target = batch(8)
    net.eval()
    net.deep_supervision = False
    with torch.no_grad():
        predicted = net(data).argmax(1)
    predicted, reference = predicted == 1, target[:, 0] == 1
    score = 2 * (predicted & reference).sum().item() / (predicted.sum() + reference.sum()).item()
    assert score > 0.85, score
