import csv
import json
import math

import numpy as np
import pytest

from autoseg.errors import AutosegError
from autoseg.evaluation import EvaluationSummary, evaluate_folder
from autoseg.metrics import case_metrics
from autoseg.io import Geometry, write_segmentation


def cube(shape=(8, 8, 10), start=(2, 2, 2), size=4):
    seg = np.zeros(shape, dtype=np.int16)
    seg[tuple(slice(s, s + size) for s in start)] = 1
    return seg


def test_cube_shifted_along_x_overlap_and_surface_by_hand():
    # 4^3 cube vs the same cube one voxel further along x: 48 voxels shared, 16 on each side.
    m = case_metrics(cube(start=(2, 2, 3)), cube(), [1], spacing_zyx=(2.0, 1.0, 1.0))["1"]
    assert (m["TP"], m["FP"], m["FN"], m["n_pred"], m["n_ref"]) == (48, 16, 16, 64, 64)
    assert m["Dice"] == pytest.approx(2 * 48 / (2 * 48 + 32))  # 0.75
    assert m["IoU"] == pytest.approx(48 / 80)
    assert m["VOE"] == pytest.approx(1 - 48 / 80)
    assert m["RVD"] == 0.0
    assert m["precision"] == m["recall"] == pytest.approx(0.75)
    # Each surface has 64 - 2^3 = 56 voxels. Per direction 20 are 1 mm (x step) off the other surface:
    # the 16 of the outer x face and the 4 inner voxels of the inner x face; the other 36 lie on it.
    assert m["ASSD_mm"] == pytest.approx(2 * 20 * 1.0 / 112)
    assert m["HD95_mm"] == pytest.approx(1.0)
    assert m["MSSD_mm"] == pytest.approx(1.0)


def test_same_shift_along_a_coarse_axis_is_scaled_by_its_spacing():
    # Shift along x with 3 mm x spacing: the outer x faces (16 per direction) are 3 mm off, while the 4 inner
    # voxels of the inner face are now closer to the y/z faces (1 mm in y) than to the x face (3 mm).
    m = case_metrics(cube(start=(2, 2, 3)), cube(), [1], spacing_zyx=(1.0, 1.0, 3.0))["1"]
    assert m["Dice"] == pytest.approx(0.75)  # overlap ignores spacing
    assert m["ASSD_mm"] == pytest.approx((2 * 16 * 3.0 + 2 * 4 * 1.0) / 112)
    assert m["HD95_mm"] == pytest.approx(3.0)
    assert m["MSSD_mm"] == pytest.approx(3.0)


def test_cube_shifted_along_the_coarse_z_axis_by_hand():
    # The same cube one slice further along z, with 2.5 mm slices. Per direction, of 56 surface voxels: the 16
    # of the outer z face are 2.5 mm (one slice) off; the 4 inner voxels of the inner z face are 1 mm off
    # (the y or x face of the other cube is nearer than its z face); the other 36 lie on the other surface.
    m = case_metrics(cube(start=(3, 2, 2)), cube(), [1], spacing_zyx=(2.5, 1.0, 1.0))["1"]
    assert (m["Dice"], m["IoU"], m["VOE"], m["RVD"]) == pytest.approx((0.75, 0.6, 0.4, 0.0))
    assert m["ASSD_mm"] == pytest.approx(2 * (16 * 2.5 + 4 * 1.0) / 112)
    # pooled sorted: 72 zeros, 8 x 1 mm, 32 x 2.5 mm; rank 0.95 * 111 = 105.45 lies among the 2.5s
    assert m["HD95_mm"] == pytest.approx(2.5)
    assert m["MSSD_mm"] == pytest.approx(2.5)


