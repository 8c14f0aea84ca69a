"""Network cost counted on the network itself (meta device + hooks) against the plain U-Net's analytical
formulas, and for resenc against hand-countable pieces."""

from dataclasses import replace

import pytest

from autoseg.network import build_network, count_parameters
from autoseg.network.architecture import Architecture, convolution_macs, feature_map_elements, parameter_count
from autoseg.network.cost import flops_per_voxel, is_analytical, network_cost, traced_cost


def plain_3d(**overrides) -> Architecture:
    fields = dict(name="plain_unet", dimension=3, input_channels=2, num_classes=3, features_per_stage=[8, 16, 32],
                  kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    fields.update(overrides)
    return Architecture(**fields)


PLANNED_3D = Architecture("plain_unet", 3, 1, 3, [32, 64, 128, 256, 320, 320], [[1, 3, 3]] + [[3, 3, 3]] * 5,
                          [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])


@pytest.mark.parametrize("architecture, patch", [
    (plain_3d(), [8, 16, 16]),
    (plain_3d(), [24, 48, 32]),  # 3 x 3 x 2 times the reference's volume: the scaling is exact
    (plain_3d(deep_supervision=False, convs_per_stage=3), [4, 8, 8]),
    (Architecture("plain_unet", 2, 3, 4, [32, 64, 128, 256], [[3, 3]] * 4, [[1, 1], [2, 2], [2, 1], [2, 2]]),
     [64, 40]),
    (PLANNED_3D, [64, 160, 192]),  # a planned full-size network
])
def test_traced_cost_of_the_plain_unet_equals_its_analytical_formulas(architecture, patch):
    traced = traced_cost(architecture, patch)
    assert traced.feature_map_elements == feature_map_elements(architecture, patch)
    assert traced.macs == convolution_macs(architecture, patch)
    assert traced.parameters == parameter_count(architecture)
    assert network_cost(architecture, patch) == traced  # the analytical fast path


def test_optional_fields_leave_the_analytical_path():
    assert is_analytical(plain_3d())
    assert not is_analytical(plain_3d(name="resenc", blocks_per_stage=[1, 3, 4]))
    assert not is_analytical(plain_3d(blocks_per_stage=[1, 1, 1]))


def test_resenc_cost_by_hand():
    """2D, 1 input channel, features [2, 4], one residual block per stage, 16x16 patch, 2 classes.

    Convs (out voxels x in x out x 3x3 kernel, or 1x1): stem 256*1*2*9; stage 0 block (identity skip)
    2 x 256*2*2*9; stage 1 block: 64*2*4*9 + 64*4*4*9 and the 1x1 strided skip 64*2*4; transposed conv
    64*4*2*(2x2 kernel); decoder conv 256*4*2*9 (2 + 2 skip channels in); the one head 256*2*2."""
    architecture = Architecture("resenc", 2, 1, 2, [2, 4], [[3, 3]] * 2, [[1, 1], [2, 2]], convs_per_stage=1,
                                blocks_per_stage=[1, 1])
    cost = network_cost(architecture, [16, 16])
    assert cost.macs == (256 * 2 * 9 + 2 * 256 * 4 * 9 + 64 * 8 * 9 + 64 * 16 * 9 + 64 * 8
                         + 64 * 8 * 4 + 256 * 8 * 9 + 256 * 4)
    # Elements: input 256, stem 512, stage 0 2 x 512, stage 1 3 x 256 (two convs and the skip),
    # transposed 512, decoder 512, head 512.
    assert cost.feature_map_elements == 256 + 512 + 1024 + 768 + 512 + 512 + 512
    assert cost.parameters == count_parameters(build_network(architecture))
    assert flops_per_voxel(architecture, [32, 32]) == pytest.approx(2 * cost.macs / 256)


def test_resenc_costs_more_than_the_plain_unet_of_the_same_topology():
    resenc = replace(PLANNED_3D, name="resenc", convs_per_stage=1, blocks_per_stage=[1, 3, 4, 6, 6, 6])
    plain, residual = network_cost(PLANNED_3D, [64, 160, 192]), network_cost(resenc, [64, 160, 192])
    assert residual.macs > 1.3 * plain.macs and residual.parameters > 2 * plain.parameters
