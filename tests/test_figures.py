"""Previews and the Dice chart: their size, what they show where, and that they are PNGs."""

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from autoseg.evaluation import CaseEvaluation, EvaluationSummary
from autoseg.figures import PREVIEW_LEGEND_PX, PREVIEW_PANEL_PX, label_colour, preview_centre, write_dice_chart, \
    write_preview
from autoseg.io import Geometry, picture_geometry
from autoseg.metrics import METRIC_NAMES


def test_the_slices_cross_at_the_centre_of_the_largest_label():
    segmentation = np.zeros((10, 12, 14), np.int16)
    segmentation[0:2, 0:2, 0:2] = 1  # 8 voxels
    segmentation[4:7, 6:9, 2:12] = 2  # 90 voxels, centre (5, 7, 6.5 -> 6)
    assert preview_centre(segmentation) == (5, 7, 6)
    assert preview_centre(np.zeros((10, 12, 14), np.int16)) == (5, 6, 7)


def test_volume_preview_has_three_panels_in_physical_aspect_with_the_label_in_its_colour(tmp_path):
    segmentation = np.zeros((20, 30, 40), np.int16)
    segmentation[5:15, 10:20, 10:30] = 2
    image = np.random.default_rng(0).normal(0, 1, (1, 20, 30, 40)).astype(np.float32)
    path = write_preview(segmentation, image, Geometry((20, 30, 40), (3.0, 1.0, 1.0)), {2: "tumour"},
                         tmp_path / "case.png")
    pixels = imread(path)[..., :3]
    assert pixels.shape == (PREVIEW_PANEL_PX + PREVIEW_LEGEND_PX, 3 * PREVIEW_PANEL_PX, 3)
    # The axial panel's centre lies inside the label: grey blended with label 2's colour (more of it than of
    # any other); the coronal panel is 60 mm high for 40 mm wide (z spacing 3 mm), so its top-left corner
    # above the image is white (figure background), not image.
    axial_centre = pixels[(PREVIEW_PANEL_PX + PREVIEW_LEGEND_PX) // 2 - 10, PREVIEW_PANEL_PX // 2]
    expected = np.asarray(to_rgb(label_colour(2)))
    assert np.argmax(axial_centre - axial_centre.mean()) == np.argmax(expected - expected.mean())
    coronal_top_left = pixels[int(0.08 * PREVIEW_PANEL_PX), PREVIEW_PANEL_PX + 10]
    assert np.allclose(coronal_top_left, 1.0)


def test_picture_preview_has_one_panel_in_colour(tmp_path):
    segmentation = np.zeros((1, 30, 40), np.int16)
    image = np.zeros((3, 1, 30, 40), np.float32)
    image[1] = 200.0  # green
    image[:, :, :, :20] = 0.0  # left half black
    path = write_preview(segmentation, image, picture_geometry(30, 40), {1: "cell"}, tmp_path / "picture.png")
    pixels = imread(path)[..., :3]
    assert pixels.shape[:2] == (PREVIEW_PANEL_PX + PREVIEW_LEGEND_PX, PREVIEW_PANEL_PX)
    middle_row = (PREVIEW_PANEL_PX + PREVIEW_LEGEND_PX) // 2 - 10
    assert np.allclose(pixels[middle_row, 3 * PREVIEW_PANEL_PX // 4], [0, 1, 0])  # right half: green
    assert np.allclose(pixels[middle_row, PREVIEW_PANEL_PX // 4], [0, 0, 0])


def test_dice_chart_is_written(tmp_path):
    def case(case_id, dice):
        return CaseEvaluation(case_id, "", "", {"1": {m: dice for m in METRIC_NAMES},
                                                "2": {m: 0.5 for m in METRIC_NAMES}})

    summary = EvaluationSummary.from_cases([case("a", 0.9), case("b", float("nan"))], {"1": "liver", "2": "tumour"},
                                           ["1", "2"])
    path = write_dice_chart(summary, tmp_path / "summary.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(path).shape[1] == pytest.approx(600)  # 6 inches at 100 dpi for a few cases