def test_longer_box_over_a_cube_volume_difference_and_anisotropic_distances_by_hand():
    # Prediction 4x4x6 voxels (x 2..7) over the reference cube 4x4x4 (x 2..5); spacing z 3, y 1, x 0.5 mm.
    prediction = np.zeros((8, 8, 10), np.int16)
    prediction[2:6, 2:6, 2:8] = 1
    m = case_metrics(prediction, cube(), [1], spacing_zyx=(3.0, 1.0, 0.5))["1"]
    assert (m["TP"], m["FP"], m["FN"]) == (64, 32, 0)
    assert m["Dice"] == pytest.approx(128 / 160) and m["IoU"] == pytest.approx(64 / 96)
    assert m["VOE"] == pytest.approx(1 / 3) and m["RVD"] == pytest.approx(0.5)  # 50 % too large
    assert (m["precision"], m["recall"]) == pytest.approx((2 / 3, 1.0))
    # prediction -> reference (80 surface voxels): the ring at x=6 (12) is 1 x-step (0.5 mm) beyond the
    # reference's x=5 face, the x=7 face (16) 2 x-steps (1 mm); the other 52 lie on the reference surface.
    # reference -> prediction (56): the 4 inner voxels of its x=5 face are inside the prediction, 1 mm from
    # both its y/z ring (1 y-step) and its x=7 face (2 x-steps); the other 52 lie on the prediction surface.
    assert m["ASSD_mm"] == pytest.approx((12 * 0.5 + 16 * 1.0 + 4 * 1.0) / 136)
    assert m["HD95_mm"] == pytest.approx(1.0)  # rank 0.95 * 135 = 128.25: among the 20 values of 1 mm
    assert m["MSSD_mm"] == pytest.approx(1.0)


def test_single_voxel_surfaces_pooled_percentile_and_spacing():
    # Prediction: one voxel at x=2. Reference: voxels at x=3 and x=5 (same z, y).
    # pred->ref: [1]; ref->pred: [1, 3]; pooled [1, 1, 3] (in x voxels).
    pred, ref = np.zeros((5, 5, 12), np.int16), np.zeros((5, 5, 12), np.int16)
    pred[2, 2, 2] = 1
    ref[2, 2, 3] = ref[2, 2, 5] = 1
    unit = case_metrics(pred, ref, [1], (1.0, 1.0, 1.0))["1"]
    assert unit["ASSD_mm"] == pytest.approx(5 / 3)
    assert unit["HD95_mm"] == pytest.approx(1 + 0.9 * (3 - 1))  # linear interpolation at rank 0.95 * 2
    assert unit["MSSD_mm"] == pytest.approx(3.0)
    coarse_x = case_metrics(pred, ref, [1], (1.0, 1.0, 2.0))["1"]
    assert [coarse_x[k] for k in ("ASSD_mm", "HD95_mm", "MSSD_mm")] == pytest.approx([10 / 3, 5.6, 6.0])
    coarse_z = case_metrics(pred, ref, [1], (5.0, 1.0, 1.0))["1"]  # no z offset: z spacing changes nothing
    assert coarse_z["MSSD_mm"] == pytest.approx(3.0)


def test_single_slice_image_has_in_plane_contours():
    # 3x3 square vs 5x5 square around it in a (1, 7, 7) image. As 2D, the square's centre is not surface
    # (otherwise it would be 2 voxels from the big ring). pred->ref: 8 x 1; ref->pred: 12 x 1 + 4 corners x sqrt(2).
    pred, ref = np.zeros((1, 7, 7), np.int16), np.zeros((1, 7, 7), np.int16)
    pred[0, 2:5, 2:5] = 1
    ref[0, 1:6, 1:6] = 1
    m = case_metrics(pred, ref, [1], (999.0, 0.5, 0.5))["1"]
    assert m["MSSD_mm"] == pytest.approx(0.5 * math.sqrt(2))
    assert m["ASSD_mm"] == pytest.approx(0.5 * (20 + 4 * math.sqrt(2)) / 24)


def test_empty_mask_conventions():
    empty, one_voxel = np.zeros((3, 3, 3), np.int16), np.zeros((3, 3, 3), np.int16)
    one_voxel[1, 1, 1] = 1
    both = case_metrics(empty, empty, [1], (1.0, 1.0, 1.0))["1"]
    assert (both["Dice"], both["IoU"], both["VOE"], both["RVD"]) == (1.0, 1.0, 0.0, 0.0)
    assert (both["ASSD_mm"], both["HD95_mm"], both["MSSD_mm"]) == (0.0, 0.0, 0.0)
    missed = case_metrics(empty, one_voxel, [1], (1.0, 1.0, 1.0))["1"]
    assert (missed["Dice"], missed["IoU"], missed["recall"], missed["precision"], missed["RVD"]) == (0, 0, 0, 0, -1)
    assert all(math.isnan(missed[k]) for k in ("ASSD_mm", "HD95_mm", "MSSD_mm"))
    invented = case_metrics(one_voxel, empty, [1], (1.0, 1.0, 1.0))["1"]
    assert invented["Dice"] == 0 and math.isnan(invented["RVD"]) and math.isnan(invented["HD95_mm"])


