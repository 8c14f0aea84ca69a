import numpy as np
import pytest
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.spatial_transforms import SpatialTransform

from autoseg.training.augmentation import (
    MaskOutsideNonzeroTransform,
    MirrorAxesTransform,
    rotation_and_dummy_2d_for,
    spatial_transforms,
    training_transforms,
    validation_transforms,
)


def test_rotation_setup_like_nnunet():
    isotropic = rotation_and_dummy_2d_for((64, 64, 64), 3)
    assert isotropic.rotation_range_deg == ((-30, 30),) * 3 and not isotropic.do_dummy_2d
    assert isotropic.mirror_axes == (0, 1, 2)
    anisotropic = rotation_and_dummy_2d_for((20, 256, 256), 3)  # 256 / 20 > 3
    assert anisotropic.do_dummy_2d and anisotropic.rotation_range_deg == ((-180, 180), (0, 0), (0, 0))
    assert not rotation_and_dummy_2d_for((32, 96, 96), 3).do_dummy_2d  # exactly 3 is not above 3
    assert rotation_and_dummy_2d_for((512, 128), 2).rotation_range_deg == ((-15, 15),)
    square_2d = rotation_and_dummy_2d_for((256, 256), 2)
    assert square_2d.rotation_range_deg == ((-180, 180),) and square_2d.mirror_axes == (0, 1)
    rad = isotropic.rotation_range_rad[0]
    assert rad == pytest.approx((-np.pi / 6, np.pi / 6))


def labelled_batch(batch_size, read_size, channels=1, seed=0):
    """Seg with -1 outside (first x column), background 0 and labels 1, 3 in blocks; random data.
    Labels 1 and 3 so that any blending (0/3 -> 1 or 2, 1/3 -> 2) would show up as a 2."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((batch_size, 1) + read_size, np.int16)
    seg[..., 0] = -1
    centre = tuple(slice(s // 4, 3 * s // 4) for s in read_size)
    seg[(Ellipsis,) + centre] = 1
    seg[(Ellipsis,) + tuple(slice(s // 2, 3 * s // 4) for s in read_size)] = 3
    data = rng.normal(size=(batch_size, channels) + read_size).astype(np.float32)
    return {"data": data, "seg": seg, "case_ids": ["a"] * batch_size}


def force_spatial(pipeline):
    """Make every sample rotated and scaled (nnU-Net's p = 0.2 would leave most samples untouched)."""
    for transform in pipeline.transforms:
        if isinstance(transform, SpatialTransform):
            transform.p_rot_per_sample = transform.p_scale_per_sample = 1.0
    return pipeline


@pytest.mark.parametrize("patch_size", [(8, 16, 16), (16, 16), (4, 24, 24)])
def test_training_output_shapes_and_seg_values(patch_size):
    setup = rotation_and_dummy_2d_for(patch_size, len(patch_size))
    pipeline = force_spatial(training_transforms(
        patch_size, dimension=len(patch_size), rotation_range_deg=setup.rotation_range_deg,
        do_dummy_2d=setup.do_dummy_2d, mirror_axes=setup.mirror_axes, use_mask_for_norm_any=False))
    read_size = tuple(s + 6 for s in patch_size)
    np.random.seed(0)
    for seed in range(3):
        batch = pipeline(**labelled_batch(2, read_size, channels=2, seed=seed))
        assert batch["data"].shape == (2, 2) + patch_size and batch["data"].dtype == np.float32
        assert batch["seg"].shape == (2, 1) + patch_size and batch["seg"].dtype == np.int16
        # one-hot interpolation + argmax: only labels that existed, no -1 left, no blends such as 2
        assert set(np.unique(batch["seg"])) <= {0, 1, 3}
        assert batch["case_ids"] == ["a", "a"]


def test_without_spatial_change_the_centre_is_cropped():
    pipeline = Compose(spatial_transforms((2, 4, 4), [(0, 0)] * 3, (1.0, 1.0), False))
    for transform in pipeline.transforms:
        transform.p_rot_per_sample = transform.p_scale_per_sample = 0.0
    data = np.arange(4 * 8 * 8, dtype=np.float32).reshape(1, 1, 4, 8, 8)
    seg = np.zeros((1, 1, 4, 8, 8), np.int16)
    out = pipeline(data=data.copy(), seg=seg)
    # centre of 4x8x8 -> start (1, 2, 2)
    np.testing.assert_array_equal(out["data"], data[:, :, 1:3, 2:6, 2:6])


def test_dummy_2d_rotation_stays_within_each_slice():
    pipeline = Compose(spatial_transforms((3, 16, 16), [(-180, 180), (0, 0), (0, 0)],
                                          (1.0, 1.0), True))
    force_spatial(pipeline)
    data = np.zeros((1, 1, 3, 20, 20), np.float32)
    for z in range(3):
        data[0, 0, z, 2:18, 2:18] = z + 1
    np.random.seed(3)
    out = pipeline(data=data, seg=np.zeros((1, 1, 3, 20, 20), np.int16))["data"]
    assert out.shape == (1, 1, 3, 16, 16)
    for z in range(3):
        assert out[0, 0, z].max() <= z + 1 + 1e-5 and out[0, 0, z].min() >= -1e-5
        assert out[0, 0, z, 8, 8] == pytest.approx(z + 1)  # the rotation centre keeps its value


def test_mirroring_with_probability_one_flips():
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 1, 2, 3, 4)
    seg = np.arange(2 * 3 * 4, dtype=np.int16).reshape(1, 1, 2, 3, 4)
    out = MirrorAxesTransform((0, 1, 2), p_per_axis=1.0)(data=data.copy(), seg=seg.copy())
    np.testing.assert_array_equal(out["data"], data[..., ::-1, ::-1, ::-1])
    np.testing.assert_array_equal(out["seg"], seg[..., ::-1, ::-1, ::-1])
    out = MirrorAxesTransform((1,), p_per_axis=1.0)(data=data.copy(), seg=seg.copy())
    np.testing.assert_array_equal(out["data"][0, 0, 0], [[8, 9, 10, 11], [4, 5, 6, 7], [0, 1, 2, 3]])


