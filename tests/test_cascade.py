"""The 3d_lowres -> 3d_cascade_fullres cascade: its building blocks, then a whole small task through the CLI.

The demo planner makes no low-res stage for images this small, so the plan is edited the way a user
may edit plans.json: a tiny 3d_fullres U-Net, a 3d_lowres entry at twice its spacing and a
3d_cascade_fullres entry inheriting from 3d_fullres with previous_stage 3d_lowres. Two folds come from
a user-edited splits.json.
"""

import copy
import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg.cascade import (
    CascadeCases,
    check_previous_stage_ready,
    one_hot,
    segmentation_to_grid,
)
from autoseg.cli import app
from autoseg.demo import DemoSpec, make_demo_dataset
from autoseg.errors import WorkspaceError
from autoseg.training.augmentation import OnImageChannels, PerturbOneHotChannels, training_transforms
from autoseg.workspace import TaskResults

TASK = "Task903_Cascade"
# 4 cases of about 12x24x24 voxels at 2x1x1 mm (low-res: about 6x12x12); labels 1 (organ) and 2 (lesion in it).
SPEC = DemoSpec(cases=4, shape=(12, 24, 24), spacing=(2.0, 1.0, 1.0), test_cases=2, seed=3)
FULLRES_PATCH, LOWRES_PATCH = (12, 24, 24), (8, 12, 12)
SPLITS = [{"train": ["cascade_002", "cascade_003"], "val": ["cascade_000", "cascade_001"]},
          {"train": ["cascade_000", "cascade_001"], "val": ["cascade_002", "cascade_003"]}]
TRAIN = ["--epochs", "1", "--iterations", "3", "--val-iterations", "1", "--workers", "0", "--device", "cpu",
         "--seed", "0", "--precision", "fp32"]


def run_cli(*args, expect_exit: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == expect_exit, f"autoseg {' '.join(map(str, args))}:\n{result.output}"
    return result


# ------------------------------------------------------------------------------------- building blocks


def test_one_hot_has_one_channel_per_foreground_label():
    segmentation = np.array([[[0, 1, 2, 2]]], np.int16)
    channels = one_hot(segmentation, [1, 2])
    assert channels.shape == (2, 1, 1, 4) and channels.dtype == np.float32
    assert channels[:, 0, 0].tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]]


def test_segmentation_goes_onto_the_cropped_transposed_resampled_grid():
    from autoseg.io import Geometry
    from autoseg.preprocessing.pipeline import CaseProperties

    # Original (z, y, x) = (4, 6, 8); transposed to (x, z, y), cropped to x 2..6, z 0..4, y 1..5, and
    # resampled 2x coarser on every axis -> (2, 2, 2). Label 1 fills x >= 4, so the second x half.
    segmentation = np.zeros((4, 6, 8), np.int16)
    segmentation[:, :, 4:] = 1
    properties = CaseProperties(
        case_id="c", original_geometry=Geometry((4, 6, 8), (1.0, 1.0, 1.0)), transpose_forward=[2, 0, 1],
        crop_box=[[0, 4], [1, 5], [2, 6]], shape_after_crop=[4, 4, 4], shape_after_resampling=[2, 2, 2],
        spacing_after_resampling=[2.0, 2.0, 2.0])
    grid = segmentation_to_grid(segmentation, properties)
    assert grid.dtype == np.int16 and grid.shape == (2, 2, 2)
    assert grid[0].max() == 0 and grid[1].min() == 1  # x is now axis 0


