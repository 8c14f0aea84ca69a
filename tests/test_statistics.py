"""Statistics of a segmentation, against values worked out by hand on a 4 x 5 x 6 volume."""

import csv
import math

import numpy as np
import pytest

from autoseg.io import Geometry, picture_geometry
from autoseg.statistics import StatisticsTable, case_statistics

# (z, y, x) spacing 2 x 0.5 x 1 mm, origin (10, -20, 5) mm.
SPACING = (2.0, 0.5, 1.0)
ORIGIN = (10.0, -20.0, 5.0)
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # physical x = -y index, physical y = x index


def known_case():
    """Label 1 on z 1..2, y 2..3, x 1..3 (12 voxels) with channel 0 = 1..12 inside and channel 1 = 7;
    label 3 (not named) on one voxel; label 2 named but absent."""
    segmentation = np.zeros((4, 5, 6), np.int16)
    segmentation[1:3, 2:4, 1:4] = 1
    segmentation[3, 0, 5] = 3
    image = np.full((2, 4, 5, 6), -100.0, np.float32)
    image[0][segmentation == 1] = np.arange(1, 13)
    image[1][segmentation == 1] = 7.0
    return segmentation, image


def test_volume_intensities_and_box_by_hand():
    segmentation, image = known_case()
    geometry = Geometry(shape=(4, 5, 6), spacing_zyx=SPACING, origin_xyz=ORIGIN)
    case = case_statistics("c", segmentation, image, geometry, {1: "liver", 2: "tumour"}, ["CT", "PET"])
    liver, tumour, other = case.labels
    assert (liver.label, liver.name, liver.voxels) == (1, "liver", 12)
    assert liver.volume_ml == pytest.approx(12 * 2.0 * 0.5 * 1.0 / 1000)  # 0.012 ml
    assert liver.area_mm2 is None
    # 1..12: mean = median = 6.5, population variance (12^2 - 1) / 12.
    assert liver.intensity["CT"] == pytest.approx({"mean": 6.5, "median": 6.5, "std": math.sqrt(143 / 12)})
    assert liver.intensity["PET"] == pytest.approx({"mean": 7.0, "median": 7.0, "std": 0.0})
    # Voxel extents: x index 0.5..3.5 (1 mm), y 1.5..3.5 (0.5 mm), z 0.5..2.5 (2 mm), plus the origin.
    assert liver.bbox_min_mm == pytest.approx([10.5, -19.25, 6.0])
    assert liver.bbox_max_mm == pytest.approx([13.5, -18.25, 10.0])
    assert (tumour.voxels, tumour.volume_ml, tumour.bbox_min_mm) == (0, 0.0, None)
    assert tumour.intensity["CT"] == {"mean": None, "median": None, "std": None}
    assert (other.label, other.name, other.voxels) == (3, "3", 1)  # found, though not named


def test_box_follows_the_direction():
    segmentation, image = known_case()
    geometry = Geometry(shape=(4, 5, 6), spacing_zyx=SPACING, origin_xyz=ORIGIN, direction=ROTATED)
    liver = case_statistics("c", segmentation, image, geometry, {1: "liver"}, ["CT", "PET"]).labels[0]
    # x = 10 - 0.5 * (y index 1.5..3.5); y = -20 + 1 * (x index 0.5..3.5); z unchanged.
    assert liver.bbox_min_mm == pytest.approx([8.25, -19.5, 6.0])
    assert liver.bbox_max_mm == pytest.approx([9.25, -16.5, 10.0])


def test_pictures_have_an_area_and_a_pixel_box():
    segmentation = np.zeros((1, 4, 6), np.int16)
    segmentation[0, 1:3, 2:5] = 1  # 6 pixels
    image = np.ones((3, 1, 4, 6), np.float32)
    geometry = picture_geometry(4, 6, pixel_spacing=(0.5, 0.25))
    entry = case_statistics("p", segmentation, image, geometry, {1: "cell"}, ["R", "G", "B"]).labels[0]
    assert (entry.volume_ml, entry.area_mm2) == (None, pytest.approx(6 * 0.5 * 0.25))
    assert entry.bbox_min_mm == pytest.approx([1.5 * 0.25, 0.5 * 0.5])
    assert entry.bbox_max_mm == pytest.approx([4.5 * 0.25, 2.5 * 0.5])


def test_table_round_trips_and_writes_one_csv_row_per_case_and_label(tmp_path):
    segmentation, image = known_case()
    geometry = Geometry(shape=(4, 5, 6), spacing_zyx=SPACING, origin_xyz=ORIGIN)
    cases = [case_statistics(c, segmentation, image, geometry, {1: "liver", 2: "tumour"}, ["CT", "PET"])
             for c in ("a", "b")]
    table = StatisticsTable({"1": "liver", "2": "tumour"}, ["CT", "PET"], cases)
    _, csv_path = table.save(tmp_path)
    assert StatisticsTable.load(tmp_path) == table
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6 and rows[0]["case_id"] == "a" and rows[0]["name"] == "liver"
    assert float(rows[0]["volume_ml"]) == pytest.approx(0.012) and float(rows[0]["CT_mean"]) == 6.5
    assert float(rows[0]["bbox_max_z_mm"]) == 10.0
    assert rows[1]["CT_mean"] == "" and rows[1]["bbox_min_x_mm"] == ""  # tumour: absent