def test_region_is_scored_as_union_of_labels():
    pred, ref = np.zeros((3, 3, 3), np.int16), np.zeros((3, 3, 3), np.int16)
    pred[1, 1, 1], pred[1, 1, 2] = 1, 2
    ref[1, 1, 1], ref[1, 1, 2] = 2, 1  # labels swapped: each label wrong, their union right
    m = case_metrics(pred, ref, [1, 2, (1, 2)], (1.0, 1.0, 1.0))
    assert m["1"]["Dice"] == m["2"]["Dice"] == 0.0
    assert m["1+2"]["Dice"] == 1.0 and m["1+2"]["MSSD_mm"] == 0.0


GEOMETRY = Geometry(shape=(8, 8, 10), spacing_zyx=(2.0, 1.0, 1.0))


def write_cases(folder, cases):
    folder.mkdir(parents=True, exist_ok=True)
    for case_id, seg in cases.items():
        write_segmentation(seg, GEOMETRY, folder / f"{case_id}.nii.gz")


def test_evaluate_folder_means_exclusions_and_files(tmp_path):
    empty = np.zeros(GEOMETRY.shape, np.int16)
    write_cases(tmp_path / "ref", {"a": cube(), "b": cube()})
    write_cases(tmp_path / "pred", {"a": cube(start=(2, 2, 3)), "b": empty})
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "ref", {0: "background", 1: "organ"})

    assert [c.case_id for c in summary.per_case] == ["a", "b"]
    assert summary.mean["1"]["Dice"] == pytest.approx((0.75 + 0.0) / 2)
    # case b's surface distances are undefined (empty prediction): left out of the mean and counted
    assert summary.mean["1"]["ASSD_mm"] == pytest.approx(40 / 112)
    assert summary.excluded_cases["1"]["HD95_mm"] == 1 and summary.excluded_cases["1"]["Dice"] == 0
    assert summary.foreground_mean["Dice"] == pytest.approx(0.375)

    json_path, csv_path = summary.save(tmp_path / "out")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["case_id"], r["label"], r["name"]) for r in rows] == [("a", "1", "organ"), ("b", "1", "organ")]
    assert float(rows[0]["Dice"]) == pytest.approx(0.75) and math.isnan(float(rows[1]["HD95_mm"]))
    reloaded = EvaluationSummary.load(tmp_path / "out")
    assert reloaded.mean["1"]["Dice"] == pytest.approx(0.375)
    assert math.isnan(reloaded.per_case[1].metrics["1"]["ASSD_mm"])
    assert "organ" in summary.format_table() and "0.3750" in summary.format_table()


def test_evaluate_folder_with_two_workers_matches_sequential(tmp_path):
    write_cases(tmp_path / "ref", {"a": cube(), "b": cube()})
    write_cases(tmp_path / "pred", {"a": cube(start=(2, 2, 3)), "b": cube()})
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "ref", {1: "organ"}, workers=2)
    assert summary.mean["1"]["Dice"] == pytest.approx((0.75 + 1.0) / 2)


def test_missing_prediction_is_an_error_naming_the_case(tmp_path):
    write_cases(tmp_path / "ref", {"liver_001": cube(), "liver_002": cube()})
    write_cases(tmp_path / "pred", {"liver_001": cube()})
    with pytest.raises(AutosegError, match="liver_002"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", {1: "organ"})


def test_geometry_mismatch_names_the_prediction_file(tmp_path):
    write_cases(tmp_path / "ref", {"a": cube()})
    (tmp_path / "pred").mkdir()
    write_segmentation(cube(), Geometry(shape=GEOMETRY.shape, spacing_zyx=(1.0, 1.0, 1.0)),
                       tmp_path / "pred" / "a.nii.gz")
    with pytest.raises(AutosegError, match=r"a\.nii\.gz.*spacing"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", {1: "organ"})


def region_dataset(folder, regions):
    """A dataset folder whose dataset.json has labels 0-3 and the given "regions" entry (no images needed)."""
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({
        "name": "Task950_Regions", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "edema", "2": "necrosis", "3": "enhancing"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}], "regions": regions}))
    return folder