def test_missing_low_res_predictions_name_the_folds_to_train(tmp_path):
    splits = [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a", "c"], "val": ["b"]},
              {"train": ["a", "b"], "val": ["c"]}]
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    (tmp_path / "3d_lowres" / "predicted_next_stage").mkdir(parents=True)
    np.save(tmp_path / "3d_lowres" / "predicted_next_stage" / "a.npy", np.zeros((2, 2, 2), np.int16))
    results = TaskResults(tmp_path)
    with pytest.raises(WorkspaceError, match=r"2 of 3 are missing .*\(b, c\)\. Train 3d_lowres folds 1, 2 "
                                             r"first: `autoseg train 3d_lowres --fold N` for N in 1, 2"):
        check_previous_stage_ready(results, "3d_lowres", ["a", "b", "c"])
    with pytest.raises(WorkspaceError, match="in no fold's validation set"):
        check_previous_stage_ready(results, "3d_lowres", ["a", "z"])
    check_previous_stage_ready(results, "3d_lowres", ["a"])  # complete: no error


class _Base:
    """A case source of one 1-channel 4x8x8 case whose image is 10 everywhere."""

    def arrays(self, case_id):
        return np.full((1, 4, 8, 8), 10.0, np.float32), np.zeros((4, 8, 8), np.int16)

    def foreground_locations(self, case_id):
        return {}


def test_cascade_cases_stack_image_and_one_hot_lazily(tmp_path):
    previous = np.zeros((4, 8, 8), np.int16)
    previous[1:3, 2:6, 2:6] = 1
    previous[2, 3, 3] = 2
    np.save(tmp_path / "c.npy", previous)
    data, _ = CascadeCases(_Base(), tmp_path, [1, 2]).arrays("c")
    assert data.shape == (3, 4, 8, 8)  # 1 image channel + 2 foreground labels
    patch = data[..., 1:3, 2:4, 2:4]
    assert patch.shape == (3, 2, 2, 2) and patch.dtype == np.float32
    assert np.all(patch[0] == 10.0) and patch[1].sum() == 7 and patch[2].sum() == 1
    np.save(tmp_path / "stale.npy", np.zeros((4, 8, 9), np.int16))
    with pytest.raises(WorkspaceError, match="stale"):
        CascadeCases(_Base(), tmp_path, [1, 2]).arrays("stale")


def cube_batch(samples: int = 4):
    """data (B, 2, 8, 16, 16): channel 0 random image, channel 1 a one-hot box (z 2..6, y/x 4..12) with a
    one-voxel hole, so dilation, erosion, opening and closing all change it."""
    rng = np.random.default_rng(0)
    data = np.zeros((samples, 2, 8, 16, 16), np.float32)
    data[:, 0] = rng.normal(size=(samples, 8, 16, 16))
    data[:, 1, 2:6, 4:12, 4:12] = 1
    data[:, 1, 4, 8, 8] = 0
    return data


def test_perturbation_changes_the_one_hot_mask_only():
    np.random.seed(0)
    data = cube_batch()
    morphed = PerturbOneHotChannels(first_channel=1, p_operator=1.0, p_component=0.0, p_per_channel=1.0)(
        data=data.copy())["data"]
    assert np.array_equal(morphed[:, 0], data[:, 0])  # image untouched
    assert set(np.unique(morphed[:, 1])) <= {0.0, 1.0}
    assert all(not np.array_equal(morphed[s, 1], data[s, 1]) for s in range(len(data)))  # every mask changed

    removed = PerturbOneHotChannels(first_channel=1, p_operator=0.0, p_component=1.0, p_per_channel=1.0)(
        data=data.copy())["data"]
    assert removed[:, 1].sum() == 0  # the box (255 of 2048 voxels, under 15 %) is a removable component

    untouched = PerturbOneHotChannels(first_channel=1, p_operator=0.0, p_component=0.0)(data=data.copy())["data"]
    assert np.array_equal(untouched, data)