def test_mask_sets_data_outside_nonzero_to_zero():
    data = np.full((1, 2, 2, 2), 5.0, np.float32)
    seg = np.array([[[[-1, 0], [1, -1]]]], np.int16)
    out = MaskOutsideNonzeroTransform(channels=[1])(data=data, seg=seg)
    np.testing.assert_array_equal(out["data"][0, 0], [[5, 5], [5, 5]])
    np.testing.assert_array_equal(out["data"][0, 1], [[0, 5], [5, 0]])


def test_validation_transforms_only_replace_minus_one():
    batch = labelled_batch(1, (4, 6, 6))
    data_before = batch["data"].copy()
    out = validation_transforms()(**batch)
    np.testing.assert_array_equal(out["data"], data_before)
    assert set(np.unique(out["seg"])) == {0, 1, 3} and out["seg"].dtype == np.int16


def _pipeline(patch_size):
    setup = rotation_and_dummy_2d_for(patch_size, len(patch_size))
    return training_transforms(patch_size, dimension=len(patch_size), rotation_range_deg=setup.rotation_range_deg,
                               do_dummy_2d=setup.do_dummy_2d, mirror_axes=setup.mirror_axes,
                               use_mask_for_norm_any=False).transforms


def test_training_pipeline_has_nnunets_order_and_parameters():
    steps = _pipeline((32, 32, 32))
    names = [type(t).__name__ for t in steps]
    assert names == ["SpatialTransform", "GaussianNoiseTransform", "GaussianBlurTransform",
                     "BrightnessMultiplicativeTransform", "ContrastAugmentationTransform",
                     "SimulateLowResolutionTransform", "GammaTransform", "GammaTransform", "MirrorAxesTransform",
                     "RemoveLabelTransform", "FinalizeBatchTransform"]
    spatial, noise, blur, brightness, contrast, low_res, inverted_gamma, gamma, mirror = steps[:9]
    thirty_degrees = (-np.pi / 6, np.pi / 6)
    for angle in (spatial.angle_x, spatial.angle_y, spatial.angle_z):  # every axis, up to 30 degrees
        assert angle == pytest.approx(thirty_degrees)
    assert spatial.scale == (0.7, 1.4) and not spatial.independent_scale_for_each_axis
    assert (spatial.p_rot_per_sample, spatial.p_scale_per_sample, spatial.p_rot_per_axis) == (0.2, 0.2, 1)
    assert not spatial.do_elastic_deform and not spatial.random_crop  # centre crop of the enlarged read
    assert spatial.patch_size == (32, 32, 32) and spatial.border_cval_seg == -1
    assert (noise.noise_variance, noise.p_per_sample) == ((0.0, 0.1), 0.1)
    assert (blur.blur_sigma, blur.p_per_sample, blur.p_per_channel) == ((0.5, 1.0), 0.2, 0.5)
    assert (brightness.multiplier_range, brightness.p_per_sample) == ((0.75, 1.25), 0.15)
    assert (contrast.contrast_range, contrast.p_per_sample, contrast.preserve_range) == ((0.75, 1.25), 0.15, True)
    assert (low_res.zoom_range, low_res.p_per_sample, low_res.p_per_channel) == ((0.5, 1.0), 0.25, 0.5)
    assert low_res.ignore_axes is None
    assert (inverted_gamma.invert_image, inverted_gamma.p_per_sample, inverted_gamma.gamma_range) == \
        (True, 0.1, (0.7, 1.5))
    assert (gamma.invert_image, gamma.p_per_sample, gamma.gamma_range) == (False, 0.3, (0.7, 1.5))
    assert inverted_gamma.retain_stats and gamma.retain_stats
    assert (mirror.axes, mirror.p_per_axis) == ((0, 1, 2), 0.5)


def test_anisotropic_3d_patch_is_augmented_in_plane():
    steps = _pipeline((8, 64, 64))  # 64 / 8 > 3: slice-wise
    names = [type(t).__name__ for t in steps]
    assert names[:3] == ["FoldFirstAxisIntoChannels", "SpatialTransform", "UnfoldFirstAxisFromChannels"]
    spatial = steps[1]
    assert spatial.patch_size == (64, 64)  # a 2D transform on each slice
    assert spatial.angle_x == pytest.approx((-np.pi, np.pi))
    low_res = next(t for t in steps if type(t).__name__ == "SimulateLowResolutionTransform")
    assert low_res.ignore_axes == (0,)  # the thick axis keeps its resolution
    assert next(t for t in steps if isinstance(t, MirrorAxesTransform)).axes == (0, 1, 2)
