"""Sliding-window prediction checked against oracles: "networks" that are known functions of their
input, so the stitched output of the whole image can be written down by hand.

The stitching itself is checked on raw logits (`softmax=False`), where a per-voxel network must be
given back exactly; the default output (softmax averaged over passes and networks) is checked with
values computed by hand from the logistic function."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from autoseg.inference.sliding_window import gaussian_importance_map, mirror_axes_combinations, window_starts
from autoseg.inference.stitching import predict_sliding_window, predict_sliding_window_mirror_sets


def times(factor: float, num_classes: int):
    """Per-voxel network: every one of num_classes output channels is factor * the (1-channel)
    input. Translation- and mirror-equivariant, so windows and flips must not change anything."""
    def network(batch: torch.Tensor) -> torch.Tensor:
        repeats = [1, num_classes] + [1] * (batch.ndim - 2)
        return factor * batch.repeat(*repeats)
    return network


def position_along_last_axis(batch: torch.Tensor) -> torch.Tensor:
    """One output channel holding each voxel's index inside its window along the last axis."""
    ramp = torch.arange(batch.shape[-1], dtype=torch.float32)
    return ramp.expand(batch.shape[0], 1, *batch.shape[2:]).clone()


def constant_logits(*values: float):
    """A network whose logits are the same `values` (one per class) at every voxel."""
    def network(batch: torch.Tensor) -> torch.Tensor:
        logits = torch.tensor(values, dtype=torch.float32).reshape(1, -1, *[1] * (batch.ndim - 2))
        return logits.expand(batch.shape[0], -1, *batch.shape[2:]).clone()
    return network


def sigmoid(value: float) -> float:
    """Probability of class 1 for logits [0, value]: softmax of two classes."""
    return 1.0 / (1.0 + math.exp(-value))


def symmetric_conv_network(num_classes: int, seed: int = 0) -> torch.nn.Module:
    """A real 3D conv net that is mirror-equivariant: every kernel is averaged over all 8 flips, and
    zero padding is the same on both sides, so flipping the input flips the output."""
    torch.manual_seed(seed)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv3d(4, num_classes, 3, padding=1)).eval()
    with torch.no_grad():
        for layer in (network[0], network[2]):
            kernel = layer.weight
            layer.weight.copy_(sum(kernel.flip([d + 2 for d in dims]) for dims in
                                   mirror_axes_combinations((0, 1, 2))) / 8)
    return network


