import numpy as np
import pytest

from autoseg.errors import AutosegError
from autoseg.io import Geometry, read_segmentation, write_segmentation
from autoseg.postprocessing import (
    PostprocessingDecision,
    apply_postprocessing,
    determine_postprocessing,
    keep_largest_component_of_label,
    keep_largest_foreground_component,
    largest_component,
    postprocess_folder,
)

GEOMETRY = Geometry(shape=(12, 12, 12), spacing_zyx=(3.0, 0.8, 0.8), origin_xyz=(5.0, -2.0, 1.0))


def organ():
    seg = np.zeros(GEOMETRY.shape, np.int16)
    seg[1:5, 1:5, 1:5] = 1  # 64 voxels
    return seg


def test_voxels_touching_only_at_a_corner_are_one_component():
    mask = np.zeros((4, 4, 4), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner contact: one 26-connected component of 2 voxels
    mask[3, 3, 3] = True  # alone (no contact with (1, 1, 1))
    kept = largest_component(mask)
    assert kept.sum() == 2 and kept[0, 0, 0] and kept[1, 1, 1] and not kept[3, 3, 3]
    image = np.zeros((3, 3), bool)
    image[0, 0] = image[1, 1] = True  # 8-connected in 2D
    assert largest_component(image).sum() == 2


def test_largest_component_of_empty_mask_is_empty():
    assert not largest_component(np.zeros((2, 3, 4), bool)).any()


def test_spurious_far_island_is_removed_and_organ_kept():
    seg = organ()
    seg[10, 10, 10] = 2  # false positive of another label, far from the organ
    cleaned = keep_largest_foreground_component(seg)
    assert cleaned[10, 10, 10] == 0
    assert np.array_equal(cleaned, organ()) and cleaned.dtype == seg.dtype


def test_label_step_touches_only_that_label():
    seg = organ()
    seg[10, 10, 10] = 1  # small piece of label 1
    seg[8, 1, 1] = 2  # small but only component of label 2
    cleaned = keep_largest_component_of_label(seg, 1)
    assert cleaned[10, 10, 10] == 0 and cleaned[8, 1, 1] == 2 and (cleaned == 1).sum() == 64


def write_cases(folder, cases):
    folder.mkdir(parents=True, exist_ok=True)
    for case_id, seg in cases.items():
        write_segmentation(seg, GEOMETRY, folder / f"{case_id}.nii.gz")


def test_false_positive_islands_turn_the_whole_foreground_step_on(tmp_path):
    with_island = organ()
    with_island[10, 10, 10] = 1
    write_cases(tmp_path / "ref", {"a": organ(), "b": organ()})
    write_cases(tmp_path / "pred", {"a": with_island, "b": with_island})
    decision = determine_postprocessing(tmp_path / "pred", tmp_path / "ref", {0: "background", 1: "organ"})
    assert decision.whole_foreground and decision.per_label == []  # nothing left for step 2 to improve
    assert decision.label_dice_before["1"] == pytest.approx(2 * 64 / (65 + 64))
    assert decision.label_dice_after["1"] == pytest.approx(1.0)


def test_real_second_component_keeps_postprocessing_off(tmp_path):
    two_parts = organ()
    two_parts[9:11, 9:11, 9:11] = 1  # the reference itself has a second component
    write_cases(tmp_path / "ref", {"a": two_parts})
    write_cases(tmp_path / "pred", {"a": two_parts})
    decision = determine_postprocessing(tmp_path / "pred", tmp_path / "ref", [1])
    assert not decision.whole_foreground and decision.per_label == []
    assert decision.foreground_dice_after == decision.foreground_dice_before == 1.0


def test_foreground_step_rejected_when_a_label_loses_but_label_step_accepted(tmp_path):
    # Label 2 lies apart from the organ: keeping the largest foreground component would delete it (label 2
    # gets worse -> step 1 off); keeping label 1's largest component only removes label 1's false island.
    reference = organ()
    reference[8:10, 8:10, 1:3] = 2
    prediction = reference.copy()
    prediction[10, 1, 10] = 1
    write_cases(tmp_path / "ref", {"a": reference})
    write_cases(tmp_path / "pred", {"a": prediction})
    decision = determine_postprocessing(tmp_path / "pred", tmp_path / "ref", {1: "organ", 2: "lesion"})
    assert not decision.whole_foreground and decision.per_label == [1]
    assert decision.label_dice_after == {"1": 1.0, "2": 1.0}


def test_postprocess_folder_keeps_geometry_and_decision_round_trips(tmp_path):
    with_island = organ()
    with_island[10, 10, 10] = 1
    write_cases(tmp_path / "pred", {"a": with_island})
    decision = PostprocessingDecision(whole_foreground=True, per_label=[1], foreground_dice_before=0.5)
    decision.save(tmp_path / "postprocessing.json")
    loaded = PostprocessingDecision.load(tmp_path)
    assert loaded == decision
    [written] = postprocess_folder(tmp_path / "pred", tmp_path / "post", loaded)
    seg, geometry = read_segmentation(written)
    assert written.name == "a.nii.gz" and geometry.agrees_with(GEOMETRY) is None
    assert np.array_equal(seg, organ())
    assert np.array_equal(apply_postprocessing(with_island, PostprocessingDecision()), with_island)


def test_wrong_schema_version_is_rejected():
    with pytest.raises(AutosegError, match="schema_version"):
        PostprocessingDecision.from_json({"schema_version": 99, "whole_foreground": True, "per_label": []})


def test_postprocess_cli_applies_the_tasks_decision_or_a_given_file(tmp_path):
    from typer.testing import CliRunner

    from autoseg.cli import app
    from autoseg.workspace import Workspace

    with_island = organ()
    with_island[10, 10, 10] = 1
    write_cases(tmp_path / "pred", {"a": with_island})
    workspace = Workspace(tmp_path / "home")
    workspace.remember_task("Task001_X", None)
    PostprocessingDecision(whole_foreground=True).save(workspace.task_results("Task001_X").postprocessing_file)
    result = CliRunner().invoke(app, ["--home", str(workspace.home), "postprocess", str(tmp_path / "pred"),
                                      str(tmp_path / "out"), "-j", "1"])
    assert result.exit_code == 0, result.output
    assert "postprocessed 1 segmentations" in result.output
    assert np.array_equal(read_segmentation(tmp_path / "out" / "a.nii.gz")[0], organ())

    PostprocessingDecision().save(tmp_path / "none" / "postprocessing.json")  # no step: the island stays
    result = CliRunner().invoke(app, ["--home", str(workspace.home), "postprocess", str(tmp_path / "pred"),
                                      str(tmp_path / "kept"), "--decision", str(tmp_path / "none" /
                                                                                 "postprocessing.json")])
    assert result.exit_code == 0, result.output
    assert read_segmentation(tmp_path / "kept" / "a.nii.gz")[0][10, 10, 10] == 1

    same = CliRunner().invoke(app, ["--home", str(workspace.home), "postprocess", str(tmp_path / "pred"),
                                    str(tmp_path / "pred")])
    assert same.exit_code == 1 and "must differ from the input folder" in same.output


def test_predict_applies_the_decision_unless_told_not_to():
    import torch

    from autoseg.inference.case import PredictionSettings, predict_image
    from autoseg.inference.model import TrainedModel
    from autoseg.planning.plans import Plans

    # An oracle network (foreground where the normalized intensity is above 0) on a bright organ plus a
    # bright far voxel: the raw prediction has the island, the postprocessed one only the organ.
    plans = Plans.from_json(_plans_for_one_channel())
    image = np.full((1, *GEOMETRY.shape), -1.0, np.float32)
    image[0][organ() == 1] = 1.0
    image[0, 10, 10, 10] = 1.0

    def oracle(x):
        return torch.cat([-10 * x[:, :1], 10 * x[:, :1]], dim=1)

    model = TrainedModel(plans, "3d_fullres", plans.configuration("3d_fullres"), [oracle], ["oracle"],
                         torch.device("cpu"), [0, 1], postprocessing=PostprocessingDecision(whole_foreground=True))
    settings = PredictionSettings(mirror_axes=())
    cleaned = predict_image(model, image, GEOMETRY, settings).segmentation
    assert np.array_equal(cleaned, organ())
    raw = predict_image(model, image, GEOMETRY, PredictionSettings(mirror_axes=(), postprocess=False)).segmentation
    assert raw[10, 10, 10] == 1 and (raw == 1).sum() == 65


def _plans_for_one_channel() -> dict:
    """A plans.json for one 12^3 'none'-normalized channel at GEOMETRY's spacing, patch 8^3, tiny network."""
    return {
        "schema_version": 1, "dataset_name": "Task001_X", "fingerprint_signature": "test",
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "organ"},
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "original_median_spacing": list(GEOMETRY.spacing_zyx), "original_median_shape": list(GEOMETRY.shape),
        "intensity_per_channel": {"0": {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -1.0, "max": 1.0,
                                        "percentile_00_5": -1.0, "percentile_99_5": 1.0}},
        "gpu_memory_gb": 8.0,
        "configurations": {"3d_fullres": {
            "dimension": 3, "spacing": list(GEOMETRY.spacing_zyx), "median_shape": list(GEOMETRY.shape),
            "patch_size": [8, 8, 8], "batch_size": 2, "batch_dice": False, "normalization": ["none"],
            "use_mask_for_norm": [False], "estimated_memory_gb": 0.1, "data_identifier": "3d_fullres",
            "architecture": {"name": "plain_unet", "dimension": 3, "input_channels": 1, "num_classes": 2,
                             "features_per_stage": [4, 8], "kernel_sizes": [[3, 3, 3]] * 2,
                             "strides": [[1, 1, 1], [2, 2, 2]], "convs_per_stage": 2, "deep_supervision": True}}},
    }
