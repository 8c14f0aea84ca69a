"""The U-Net builder: output shapes per deep-supervision level, registry errors, parameter count by
hand, and the planner's activation estimate (`feature_map_elements`) against hooked conv outputs."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from autoseg.errors import PlanError
from autoseg.network import NETWORK_BUILDERS, build_network, count_parameters
from autoseg.network.architecture import ARCHITECTURES, Architecture, feature_map_elements, parameter_count


def arch_3d(**overrides) -> Architecture:
    """Anisotropic 3D: the first axis keeps full resolution (stride 1) and a 1x3x3 kernel in stage 0."""
    fields = dict(name="plain_unet", dimension=3, input_channels=2, num_classes=3,
                  features_per_stage=[8, 16, 32],
                  kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    fields.update(overrides)
    return Architecture(**fields)


def arch_2d(**overrides) -> Architecture:
    fields = dict(name="plain_unet", dimension=2, input_channels=1, num_classes=2,
                  features_per_stage=[8, 16, 32], kernel_sizes=[[3, 3]] * 3,
                  strides=[[1, 1], [2, 2], [2, 2]])
    fields.update(overrides)
    return Architecture(**fields)


@pytest.mark.parametrize("architecture, patch, expected_shapes", [
    # 3D strides per axis: stage1 (1,2,2), stage2 (2,2,2) -> decoder stages at (8,16,16) and (8,8,8).
    (arch_3d(), [8, 16, 16], [(8, 16, 16), (8, 8, 8)]),
    (arch_2d(), [32, 24], [(32, 24), (16, 12)]),
])
def test_deep_supervision_outputs_are_highest_resolution_first(architecture, patch, expected_shapes):
    net = build_network(architecture)
    x = torch.randn(2, architecture.input_channels, *patch)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == architecture.num_stages - 1
    assert [tuple(o.shape) for o in outputs] == [(2, architecture.num_classes, *s) for s in expected_shapes]

    net.deep_supervision = False  # the inference switch
    single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, architecture.num_classes, *patch)
    # Same weights, same input: the full-resolution output does not depend on the switch.
    net.eval()
    net.deep_supervision = True
    with torch.no_grad():
        with_ds = net(x)[0]
        net.deep_supervision = False
        without_ds = net(x)
    torch.testing.assert_close(with_ds, without_ds)


def test_architecture_without_deep_supervision_returns_one_tensor():
    net = build_network(arch_2d(deep_supervision=False))
    out = net(torch.randn(1, 1, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 16, 16)


def test_unknown_architecture_name_lists_known_ones():
    with pytest.raises(PlanError, match="resenc_unet.*attention_unet.*plain_unet.*resenc"):
        build_network(arch_2d(name="resenc_unet"))
    assert set(NETWORK_BUILDERS) == set(ARCHITECTURES)


def test_inconsistent_architecture_names_the_field():
    with pytest.raises(PlanError, match="kernel_sizes"):
        build_network(arch_3d(kernel_sizes=[[3, 3, 3]] * 2))
    with pytest.raises(PlanError, match=r"strides\[1\]"):
        build_network(arch_3d(strides=[[1, 1, 1], [2, 2], [2, 2, 2]]))


def test_parameter_count_by_hand():
    # 2D, 1 -> [2, 4] features, one conv per stage, 2 classes:
    # enc0 conv 1->2 3x3: 18+2, norm 2+2 -> 24 | enc1 conv 2->4 3x3: 72+4, norm 8 -> 84
    # up 4->2 2x2 transposed: 32+2 -> 34 | dec conv (2+2)->2 3x3: 72+2, norm 4 -> 78 | head 2->2 1x1: 4+2 -> 6
    tiny = arch_2d(input_channels=1, num_classes=2, features_per_stage=[2, 4],
                   kernel_sizes=[[3, 3]] * 2, strides=[[1, 1], [2, 2]], convs_per_stage=1)
    assert count_parameters(build_network(tiny)) == 24 + 84 + 34 + 78 + 6


def test_he_initialisation_scale_and_zero_bias():
    net = build_network(arch_3d(features_per_stage=[32, 64, 128]))
    conv = net.encoder_stages[2][1][0]  # 128 <- 128 channels, 3x3x3: fan_in = 3456
    expected_std = (2 / (1 + 1e-2**2) / (128 * 27)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


def hooked_feature_map_elements(net: nn.Module, architecture: Architecture, patch: list[int]) -> int:
    """Elements of every conv / transposed conv / head output for one sample, plus the input itself
    (the estimate counts it too)."""
    counted = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: counted.append(out.numel()))
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))]
    with torch.no_grad():
        net(torch.zeros(1, architecture.input_channels, *patch))
    for hook in hooks:
        hook.remove()
    return sum(counted) + architecture.input_channels * int(torch.tensor(patch).prod())


@pytest.mark.parametrize("architecture, patch", [
    (arch_3d(), [8, 16, 16]),
    (arch_3d(deep_supervision=False, convs_per_stage=3), [4, 8, 8]),
    (arch_2d(), [32, 24]),
    (arch_2d(deep_supervision=False), [16, 16]),
])
def test_activation_estimate_matches_hooked_conv_outputs(architecture, patch):
    hooked = hooked_feature_map_elements(build_network(architecture), architecture, patch)
    estimate = feature_map_elements(architecture, patch)
    assert abs(estimate - hooked) / hooked < 0.10, (estimate, hooked)


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, autoseg.network; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("architecture", [
    arch_3d(), arch_2d(), arch_3d(convs_per_stage=3, deep_supervision=False),
    arch_2d(input_channels=4, num_classes=5, features_per_stage=[32, 64, 128, 256], kernel_sizes=[[3, 3]] * 4,
            strides=[[1, 1], [2, 2], [2, 1], [2, 2]]),
])
def test_parameter_count_from_the_architecture_alone_matches_the_built_network(architecture):
    assert parameter_count(architecture) == count_parameters(build_network(architecture))
