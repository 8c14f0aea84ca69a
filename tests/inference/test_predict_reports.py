"""predict --statistics and --preview through the command line: per-case reports, their merge across
--part runs and a resumed run, index.html; evaluate's summary.png."""

import json

import numpy as np
import pytest
from matplotlib.image import imread

from autoseg import api
from autoseg.figures import PREVIEW_LEGEND_PX, PREVIEW_PANEL_PX
from autoseg.io import Geometry, read_image, read_segmentation, write_segmentation
from autoseg.statistics import StatisticsTable
from test_predict import block_plans, run, trained_workspace  # noqa: F401 - fixtures


def test_statistics_and_previews_of_every_case_agree_with_the_written_segmentations(trained_workspace, tmp_path):
    output = tmp_path / "out"
    result = run(trained_workspace, str(trained_workspace / "in"), str(output), "--no-tta", "--folds", "0",
                 "--statistics", "--preview")
    assert result.exit_code == 0, result.output
    assert f"wrote {output / 'statistics.json'}" in result.output and f"wrote {output / 'index.html'}" in result.output
    table = StatisticsTable.load(output)
    assert [case.case_id for case in table.cases] == ["case0", "case1", "case2"]
    assert table.label_names == {"1": "block"} and table.channel_names == ["MRI"]
    for case in table.cases:
        segmentation, geometry = read_segmentation(output / f"{case.case_id}.nii.gz")
        image, _ = read_image(trained_workspace / "in" / f"{case.case_id}.nii.gz")
        (block,) = case.labels
        inside = segmentation == 1
        assert block.voxels == int(inside.sum())
        assert block.volume_ml == pytest.approx(inside.sum() * 0.8 * 3.0 * 0.7 / 1000)
        if block.voxels:  # the untrained network's output: whatever it is, measured on the input's intensities
            assert block.intensity["MRI"]["mean"] == pytest.approx(image[0][inside].mean())
        preview = imread(output / "previews" / f"{case.case_id}.png")
        assert preview.shape[:2] == (PREVIEW_PANEL_PX + PREVIEW_LEGEND_PX, 3 * PREVIEW_PANEL_PX)
    assert len((output / "statistics.csv").read_text().splitlines()) == 1 + 3
    page = (output / "index.html").read_text()
    for case_id in ("case0", "case1", "case2"):
        assert f'href="{case_id}.nii.gz"' in page and f'src="previews/{case_id}.png"' in page
    assert not any(name.endswith(".png") for name in (p.name for p in output.iterdir()))  # no case for evaluate


def test_parts_and_a_resumed_run_add_up_to_one_table(trained_workspace, tmp_path):
    output = tmp_path / "out"
    options = dict(tta="off", folds=["0"], home=trained_workspace)
    api.predict(trained_workspace / "in", output, part=(0, 2), **options)  # case0, case2: no statistics
    assert not api.predict(trained_workspace / "in", output, part=(1, 2), statistics=True, **options).failures
    assert [case.case_id for case in StatisticsTable.load(output).cases] == ["case1"]  # the only one measured
    resumed = api.predict(trained_workspace / "in", output, statistics=True, **options)
    assert resumed.skipped == ["case0", "case1", "case2"] and not resumed.failures
    # case0 and case2 were measured from their files, case1's statistics kept from its run.
    assert [case.case_id for case in StatisticsTable.load(output).cases] == ["case0", "case1", "case2"]
    assert json.loads((output / ".statistics" / "case2.json").read_text())["case_id"] == "case2"


def test_evaluate_writes_the_dice_chart_and_ignores_it_when_run_again(tmp_path):
    predictions, references = tmp_path / "pred", tmp_path / "ref"
    geometry = Geometry((4, 8, 8), (1.0, 1.0, 1.0))
    for case_id, (stop, label_2) in {"a": (4, True), "b": (6, False)}.items():
        prediction, reference = np.zeros((4, 8, 8), np.int16), np.zeros((4, 8, 8), np.int16)
        prediction[:, :stop] = reference[:, :4] = 1
        prediction[:, 6:] = reference[:, 6:] = 2 if label_2 else 0
        write_segmentation(prediction, geometry, predictions / f"{case_id}.nii.gz")
        write_segmentation(reference, geometry, references / f"{case_id}.nii.gz")
    first = api.evaluate(predictions, references, labels=[1, 2], workers=0, home=tmp_path)
    assert first.chart_file == predictions / "summary.png" and imread(first.chart_file).shape[1] >= 600
    again = api.evaluate(predictions, references, labels=[1, 2], workers=0, home=tmp_path)
    assert [case.case_id for case in again.summary.per_case] == ["a", "b"]
    assert again.summary.per_case[1].metrics["1"]["Dice"] == pytest.approx(2 * 4 / (4 + 6))
    assert sorted(p.name for p in predictions.iterdir() if p.name.startswith("summary")) == [
        "summary.csv", "summary.json", "summary.png"]
