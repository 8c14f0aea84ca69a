"""Large inference tiles: the tile geometry, the tile-size chooser, the forward-only memory estimate,
and the two tile modes of `predict_probabilities` (patch mode must give today's output exactly).

The stitching is checked with oracle networks (`2 * x` in logits space, softmax off): whatever the
tile size and overlap, the stitched output of a per-voxel network is the network applied to the whole
image."""

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.inference.case import PredictionSettings, choose_tiling, predict_probabilities
from autoseg.inference.model import TrainedModel
from autoseg.inference.sliding_window import (choose_tile_size, flat_top_profile, padded_shape, tile_overlap,
                                              tile_starts)
from autoseg.inference.stitching import predict_sliding_window
from autoseg.network.architecture import Architecture, forward_peak_elements
from autoseg.network.unet import build_plain_unet
from autoseg.planning.plans import Plans


def twice(batch: torch.Tensor) -> torch.Tensor:
    """Per-voxel network in logits space: one output class per input channel, 2 * the input."""
    return 2.0 * batch


# --- geometry ------------------------------------------------------------------------------------

def test_tile_starts_overlap_at_least_the_margin_and_cover_the_image():
    # 300 voxels, tiles of 160 at least 16 apart: ceil(140 / 144) + 1 = 2 tiles, flush with both ends.
    assert tile_starts([300], [160], [16]) == [[0, 140]]
    # 100 voxels, tiles of 40 overlapping by 8: steps of at most 32 -> ceil(60 / 32) + 1 = 3 tiles.
    assert tile_starts([100, 40], [40, 40], [8, 8]) == [[0, 30, 60], [0]]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts([100], [40], [40])


def test_flat_top_profile_is_one_inside_and_falls_to_exp_minus_8_at_the_border():
    profile = flat_top_profile(40, 8)
    assert np.all(profile[8:32] == 1.0)
    assert profile[0] == profile[-1] == pytest.approx(np.exp(-8.0), rel=1e-5)
    # 2 of the 8 voxels out from the border: (8 - 2) / (8 / 4) = 3 sigma.
    assert profile[2] == pytest.approx(np.exp(-4.5), rel=1e-5)
    assert np.all(np.diff(profile[:9]) > 0)
    assert np.all(flat_top_profile(12, 0) == 1.0)


def test_tile_overlap_is_at_most_half_the_training_patch():
    assert tile_overlap([8, 64, 64], 16) == [4, 16, 16]
    with pytest.raises(ValueError):
        tile_overlap([8, 64], -1)


# --- the oracle: any tile, any overlap -----------------------------------------------------------

@pytest.mark.parametrize("shape, tile, overlap", [
    ((2, 37, 23, 19), (16, 16, 8), (4, 4, 2)),    # odd shape, several tiles per axis
    ((1, 37, 23, 19), (32, 16, 16), (0, 8, 3)),   # no overlap on one axis
    ((1, 5, 7, 3), (8, 8, 8), (4, 4, 4)),         # volume smaller than one tile: padded, cut back
    ((1, 20, 16, 16), (20, 16, 16), (4, 4, 4)),   # exactly one tile
    ((2, 29, 41), (16, 24), (5, 7)),              # 2D image
    ((1, 3, 29, 41), (16, 16), (8, 2)),           # 2D tiles on a volume, slice by slice
])
@pytest.mark.parametrize("use_gaussian", [True, False])
def test_twice_network_gives_back_twice_its_input_for_any_tiling(shape, tile, overlap, use_gaussian):
    image = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    logits = predict_sliding_window([twice], image, tile, overlap=overlap, num_classes=shape[0], softmax=False,
                                    mirror_axes=(), use_gaussian=use_gaussian, batch_windows=3)
    assert logits.shape == image.shape
    np.testing.assert_allclose(logits.numpy(), 2.0 * image.numpy(), rtol=1e-6, atol=1e-6)


def test_twice_network_with_mirror_passes_and_two_networks():
    image = torch.randn((1, 21, 18, 30), generator=torch.Generator().manual_seed(1))
    logits = predict_sliding_window([twice, lambda batch: 4.0 * batch], image, (16, 16, 16), overlap=(6, 6, 6),
                                    num_classes=1, softmax=False)
    np.testing.assert_allclose(logits.numpy(), 3.0 * image.numpy(), rtol=1e-6, atol=1e-6)


# --- the tile-size chooser ---------------------------------------------------------------------