def test_intensity_augmentation_leaves_the_one_hot_channels_alone():
    # A one-hot channel that is 1 everywhere stays 1 (in the centre) through rotation, scaling and mirroring;
    # noise, blur, brightness, contrast, low resolution and gamma would alter it. Without the wrapping they do.
    from autoseg.training.augmentation import rotation_and_dummy_2d_for
    from autoseg.training.sampling import enlarged_patch_size

    patch = (8, 16, 16)
    setup = rotation_and_dummy_2d_for(patch, 3)
    read = tuple(enlarged_patch_size(patch, setup.rotation_range_rad))  # as the sampler reads them
    np.random.seed(1)
    ones = np.ones((4, 2, *read), np.float32)
    ones[:, 0] = np.random.default_rng(1).normal(size=(4, *read))
    seg = np.zeros((4, 1, *read), np.int16)

    def transforms(image_channels):
        return training_transforms(patch, dimension=3, rotation_range_deg=setup.rotation_range_deg,
                                   do_dummy_2d=setup.do_dummy_2d, mirror_axes=setup.mirror_axes,
                                   use_mask_for_norm_any=False, image_channels=image_channels)

    def deviation(image_channels):
        # Zooming out (scale up to 1.4) pads the border with 0: look at the centre, which stays inside.
        one_hot_centre = transforms(image_channels)(data=ones.copy(), seg=seg.copy())["data"][:, 1, 3:5, 6:10, 6:10]
        return float(np.abs(one_hot_centre - 1).max())

    assert any(isinstance(t, OnImageChannels) for t in transforms(1).transforms)
    wrapped = max(deviation(1) for _ in range(15))
    unwrapped = max(deviation(None) for _ in range(15))
    assert wrapped < 1e-4
    assert unwrapped > 0.05


# ------------------------------------------------------------------------------------------ end to end