def random_conv_network(dimension: int, num_classes: int, seed: int = 0) -> torch.nn.Module:
    """A real (border-sensitive, not mirror-equivariant) conv net; zero padding makes each window's
    output depend on where the window lies."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if dimension == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(1, 4, 3, padding=1), torch.nn.ReLU(),
                               conv(4, num_classes, 3, padding=1)).eval()


# --- window_starts ---------------------------------------------------------------------------

def test_window_starts_hand_computed_cases():
    # n = ceil((100 - 64) / 32) + 1 = 3 windows, spaced (100 - 64) / 2 = 18 apart.
    assert window_starts([100], [64], 0.5) == [[0, 18, 36]]
    assert window_starts([64], [64], 0.5) == [[0]]
    # n = ceil(96 / 32) + 1 = 4, spaced 96 / 3 = 32.
    assert window_starts([160], [64], 0.5) == [[0, 32, 64, 96]]
    # step 1: n = ceil(36 / 64) + 1 = 2 -> first at 0, last flush with the border.
    assert window_starts([100, 64], [64, 64], 1.0) == [[0, 36], [0]]
    # n = ceil(3 / 4) + 1 = 2; spacing 3 / 1.
    assert window_starts([11, 8], [8, 8], 0.5) == [[0, 3], [0]]


def test_window_starts_rejects_image_smaller_than_patch():
    with pytest.raises(ValueError, match="axis 1"):
        window_starts([64, 30], [64, 32], 0.5)


# --- gaussian_importance_map -----------------------------------------------------------------

def test_gaussian_values_by_hand():
    # patch 8: sigma 1, centre 3.5; the two middle voxels (offset 0.5) are the maximum, 1.
    # Voxel 0 (offset 3.5): exp(-(3.5^2 - 0.5^2) / 2) = exp(-6).
    weights = gaussian_importance_map([8])
    assert weights.dtype == np.float32
    assert weights[3] == pytest.approx(1.0) and weights[4] == pytest.approx(1.0)
    assert weights[0] == pytest.approx(math.exp(-6.0), rel=1e-5)
    assert weights[5] == pytest.approx(math.exp(-1.0), rel=1e-5)  # offset 1.5


def test_gaussian_positive_symmetric_peaked_and_cached():
    weights = gaussian_importance_map((9, 16, 6))
    assert weights.shape == (9, 16, 6)
    assert (weights > 0).all()
    assert weights.max() == pytest.approx(1.0)
    assert np.unravel_index(weights.argmax(), weights.shape)[0] == 4  # odd axis: exact centre
    for axis in range(3):
        np.testing.assert_allclose(weights, np.flip(weights, axis), rtol=1e-6)
    # Separable: the 3D map is the outer product of its 1D profiles.
    profiles = [gaussian_importance_map([p]) for p in (9, 16, 6)]
    np.testing.assert_allclose(weights, np.einsum("i,j,k->ijk", *profiles), rtol=1e-5)
    assert gaussian_importance_map([9, 16, 6]) is weights
    assert not weights.flags.writeable


def test_gaussian_tiny_sigma_keeps_every_weight_positive():
    weights = gaussian_importance_map([64], sigma_fraction=0.002)  # borders underflow to 0
    assert (weights > 0).all()


# --- mirror_axes_combinations ----------------------------------------------------------------

def test_mirror_axes_combinations():
    assert mirror_axes_combinations((0, 1)) == [(), (0,), (1,), (0, 1)]
    three = mirror_axes_combinations((0, 1, 2))
    assert len(three) == 8 and len(set(three)) == 8 and three[0] == () and (0, 1, 2) in three
    assert mirror_axes_combinations(()) == [()]


# --- predict_sliding_window ------------------------------------------------------------------

@pytest.mark.parametrize("spatial", [(5, 6, 7), (8, 8, 8), (13, 10, 19)],
                         ids=["smaller_than_patch", "equal_to_patch", "not_a_multiple"])
def test_per_voxel_network_gives_back_its_function_everywhere(spatial):
    image = torch.randn(1, *spatial)
    logits = predict_sliding_window([times(2.0, 3)], image, (8, 8, 8), num_classes=3,
                                    mirror_axes=(), softmax=False)
    assert logits.shape == (3, *spatial) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, 2 * image.repeat(3, 1, 1, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("softmax", [True, False], ids=["probabilities", "logits"])
def test_tta_on_mirror_equivariant_network_changes_nothing(softmax):
    image = torch.randn(1, 11, 9, 10)
    network = symmetric_conv_network(num_classes=3)
    options = dict(num_classes=3, batch_windows=2, softmax=softmax)
    without = predict_sliding_window([network], image, (8, 8, 8), mirror_axes=(), **options)
    passes = []
    counting = lambda batch: passes.append(1) or network(batch)  # noqa: E731
    with_all = predict_sliding_window([counting], image, (8, 8, 8), **options)
    torch.testing.assert_close(with_all, without, atol=1e-5, rtol=1e-5)
    windows = 2 * 2 * 2  # ceil(3 / 4) + 1, ceil(1 / 4) + 1, ceil(2 / 4) + 1
    assert len(passes) == windows / 2 * 8  # batches of 2 windows, 8 mirror passes each (3D)


def test_2d_tta_runs_four_passes():
    passes = []
    counting = lambda batch: passes.append(1) or times(1.0, 2)(batch)  # noqa: E731
    predict_sliding_window([counting], torch.zeros(1, 8, 8), (8, 8), num_classes=2)
    assert len(passes) == 4


@pytest.mark.parametrize("softmax", [True, False], ids=["probabilities", "logits"])
def test_mirror_sets_share_passes_and_each_equals_its_own_prediction(softmax):
    # The fold validation's candidate sets in 3D: off, each axis, all -> the 8 passes of "all" once,
    # and each set's result is what predicting with that set alone gives (same passes, same order).
    image = torch.randn(1, 11, 9, 10)
    network = random_conv_network(3, num_classes=3)
    passes = []
    counting = lambda batch: passes.append(1) or network(batch)  # noqa: E731
    sets = [(), (0,), (1,), (2,), None]
    options = dict(num_classes=3, batch_windows=8, softmax=softmax)
    together = predict_sliding_window_mirror_sets([counting], image, (8, 8, 8), mirror_sets=sets, **options)
    assert len(passes) == 8  # 8 windows in one batch, 8 passes
    for axes, result in zip(sets, together):
        alone = predict_sliding_window([network], image, (8, 8, 8), mirror_axes=axes, **options)
        torch.testing.assert_close(result, alone, atol=0, rtol=0)
    assert not torch.equal(together[0], together[1]) and not torch.equal(together[3], together[4])


def test_tta_averages_each_window_with_its_mirror_image():
    # Position r along x mirrored is 7 - r; their mean is 3.5 at every voxel of every window.
    image = torch.zeros(1, 3, 12)
    logits = predict_sliding_window([position_along_last_axis], image, (3, 8), num_classes=1,
                                    mirror_axes=(1,), softmax=False)
    torch.testing.assert_close(logits, torch.full((1, 3, 12), 3.5))


def test_tta_averages_softmax_not_logits():
    # Logits [0, r] with r the position along x (patch 8, one window): the mirror pass sees 7 - r.
    # Class 1 gets (sigmoid(r) + sigmoid(7 - r)) / 2, not sigmoid(3.5).
    def two_class_position(batch):
        return torch.cat([torch.zeros_like(batch[:, :1]), position_along_last_axis(batch)], dim=1)

    probabilities = predict_sliding_window([two_class_position], torch.zeros(1, 1, 8), (1, 8),
                                           num_classes=2, mirror_axes=(1,))
    expected = [(sigmoid(r) + sigmoid(7 - r)) / 2 for r in range(8)]
    np.testing.assert_allclose(probabilities[1, 0].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(probabilities.sum(0).numpy(), 1.0, rtol=1e-6)


def test_networks_are_averaged_in_probability_space():
    # Two folds: logits [0, 2] and [0, -1] everywhere -> class 1 gets (sigmoid(2) + sigmoid(-1)) / 2.
    probabilities = predict_sliding_window([constant_logits(0.0, 2.0), constant_logits(0.0, -1.0)],
                                           torch.zeros(1, 9, 10), (8, 8), num_classes=2)
    assert probabilities[1, 4, 4].item() == pytest.approx((sigmoid(2.0) + sigmoid(-1.0)) / 2, rel=1e-6)
    np.testing.assert_allclose(probabilities.sum(0).numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("spatial", [(5, 6, 7), (8, 8, 8), (13, 10, 19)],
                         ids=["smaller_than_patch", "equal_to_patch", "not_a_multiple"])
def test_probabilities_sum_to_one_on_every_voxel(spatial):
    # A voxel no window covered would sum to 0; the float16 accumulator is checked with it.
    network = random_conv_network(3, num_classes=3)
    image = torch.randn(1, *spatial)
    for dtype in (torch.float32, torch.float16):
        probabilities = predict_sliding_window([network], image, (8, 8, 8), num_classes=3,
                                               accumulate_dtype=dtype, mirror_axes=(0, 2))
        assert probabilities.shape == (3, *spatial) and probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities.sum(0), torch.ones(spatial), atol=2e-3, rtol=0)
        assert (probabilities >= 0).all()


def test_gaussian_weighting_of_overlapping_windows_by_hand():
    # x: size 12, patch 8 -> windows at 0 and 4. Voxel 5 is position 5 in the first window
    # (offset 1.5 from the centre 3.5, weight exp(-1)) and position 1 in the second (offset 2.5,
    # weight exp(-3)). Voxel 0 is covered by the first window only.
    image = torch.zeros(1, 1, 12)
    weighted = predict_sliding_window([position_along_last_axis], image, (1, 8), num_classes=1,
                                      mirror_axes=(), softmax=False)
    expected = (5 * math.exp(-1) + 1 * math.exp(-3)) / (math.exp(-1) + math.exp(-3))
    assert weighted[0, 0, 5].item() == pytest.approx(expected, rel=1e-5)
    assert weighted[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert weighted[0, 0, 11].item() == pytest.approx(7.0, rel=1e-6)
    flat = predict_sliding_window([position_along_last_axis], image, (1, 8), num_classes=1,
                                  mirror_axes=(), use_gaussian=False, softmax=False)
    assert flat[0, 0, 5].item() == pytest.approx(3.0)  # plain mean of 5 and 1


def test_image_smaller_than_patch_is_padded_equally_on_both_sides():
    # x: 4 voxels in a patch of 8 -> 2 zeros before, 2 after: the voxels sit at positions 2..5.
    logits = predict_sliding_window([position_along_last_axis], torch.zeros(1, 1, 4), (1, 8),
                                    num_classes=1, mirror_axes=(), softmax=False)
    assert logits.flatten().tolist() == [2.0, 3.0, 4.0, 5.0]


def test_networks_are_averaged_in_logit_space_without_softmax():
    image = torch.randn(1, 9, 10)
    logits = predict_sliding_window([times(2.0, 2), times(4.0, 2)], image, (8, 8), num_classes=2,
                                    softmax=False)
    torch.testing.assert_close(logits, 3 * image.repeat(2, 1, 1), atol=1e-5, rtol=1e-5)


def test_batched_windows_equal_one_at_a_time_and_progress_counts_windows():
    image = torch.randn(1, 12, 11, 12)
    network = random_conv_network(3, num_classes=2)
    calls = []
    one = predict_sliding_window([network], image, (8, 8, 8), num_classes=2, batch_windows=1,
                                 mirror_axes=(0,))
    four = predict_sliding_window([network], image, (8, 8, 8), num_classes=2, batch_windows=4,
                                  mirror_axes=(0,), progress=lambda done, total: calls.append(
                                      (done, total)))
    torch.testing.assert_close(four, one, atol=1e-6, rtol=1e-5)
    # windows per axis: ceil(4 / 4) + 1 = 2, ceil(3 / 4) + 1 = 2, 2 -> 8 windows in batches of 4.
    assert calls == [(4, 8), (8, 8)]
    channels_last = predict_sliding_window([network.to(memory_format=torch.channels_last_3d)], image,
                                           (8, 8, 8), num_classes=2, batch_windows=4, mirror_axes=(0,),
                                           channels_last=True)
    torch.testing.assert_close(channels_last, one, atol=1e-6, rtol=1e-5)


def test_float16_accumulation_and_bfloat16_autocast_stay_close_to_float32():
    image = torch.randn(1, 12, 10)
    network = random_conv_network(2, num_classes=3)
    reference = predict_sliding_window([network], image, (8, 8), num_classes=3)
    half = predict_sliding_window([network], image, (8, 8), num_classes=3,
                                  accumulate_dtype=torch.float16)
    half_logits = predict_sliding_window([network], image, (8, 8), num_classes=3, softmax=False,
                                         accumulate_dtype=torch.float16)
    torch.testing.assert_close(half_logits, predict_sliding_window([network], image, (8, 8), num_classes=3,
                                                                   softmax=False), atol=1e-2, rtol=1e-2)
    autocast = predict_sliding_window([network], image, (8, 8), num_classes=3,
                                      autocast_dtype=torch.bfloat16)
    assert half.dtype == torch.float32 and autocast.dtype == torch.float32
    torch.testing.assert_close(half, reference, atol=1e-3, rtol=0)
    torch.testing.assert_close(autocast, reference, atol=2e-2, rtol=0)


def test_float16_accumulator_keeps_the_corners_of_a_large_3d_patch():
    # A corner voxel lies in one window only, where the Gaussian of a 32^3 patch (sigma 4, centre
    # 15.5, maximum 1 at offset 0.5) is exp(-(15.5^2 - 0.5^2) / 32)^3 ~ 1.7e-10: below float16's
    # smallest value. Stored as weight / summed weight it is 1 there, not 0 / 0.
    corner = math.exp(-(15.5 ** 2 - 0.5 ** 2) / 32) ** 3
    assert gaussian_importance_map((32, 32, 32))[0, 0, 0] == pytest.approx(corner, rel=1e-4)
    probabilities = predict_sliding_window([constant_logits(0.0, 1.0)], torch.zeros(1, 40, 36, 33),
                                           (32, 32, 32), num_classes=2, mirror_axes=(),
                                           accumulate_dtype=torch.float16)
    np.testing.assert_allclose(probabilities[1].numpy(), sigmoid(1.0), atol=3e-3)  # float16: 2^-11 per addition


def test_result_is_an_ordinary_tensor_and_numpy_input_is_accepted():
    array = np.random.default_rng(0).normal(size=(1, 6, 9)).astype(np.float32)
    array.setflags(write=False)  # as np.load(mmap_mode="r") gives
    logits = predict_sliding_window([times(2.0, 1)], array, (4, 4), num_classes=1, softmax=False)
    logits.mul_(0.5)  # in place, outside inference_mode: must not raise
    np.testing.assert_allclose(logits.numpy(), array, atol=1e-5)


def test_network_output_is_checked():
    image = torch.zeros(1, 8, 8)
    with pytest.raises(ValueError, match="deep supervision"):
        predict_sliding_window([lambda x: [x, x]], image, (8, 8), num_classes=1)
    with pytest.raises(ValueError, match="num_classes=2"):
        predict_sliding_window([times(1.0, 3)], image, (8, 8), num_classes=2)


# --- a 2D patch on a volume: slice by slice --------------------------------------------------

def test_slices_2d_per_pixel_function_on_every_slice():
    image = torch.randn(1, 3, 10, 7)
    logits = predict_sliding_window([times(2.0, 2)], image, (8, 8), num_classes=2, batch_windows=3,
                                    softmax=False)
    assert logits.shape == (2, 3, 10, 7)
    torch.testing.assert_close(logits, 2 * image.repeat(2, 1, 1, 1), atol=1e-5, rtol=1e-5)


def test_slices_2d_equals_2d_sliding_window_per_slice():
    image = torch.randn(1, 3, 12, 10)
    network = random_conv_network(2, num_classes=2)
    volume = predict_sliding_window([network], image, (8, 8), num_classes=2, batch_windows=5)
    for z in range(3):
        single = predict_sliding_window([network], image[:, z], (8, 8), num_classes=2)
        torch.testing.assert_close(volume[:, z], single, atol=1e-5, rtol=1e-5)


def test_slices_2d_mirror_axes_are_the_networks_axes():
    # Mirroring x (network axis 1) of a per-voxel position ramp: the mean of r and 7 - r is 3.5.
    image = torch.zeros(1, 2, 5, 8)
    ramp = predict_sliding_window([position_along_last_axis], image, (5, 8), num_classes=1,
                                  mirror_axes=(1,), softmax=False)
    torch.testing.assert_close(ramp, torch.full((1, 2, 5, 8), 3.5))


def test_image_axes_must_match_the_patch():
    with pytest.raises(ValueError, match="3 spatial axes"):
        predict_sliding_window([times(1.0, 1)], torch.zeros(1, 8, 8), (8, 8, 8), num_classes=1)
    with pytest.raises(ValueError, match=r"2 spatial axes or a \(C, z, y, x\) volume"):
        predict_sliding_window([times(1.0, 1)], torch.zeros(1, 1, 2, 8, 8), (8, 8), num_classes=1)


def test_the_window_rules_and_their_defaults_import_without_torch():
    # Planning (time budgets) and PredictionSettings use DEFAULT_STEP_FRACTION without loading torch.
    code = ("import sys, autoseg.inference.sliding_window, autoseg.inference.case; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_probe_windows_are_the_windows_nearest_the_centre():
    from autoseg.inference.sliding_window import probe_windows

    image = np.arange(2 * 12 * 20, dtype=np.float32).reshape(2, 12, 20)
    # Windows of 8x8 at step 4: starts [0, 4] x [0, 4, 8, 12]; the centre (6, 10) is nearest (2, 8) and (2, 12)
    # from starts (0, 4), (4, 4), (0, 8), (4, 8) alike, so the first two of the sort (ties keep window order).
    windows = probe_windows(image, (8, 8), 2)
    assert windows.shape == (2, 2, 8, 8) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows[0], image[:, 0:8, 4:12])
    np.testing.assert_array_equal(windows[1], image[:, 0:8, 8:16])
    # More windows asked than the image has: repeated.
    assert len(probe_windows(image[:, :8, :8], (8, 8), 3)) == 3


def test_probe_windows_pad_a_small_image_and_slice_a_volume_for_a_2d_patch():
    from autoseg.inference.sliding_window import probe_windows

    small = np.ones((1, 4, 6), dtype=np.float32)
    window = probe_windows(small, (8, 8), 1)[0, 0]
    assert window.sum() == 24 and window[2:6, 1:7].min() == 1  # centred, zero around, as the stitching pads
    volume = np.stack([np.full((8, 8), z, dtype=np.float32) for z in range(5)])[None]
    slices = probe_windows(volume, (8, 8), 2)
    assert slices.shape == (2, 1, 8, 8)
    assert [float(s.mean()) for s in slices] == [1.0, 2.0]  # the middle slices


def test_mirror_passes_share_a_call_when_the_image_has_fewer_windows_than_a_batch():
    image = torch.randn(1, 8, 8, 7)  # one window of 8x8x8 (padded), 8 mirror passes
    network = random_conv_network(3, num_classes=2)
    batch_sizes = []

    def counting(batch):
        batch_sizes.append(len(batch))
        return network(batch)

    alone = predict_sliding_window([network], image, (8, 8, 8), num_classes=2, batch_windows=1)
    packed = predict_sliding_window([counting], image, (8, 8, 8), num_classes=2, batch_windows=3)
    torch.testing.assert_close(packed, alone, atol=1e-6, rtol=1e-5)
    assert batch_sizes == [3, 3, 2]  # 8 passes of one window, three to a call