def test_chooser_computes_the_fewest_voxels_not_the_largest_tile():
    # 300 voxels, patch 64, downsampling 32, overlap 16. Voxels computed (tiles x tile): 64 -> 6 x 64 = 384,
    # 96 -> 4 x 96 = 384, 128 -> 3 x 128 = 384, 160 -> 2 x 160 = 320, 192 -> 384, 256 -> 512, 288 -> 576,
    # 320 (the image zero-padded to the next multiple of 32) -> 1 x 320 = 320: as few as 160, in one call.
    unlimited = 10**12
    assert choose_tile_size([300], [64], [32], [16], lambda tile: tile[0], unlimited) == [320]
    # In batches of 2 one tile of 320 takes 640 slots: two of 160 fill the batch.
    assert choose_tile_size([300], [64], [32], [16], lambda tile: tile[0], unlimited, batch=2) == [160]
    # A budget of 100 leaves 64 and 96 (384 voxels each): the larger one, fewer network calls.
    assert choose_tile_size([300], [64], [32], [16], lambda tile: tile[0], 100) == [96]
    # Not even the patch fits: the patch (batch size 1 is the caller's last resort).
    assert choose_tile_size([300], [64], [32], [16], lambda tile: tile[0], 10) == [64]


def test_chooser_fills_whole_batches():
    # 40 voxels, patch 16, downsampling 4, overlap 8. One at a time: the whole image (40 computed).
    assert choose_tile_size([40], [16], [4], [8], lambda tile: 0, 1) == [40]
    # In batches of 2: 24 -> 2 tiles, 48 computed; 40 -> 1 tile in a batch of 2 slots, 80; 16 -> 4 tiles, 64;
    # 20 -> 3 tiles, 4 slots, 80; 28 -> 2 tiles, 56.
    assert choose_tile_size([40], [16], [4], [8], lambda tile: 0, 1, batch=2) == [24]
    # The budget holds the whole batch: two tiles of 24 need 48 > 40, so the patch (4 tiles, 64).
    assert choose_tile_size([40], [16], [4], [8], lambda tile: tile[0], 40, batch=2) == [16]


def test_chooser_respects_divisibility_minimum_maximum_and_budget():
    image, patch, downsampling, overlap = [40, 100, 130], [16, 32, 32], [4, 16, 16], [8, 16, 16]
    budgets = [16 * 32 * 32, 20 * 64 * 64, 40 * 96 * 128, 10**9]
    for budget in budgets:
        tile = choose_tile_size(image, patch, downsampling, overlap, lambda t: int(np.prod(t)), budget)
        assert np.prod(tile) <= budget
        for size, low, step, chosen in zip(image, patch, downsampling, tile):
            assert low <= chosen < size + step and chosen % step == 0
    # Plenty of memory: the whole image on z (40 = 10 x 4); 100 and 130 are no multiples of 16, so the
    # tile that computes the fewest voxels: 100 -> 1 x 112 (2 x 64 = 128), 130 -> 1 x 144 (2 x 80 = 160).
    assert choose_tile_size(image, patch, downsampling, overlap, lambda t: 0, 10**9) == [40, 112, 144]
    # In batches of 2: two tiles of 40 x 112 x 80 (716,800 voxels) fill a batch; four of 40 x 64 x 80 take
    # 819,200, one of 40 x 112 x 144 in a half-empty batch 2 x 645,120.
    assert choose_tile_size(image, patch, downsampling, overlap, lambda t: 0, 10**9, batch=2) == [40, 112, 80]
    with pytest.raises(ValueError, match="pad it first"):
        choose_tile_size([10, 100, 130], patch, downsampling, overlap, lambda t: 0, 10**9)


def test_forward_peak_elements_hand_computed():
    architecture = Architecture(name="plain_unet", dimension=2, input_channels=1, num_classes=2,
                                features_per_stage=[4, 8], kernel_sizes=[[3, 3], [3, 3]],
                                strides=[[1, 1], [2, 2]], deep_supervision=False)
    # Maps: stage 0 4 x 64 = 256, stage 1 8 x 16 = 128. Encoder peak 3 x 256; decoder stage 0:
    # concat 2 x 256 + block in, conv, norm 3 x 256 + the upsampled bottleneck 128 = 1408; + input 64.
    assert forward_peak_elements(architecture, [8, 8]) == 1408 + 64


# --- the modes in predict_probabilities ----------------------------------------------------------

ARCHITECTURE = Architecture(name="plain_unet", dimension=3, input_channels=1, num_classes=3,
                            features_per_stage=[2, 4], kernel_sizes=[[3, 3, 3]] * 2,
                            strides=[[1, 1, 1], [2, 2, 2]], deep_supervision=False)