def tiny_unet(entry, patch_size, channels: int, classes: int) -> None:
    """Give a plans.json configuration entry a 3-stage U-Net with 4..16 features and `patch_size`."""
    entry.update(patch_size=list(patch_size), batch_size=2, architecture={
        "name": entry["architecture"]["name"], "dimension": 3, "input_channels": channels, "num_classes": classes,
        "features_per_stage": [4, 8, 16], "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "convs_per_stage": 2, "deep_supervision": True})


def cascade_plans(plans_file) -> None:
    """Edit a planned plans.json: tiny 3d_fullres, a 3d_lowres at 2x its spacing, 3d_cascade_fullres on top."""
    plans = json.loads(plans_file.read_text())
    fullres = plans["configurations"]["3d_fullres"]
    channels, classes = len(plans["modality"]), len(plans["labels"])
    tiny_unet(fullres, FULLRES_PATCH, channels, classes)
    lowres = copy.deepcopy(fullres)
    lowres.update(spacing=[2 * s for s in fullres["spacing"]], median_shape=[n / 2 for n in fullres["median_shape"]],
                  data_identifier="3d_lowres", batch_dice=False, next_stage="3d_cascade_fullres")
    tiny_unet(lowres, LOWRES_PATCH, channels, classes)
    # The cascade entry names no architecture: it inherits 3d_fullres's, widened to 1 + 2 input channels.
    plans["configurations"] = {"3d_fullres": fullres, "3d_lowres": lowres,
                               "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}
    plans_file.write_text(json.dumps(plans, indent=1))


def test_cascade_end_to_end_through_the_cli(tmp_path):
    import torch

    from autoseg.io import read_image, read_segmentation
    from autoseg.planning import Plans
    from autoseg.postprocessing import PostprocessingDecision, largest_component
    from autoseg.selection import SelectionResult

    started = time.perf_counter()
    home = tmp_path / "home"
    raw = make_demo_dataset(home / "raw", TASK, SPEC)
    run_cli("--home", home, "plan", raw, "-j", "1")
    preprocessed, results = home / "preprocessed" / TASK, home / "results" / TASK
    cascade_plans(preprocessed / "plans.json")
    plans = Plans.load(preprocessed / "plans.json")
    assert plans.configuration("3d_cascade_fullres").architecture.input_channels == 1 + 2  # image + 2 labels
    run_cli("--home", home, "preprocess", "--workers", "0")
    results.mkdir(parents=True)
    (results / "splits.json").write_text(json.dumps(SPLITS))

    run_cli("--home", home, "train", "3d_lowres", "--fold", "0", *TRAIN)
    next_stage = results / "3d_lowres" / "predicted_next_stage"
    assert sorted(p.stem for p in next_stage.glob("*.npy")) == SPLITS[0]["val"]
    # Fold 1's cases have no low-res prediction yet: cascade training refuses, naming that fold.
    refused = run_cli("--home", home, "train", "3d_cascade_fullres", "--fold", "0", *TRAIN, expect_exit=1)
    assert "2 of 4 are missing" in refused.output and "`autoseg train 3d_lowres --fold 1`" in refused.output
    assert not (results / "3d_cascade_fullres" / "fold_0").exists()  # refused before writing anything
    run_cli("--home", home, "train", "3d_lowres", "--fold", "1", *TRAIN)
    for case_id in SPLITS[0]["val"] + SPLITS[1]["val"]:  # every case, on the full-res grid
        stored = np.load(next_stage / f"{case_id}.npy")
        assert stored.dtype == np.int16 and stored.shape == np.load(preprocessed / "3d_fullres" /
                                                                     f"{case_id}_seg.npy").shape
        assert set(np.unique(stored).tolist()) <= {0, 1, 2}

    for fold in ("0", "1"):
        run_cli("--home", home, "train", "3d_cascade_fullres", "--fold", fold, *TRAIN)
    checkpoint = torch.load(results / "3d_cascade_fullres" / "fold_0" / "checkpoint_final.pt", weights_only=True)
    first_convolution = next(w for name, w in checkpoint["network_weights"].items() if w.ndim == 5)
    assert first_convolution.shape[1] == 3  # the trained network reads 1 + 2 channels

    chosen = run_cli("--home", home, "find-best", "-j", "1")
    selection = SelectionResult.load(results)
    assert {c.name for c in selection.candidates} == {"3d_lowres", "3d_cascade_fullres",
                                                      "3d_cascade_fullres+3d_lowres"}
    assert "3d_cascade_fullres" in chosen.output

    # predict runs 3d_lowres first and feeds it to the cascade; by default it uses find-best's choice and
    # applies the postprocessing decision (here one made to keep the largest foreground component).
    PostprocessingDecision(whole_foreground=True).save(results / "postprocessing.json")
    inputs = sorted((raw / "imagesTs").glob("*.nii.gz"))
    assert len(inputs) == 2
    for options, output in ((["--config", "3d_cascade_fullres", "--no-postprocess"], tmp_path / "cascade"),
                            ([], tmp_path / "chosen")):
        predicted = run_cli("--home", home, "predict", raw / "imagesTs", output, "--device", "cpu", "--no-tta",
                            *options)
        if not options:
            assert all(name in predicted.output.splitlines()[0] for name in selection.chosen)
        for image_file in inputs:
            image, geometry = read_image(image_file)
            segmentation, written = read_segmentation(output / image_file.name)
            assert segmentation.shape == geometry.shape and written.agrees_with(geometry) is None
            assert set(np.unique(segmentation).tolist()) <= {0, 1, 2}
            if not options:  # postprocessed: at most one foreground component
                foreground = segmentation > 0
                assert np.array_equal(largest_component(foreground), foreground)
    # A model bundle of the cascade carries 3d_lowres too, and predicts as the workspace did, from no workspace.
    run_cli("--home", home, "export-model", tmp_path / "cascade.zip", "--config", "3d_cascade_fullres")
    run_cli("--home", tmp_path / "none", "predict", raw / "imagesTs", tmp_path / "bundled", "--model",
            tmp_path / "cascade.zip", "--device", "cpu", "--no-tta", "--no-postprocess")
    for image_file in inputs:
        assert np.array_equal(read_segmentation(tmp_path / "bundled" / image_file.name)[0],
                              read_segmentation(tmp_path / "cascade" / image_file.name)[0])
    seconds = time.perf_counter() - started
    dice = {c.name: round(c.foreground_dice, 3) for c in selection.candidates}
    print(f"cascade end to end: {seconds:.1f} s, cross-validation Dice {dice}")
