"""Resampling: shape and separate-axis rules by hand, smooth-image round trip, nearest slices along
the coarse axis, label maps that keep exactly their values (the -1 marker included)."""

import numpy as np
import pytest

from autoseg.preprocessing.resampling import (nearest_source_indices, new_shape_for, resample_image,
                                              resample_probabilities, resample_segmentation, separate_axis_for)


def test_new_shape_rounds_shape_times_spacing_over_target():
    assert new_shape_for((10, 100, 103), (5.0, 0.8, 0.8), (2.5, 1.6, 1.6)) == (20, 50, 52)  # 103 / 2 = 51.5 -> 52
    assert new_shape_for((1, 4, 4), (999.0, 1.0, 1.0), (999.0, 0.5, 0.5)) == (1, 8, 8)
    assert new_shape_for([50, 512, 512], [5.0, 0.8, 0.8], [2.5, 0.8, 1.6]) == (100, 512, 256)


def test_new_shape_keeps_at_least_one_voxel_per_axis():
    # round(1 * 1 / 5) = 0 and round(2 * 0.5 / 4) = 0: a resampled axis never has 0 voxels.
    assert new_shape_for((1, 2, 64), (1.0, 0.5, 1.0), (5.0, 4.0, 1.0)) == (1, 1, 64)
    assert new_shape_for([0.4, 64.0], [1.0, 1.0], [1.0, 1.0]) == (1, 64)  # fractional median shapes too


@pytest.mark.parametrize("current, target, expected", [
    ((5.0, 0.8, 0.8), (5.0, 0.8, 0.8), 0),     # thick slices: coarse axis 0
    ((0.8, 0.8, 5.0), (1.0, 1.0, 1.0), 2),     # coarse axis wherever it is
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),  # isotropic
    ((1.0, 1.0, 2.9), (1.0, 1.0, 2.9), None),  # ratio 2.9 is below the threshold 3
    ((1.0, 1.0, 1.0), (0.5, 0.5, 3.0), 2),     # current isotropic, target anisotropic -> target's axis
    ((0.8, 5.0, 5.0), (1.0, 1.0, 1.0), None),  # two axes tie for coarsest: no single axis
])
def test_separate_axis_rule(current, target, expected):
    assert separate_axis_for(current, target) == expected


def smooth_volume(shape):
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    return (np.sin(2 * z) + np.cos(3 * y) * x + 0.5 * x * x).astype(np.float32)


def test_smooth_image_resampled_up_and_back_matches():
    image = smooth_volume((12, 16, 20))[None]
    up = resample_image(image, (18, 28, 30), separate_axis=None)
    back = resample_image(up, (12, 16, 20), separate_axis=None)
    assert up.dtype == np.float32 and up.shape == (1, 18, 28, 30)
    assert np.abs(back - image).max() < 0.02  # values span about 1.7


def test_separate_axis_takes_nearest_slice_not_a_cubic_blend():
    # Slice z holds the constant 10*z (times a smooth in-plane pattern): with nearest slices along z,
    # output slices 2k and 2k+1 are both the in-plane resize of input slice k, exactly.
    plane = smooth_volume((1, 6, 8))[0] + 1.0
    image = np.stack([10.0 * z * plane for z in range(4)])[None].astype(np.float32)
    out = resample_image(image, (8, 9, 12), separate_axis=0)
    for k in range(4):
        np.testing.assert_array_equal(out[0, 2 * k], out[0, 2 * k + 1])
    np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-6)  # input slice 0 is all zero: no blend from slice 1
    cubic_3d = resample_image(image, (8, 9, 12), separate_axis=None)
    assert np.abs(cubic_3d[0, 0]).max() > 0.5  # a 3D spline would have mixed slice 1 into slice 0


def test_nearest_source_indices_by_hand():
    assert nearest_source_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_source_indices(5, 2).tolist() == [1, 3]  # centres 1.25 and 3.75 -> 1 and 3
    assert nearest_source_indices(3, 3).tolist() == [0, 1, 2]


def test_label_map_keeps_labels_and_gains_no_values():
    seg = np.full((6, 10, 12), -1, dtype=np.int16)
    seg[1:5, 2:8, 2:10] = 0
    seg[2:4, 3:6, 3:6] = 1
    seg[2:4, 5:7, 6:9] = 2
    for new_shape, axis in [((9, 15, 18), None), ((4, 7, 8), None), ((12, 13, 17), 0)]:
        out = resample_segmentation(seg, new_shape, axis)
        assert out.shape == new_shape and out.dtype == np.int16
        assert set(np.unique(out)) == {-1, 0, 1, 2}


def test_label_map_without_background_never_invents_zero():
    # Three labels meeting at a corner: linear weights there can all be below 0.5; nnU-Net would
    # write 0 there, a value this map never had.
    seg = np.full((1, 4, 4), -1, dtype=np.int16)
    seg[0, :2, 2:] = 1
    seg[0, 2:, :] = 2
    out = resample_segmentation(seg, (1, 7, 7), separate_axis=None)
    assert set(np.unique(out)) <= {-1, 1, 2}
    assert set(np.unique(resample_segmentation(seg, (1, 3, 3), None))) <= {-1, 1, 2}


def test_label_map_separate_axis_copies_slices():
    seg = np.zeros((3, 4, 4), dtype=np.int16)
    seg[1, 1:3, 1:3] = 1
    out = resample_segmentation(seg, (6, 8, 8), separate_axis=0)
    np.testing.assert_array_equal(out[2], out[3])
    assert out[0].max() == 0 and out[1].max() == 0 and out[4].max() == 0
    assert out[2].sum() == 16  # the 2x2 square doubled in-plane: 4x4


def test_probabilities_are_linear_and_nearest_along_separate_axis():
    ramp = np.array([[[0.0, 1.0]]], dtype=np.float32)[None]  # (1, 1, 1, 2)
    out = resample_probabilities(ramp, (1, 1, 4), separate_axis=None)
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.25, 0.75, 1.0])
    two_slices = np.array([0.0, 1.0], dtype=np.float32).reshape(1, 2, 1, 1)
    along_z = resample_probabilities(two_slices, (4, 1, 1), separate_axis=0)
    assert along_z.ravel().tolist() == [0.0, 0.0, 1.0, 1.0]
