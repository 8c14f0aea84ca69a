"""Normalization schemes against values computed by hand on a few voxels."""

import numpy as np
import pytest

from autoseg.errors import DatasetError, PlanError
from autoseg.fingerprint import ChannelIntensity
from autoseg.preprocessing.normalization import normalize

CT_STATS = {"0": {"mean": 100.0, "std": 50.0, "median": 90.0, "min": -1500.0, "max": 3000.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}}


def four_voxels(values):
    return np.asarray(values, dtype=np.float32).reshape(1, 1, 1, 4)


def test_ct_clips_to_dataset_percentiles_then_uses_dataset_mean_and_std():
    out = normalize(four_voxels([-2000, 0, 50, 3000]), ["ct"], [False], CT_STATS, None)
    # clip -> [-1000, 0, 50, 1000]; (x - 100) / 50
    np.testing.assert_allclose(out.ravel(), [-22.0, -2.0, -1.0, 18.0])


def test_ct_accepts_channel_intensity_objects():
    stats = {"0": ChannelIntensity(mean=100.0, std=50.0, median=90.0, min=-1500.0, max=3000.0,
                                   percentile_00_5=-1000.0, percentile_99_5=1000.0)}
    out = normalize(four_voxels([-2000, 0, 50, 3000]), ["ct"], [False], stats, None)
    np.testing.assert_allclose(out.ravel(), [-22.0, -2.0, -1.0, 18.0])


def test_masked_zscore_uses_inside_statistics_and_zeroes_outside():
    mask = np.array([False, False, True, True]).reshape(1, 1, 4)
    out = normalize(four_voxels([7, -3, 2, 4]), ["zscore"], [True], {}, mask)
    np.testing.assert_allclose(out.ravel(), [0.0, 0.0, -1.0, 1.0])  # inside: mean 3, std 1


def test_unmasked_zscore_uses_the_whole_image():
    out = normalize(four_voxels([1, 3, 1, 3]), ["zscore"], [False], {}, None)
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0, -1.0, 1.0])


def test_constant_image_does_not_become_nan():
    out = normalize(four_voxels([5, 5, 5, 5]), ["zscore"], [False], {}, None)
    np.testing.assert_array_equal(out.ravel(), [0.0, 0.0, 0.0, 0.0])


def test_rgb_to_0_1_divides_by_255_and_rejects_other_ranges():
    out = normalize(four_voxels([0, 51, 255, 102]), ["rgb_to_0_1"], [False], {}, None)
    np.testing.assert_allclose(out.ravel(), [0.0, 0.2, 1.0, 0.4])
    with pytest.raises(DatasetError, match="outside 0..255"):
        normalize(four_voxels([0, 51, 256, 102]), ["rgb_to_0_1"], [False], {}, None)


def test_channels_get_their_own_scheme_and_none_keeps_values():
    data = np.concatenate([four_voxels([-2000, 0, 50, 3000]), four_voxels([1, 2, 3, 4])])
    out = normalize(data, ["ct", "none"], [False, False], CT_STATS, None)
    np.testing.assert_allclose(out[0].ravel(), [-22.0, -2.0, -1.0, 18.0])
    np.testing.assert_array_equal(out[1].ravel(), [1, 2, 3, 4])


def test_in_place_normalization_writes_into_the_input():
    data = four_voxels([1, 3, 1, 3])
    out = normalize(data, ["zscore"], [False], {}, None, out=data)
    assert out is data and data.ravel().tolist() == [-1.0, 1.0, -1.0, 1.0]


def test_plan_errors_name_the_problem():
    with pytest.raises(PlanError, match="unknown scheme"):
        normalize(four_voxels([1, 2, 3, 4]), ["minmax"], [False], {}, None)
    with pytest.raises(PlanError, match="channel 0"):
        normalize(four_voxels([1, 2, 3, 4]), ["ct"], [False], {}, None)
    with pytest.raises(PlanError, match="2 schemes"):
        normalize(four_voxels([1, 2, 3, 4]), ["ct", "ct"], [False, False], CT_STATS, None)