def test_regions_of_dataset_json_are_scored_by_the_cli(tmp_path):
    from typer.testing import CliRunner

    from autoseg.cli import app

    dataset = region_dataset(tmp_path / "Task950_Regions", {"whole tumour": [1, 2, 3], "tumour core": [2, 3]})
    reference, prediction = np.zeros(GEOMETRY.shape, np.int16), np.zeros(GEOMETRY.shape, np.int16)
    reference[2:6, 2:6, 2:6] = 1
    reference[3:5, 3:5, 3:5] = 2
    prediction[2:6, 2:6, 2:6] = 1
    prediction[3:5, 3:5, 3:5] = 3  # necrosis called enhancing: both labels wrong, the tumour core right
    write_cases(tmp_path / "ref", {"a": reference})
    write_cases(tmp_path / "pred", {"a": prediction})
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "evaluate", str(tmp_path / "pred"),
                                      str(tmp_path / "ref"), "--task", str(dataset), "-j", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["label_names"] == {"1": "edema", "2": "necrosis", "3": "enhancing",
                                      "1+2+3": "whole tumour", "2+3": "tumour core"}
    assert summary["mean"]["2"]["Dice"] == 0.0 and summary["mean"]["2+3"]["Dice"] == 1.0
    assert summary["mean"]["1+2+3"]["MSSD_mm"] == 0.0
    assert summary["mean"]["3"]["Dice"] == 0.0  # empty reference, non-empty prediction
    assert summary["mean"]["3"]["HD95_mm"] is None and summary["excluded_cases"]["3"]["HD95_mm"] == 1
    assert summary["foreground_mean"]["Dice"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)  # labels only
    with open(tmp_path / "pred" / "summary.csv") as f:
        assert [row["label"] for row in csv.DictReader(f)] == ["1", "2", "3", "1+2+3", "2+3"]
    assert "tumour core" in result.output and "foreground mean" in result.output

    explicit = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "evaluate", str(tmp_path / "pred"),
                                        str(tmp_path / "ref"), "--labels", "1,2,3", "--regions", "2+3"])
    assert explicit.exit_code == 0, explicit.output
    assert list(json.loads((tmp_path / "pred" / "summary.json").read_text())["mean"]) == ["1", "2", "3", "2+3"]


def test_region_naming_an_unknown_label_is_an_error(tmp_path):
    from autoseg.evaluation import regions_of_dataset

    dataset = region_dataset(tmp_path / "d", {"core": [2, 7]})
    with pytest.raises(AutosegError, match=r"dataset\.json: region 'core' names label\(s\) \[7\]"):
        regions_of_dataset(dataset, {0: "background", 1: "a", 2: "b", 3: "c"})
    assert regions_of_dataset(region_dataset(tmp_path / "none", None)) == {}


# ---------------------------------------------------------------------- which labels `autoseg evaluate` scores


def labels_1_and_3(tmp_path):
    """Prediction and reference folders whose masks hold labels 1 and 3 between them (never 2)."""
    organ, spot = np.zeros(GEOMETRY.shape, np.int16), np.zeros(GEOMETRY.shape, np.int16)
    organ[2:6, 2:6, 2:6] = 1
    spot[6:8, 6:8, 6:8] = 3
    write_cases(tmp_path / "ref", {"a": organ, "b": spot})
    write_cases(tmp_path / "pred", {"a": organ + spot, "b": np.zeros_like(spot)})  # 3 only in a's prediction
    return tmp_path / "pred", tmp_path / "ref"


def evaluate_cli(home, predictions, references, *options):
    from typer.testing import CliRunner

    from autoseg.cli import app

    return CliRunner().invoke(app, ["--home", str(home), "evaluate", str(predictions), str(references), "-j", "1",
                                    *options])


def plan_task(home, dataset):
    """What `autoseg plan` leaves for the later stages: the workspace's current task."""
    from autoseg.workspace import Workspace

    Workspace(home).remember_task(dataset.name, dataset)


def test_labels_found_are_the_union_over_predictions_and_references(tmp_path):
    from autoseg.evaluation import labels_found

    predictions, references = labels_1_and_3(tmp_path)
    assert labels_found(predictions, references) == [1, 3]
    assert labels_found(predictions, references, workers=2) == [1, 3]
    (references / "b.nii.gz").unlink()
    with pytest.raises(AutosegError, match=r"no reference segmentation for case\(s\) b"):
        labels_found(predictions, references)


def test_the_task_labels_are_scored_only_when_they_hold_every_label_found():
    from autoseg.evaluation import labels_to_score

    task = {0: "background", 1: "edema", 2: "necrosis", 3: "enhancing"}
    assert labels_to_score([1, 3], None, "p and r").labels == {1: "1", 3: "3"}
    assert labels_to_score([1, 3], None, "p and r").from_task is False
    assert labels_to_score([1, 3], task, "p and r").labels == task  # absent label 2 scored too, as the task's
    assert labels_to_score([1, 3], task, "p and r").from_task is True
    assert labels_to_score([], task, "p and r").labels == task  # empty masks of the task's cases
    unrelated = labels_to_score([1, 4], task, "p and r")
    assert unrelated.labels == {1: "1", 4: "4"} and unrelated.from_task is False
    with pytest.raises(AutosegError, match=r"^p and r: no label other than background \(0\) in any file"):
        labels_to_score([], None, "p and r")


