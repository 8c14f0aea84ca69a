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
    decision.save(tmp_path)
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