def tiny_model(networks) -> TrainedModel:
    plans = Plans.from_json({
        "schema_version": 1, "dataset_name": "Tiles", "fingerprint_signature": "tiles",
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "b"},
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "original_median_spacing": [1.0, 1.0, 1.0], "original_median_shape": [12.0, 20.0, 22.0],
        "intensity_per_channel": {"0": {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -4.0, "max": 4.0,
                                        "percentile_00_5": -3.0,
                                        "percentile_99_5": 3.0}},
        "gpu_memory_gb": 8.0,
        "configurations": {"3d_fullres": {
            "dimension": 3, "spacing": [1.0, 1.0, 1.0], "median_shape": [12.0, 20.0, 22.0],
            "patch_size": [8, 8, 8], "batch_size": 2, "batch_dice": False, "normalization": ["zscore"],
            "use_mask_for_norm": [False], "architecture": ARCHITECTURE.to_json(), "estimated_memory_gb": 0.1,
            "data_identifier": "3d_fullres", "previous_stage": None, "next_stage": None,
            "inherits_from": None}}})
    return TrainedModel(plans, "3d_fullres", plans.configuration("3d_fullres"), networks, ["tiles"],
                        torch.device("cpu"), [0, 1, 2])


def test_patch_mode_is_todays_sliding_window_exactly():
    torch.manual_seed(0)
    network = build_plain_unet(ARCHITECTURE).eval()
    data = np.random.default_rng(0).standard_normal((1, 10, 12, 13)).astype(np.float32)
    settings = PredictionSettings(tile_mode="patch", batch_windows=2)
    tiling = choose_tiling(tiny_model([network]), data.shape[1:], settings)
    assert (tiling.window, tiling.overlap) == ([8, 8, 8], None)
    probabilities = predict_probabilities(tiny_model([network]), data, settings)
    today = predict_sliding_window([network], torch.from_numpy(data), [8, 8, 8], num_classes=3, step_fraction=0.5,
                                   mirror_axes=None, batch_windows=2)
    assert torch.equal(probabilities, today)


def test_large_mode_covers_the_image_with_one_tile_and_agrees_with_patch_mode_on_a_per_voxel_network():
    def per_voxel(batch):
        return torch.cat([batch, -batch, 0.5 * batch], dim=1)

    data = np.random.default_rng(1).standard_normal((1, 12, 20, 22)).astype(np.float32)
    large = PredictionSettings(tile_mode="large", batch_windows=1)
    tiling = choose_tiling(tiny_model([per_voxel]), data.shape[1:], large)
    # Multiples of the downsampling (2) up to the image: the whole image; overlap min(16, patch 8 / 2).
    assert tiling.window == [12, 20, 22] and tiling.overlap == [4, 4, 4]
    patch = predict_probabilities(tiny_model([per_voxel]), data, PredictionSettings(tile_mode="patch"))
    np.testing.assert_allclose(predict_probabilities(tiny_model([per_voxel]), data, large).numpy(), patch.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_large_mode_on_a_cpu_cuts_the_image_into_whole_batches():
    data_shape = (12, 20, 22)
    tiling = choose_tiling(tiny_model([twice]), data_shape, PredictionSettings(tile_mode="large", batch_windows=2))
    # One tile of the whole image fills half a batch (2 x 5280 voxel slots); two tiles of 12 rows
    # (overlap >= 4) compute 2 x 12 x 12 x 22 = 6336, fewer than two of 8 slices (7040) or 14 columns (6720).
    assert tiling.window == [12, 12, 22] and tiling.batch_windows == 2
    # With mirror TTA the 8 passes of one tile fill the batches already: the whole image, in one tile.
    mirrored = choose_tiling(tiny_model([twice]), data_shape, PredictionSettings(tile_mode="large", batch_windows=2),
                             mirror_passes=8)
    assert mirrored.window == [12, 20, 22]


def test_patch_mode_is_the_default():
    assert PredictionSettings().tile_mode == "patch"


def test_unknown_tile_mode_is_refused():
    with pytest.raises(AutosegError, match="tile mode 'huge'"):
        PredictionSettings(tile_mode="huge")


def test_padded_image_smaller_than_patch_gets_the_patch():
    image = padded_shape([5, 40, 40], [8, 16, 16])
    assert image == [8, 40, 40]
    assert choose_tile_size(image, [8, 16, 16], [2, 2, 2], [4, 8, 8], lambda t: 0, 1) == [8, 40, 40]


def test_predict_refuses_an_unknown_tile_mode_before_loading_models(tmp_path):
    from typer.testing import CliRunner

    from autoseg.cli import app

    result = CliRunner().invoke(app, ["--home", str(tmp_path), "predict", str(tmp_path), str(tmp_path / "out"),
                                      "--tile-mode", "huge"])
    assert result.exit_code != 0
    assert "tile mode 'huge'" in result.output