def test_evaluate_without_a_plan_scores_the_labels_found(tmp_path):
    predictions, references = labels_1_and_3(tmp_path)
    result = evaluate_cli(tmp_path / "empty_home", predictions, references)
    assert result.exit_code == 0, result.output
    assert "scoring labels found in the files: 1, 3" in result.output
    summary = json.loads((predictions / "summary.json").read_text())
    assert summary["label_names"] == {"1": "1", "3": "3"}
    assert summary["mean"]["1"]["Dice"] == 1.0 and summary["mean"]["3"]["Dice"] == 0.0  # 3 missed in b, invented in a


def test_evaluate_ignores_a_planned_task_whose_labels_do_not_cover_the_files(tmp_path):
    predictions, references = labels_1_and_3(tmp_path)
    home = tmp_path / "home"
    dataset = region_dataset(tmp_path / "Task951_Organ", None)
    meta = json.loads((dataset / "dataset.json").read_text())
    (dataset / "dataset.json").write_text(json.dumps({**meta, "labels": {"0": "background", "1": "organ"}}))
    plan_task(home, dataset)
    result = evaluate_cli(home, predictions, references)
    assert result.exit_code == 0, result.output
    assert "scoring labels found in the files: 1, 3" in result.output and "Task951_Organ" not in result.output
    assert json.loads((predictions / "summary.json").read_text())["label_names"] == {"1": "1", "3": "3"}


def test_evaluate_names_the_labels_by_the_planned_task_when_it_covers_the_files(tmp_path):
    predictions, references = labels_1_and_3(tmp_path)
    home = tmp_path / "home"
    plan_task(home, region_dataset(tmp_path / "Task950_Regions", {"tumour core": [2, 3]}))
    result = evaluate_cli(home, predictions, references)
    assert result.exit_code == 0, result.output
    assert "scoring the labels of the planned task Task950_Regions (labels found in the files: 1, 3)" in result.output
    summary = json.loads((predictions / "summary.json").read_text())
    assert summary["label_names"] == {"1": "edema", "2": "necrosis", "3": "enhancing", "2+3": "tumour core"}
    assert "enhancing" in result.output

    explicit = evaluate_cli(home, predictions, references, "--labels", "1")  # --labels still wins
    assert explicit.exit_code == 0, explicit.output
    assert json.loads((predictions / "summary.json").read_text())["label_names"] == {"1": "1"}


def test_evaluate_of_background_only_files_without_a_task_is_an_error(tmp_path):
    empty = np.zeros(GEOMETRY.shape, np.int16)
    write_cases(tmp_path / "ref", {"a": empty})
    write_cases(tmp_path / "pred", {"a": empty})
    result = evaluate_cli(tmp_path / "home", tmp_path / "pred", tmp_path / "ref")
    assert result.exit_code == 1 and "no label other than background (0)" in result.output


def test_the_planned_task_pixel_spacing_applies_only_with_its_labels(tmp_path):
    import SimpleITK as sitk

    dataset = tmp_path / "Task952_Pictures"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({
        "name": "Task952_Pictures", "modality": {"0": "R", "1": "G", "2": "B"}, "pixel_spacing": 0.5,
        "labels": {"0": "background", "1": "square"},
        "training": [{"image": "./imagesTr/sq.png", "label": "./labelsTr/sq.png"}]}))
    home = tmp_path / "home"
    plan_task(home, dataset)
    for value, expected_hd95 in ((1, 2.0), (2, 4.0)):  # the task's label: mm at 0.5 mm; another: pixels
        predictions, references = tmp_path / f"pred{value}", tmp_path / f"ref{value}"
        predictions.mkdir(), references.mkdir()
        square = np.zeros((30, 30), np.uint8)
        square[10:20, 8:18] = value
        sitk.WriteImage(sitk.GetImageFromArray(square), str(references / "sq.png"))
        sitk.WriteImage(sitk.GetImageFromArray(np.roll(square, 4, axis=1)), str(predictions / "sq.png"))
        result = evaluate_cli(home, predictions, references)
        assert result.exit_code == 0, result.output
        assert ("0.5 x 0.5 mm" in result.output) == (value == 1)
        hd95 = json.loads((predictions / "summary.json").read_text())["mean"][str(value)]["HD95_mm"]
        assert hd95 == pytest.approx(expected_hd95)
