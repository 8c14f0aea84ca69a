"""preprocess_case / restore_to_original on small synthetic cases, and the resumable store."""

import json
import os

import numpy as np
import pytest

from autoseg.dataset import Case
from autoseg.io import Geometry, write_image, write_segmentation
from autoseg.preprocessing.pipeline import (CaseProperties, preprocess_case, restore_to_original,
                                            sample_foreground_locations)
from autoseg.preprocessing.store import CasePreprocessor, load_case, preprocess_dataset, worker_count

ZSCORE = dict(normalization=["zscore"], use_mask_for_norm=[True], intensity_stats={})


def anisotropic_case():
    """Original (z, y, x) = (24, 10, 32) at (0.8, 3.0, 0.8) mm: thick axis y. A nonzero body
    z 2..22, y 1..9, x 4..28 less a zero corner z 2..6, x 4..8 (outside the nonzero region, so -1 in
    the stored segmentation), and a block label z 6..14, y 3..7, x 8..20 (edges at even offsets from
    the body, so halving the in-plane resolution keeps them on voxel borders)."""
    rng = np.random.default_rng(0)
    image = np.zeros((1, 24, 10, 32), dtype=np.float32)
    image[0, 2:22, 1:9, 4:28] = 100 + 10 * rng.standard_normal((20, 8, 24))
    image[0, 2:6, :, 4:8] = 0
    seg = np.zeros((24, 10, 32), dtype=np.int16)
    seg[6:14, 3:7, 8:20] = 1
    return image, seg, Geometry(shape=(24, 10, 32), spacing_zyx=(0.8, 3.0, 0.8))


def preprocess_anisotropic(**overrides):
    image, seg, geometry = anisotropic_case()
    settings = dict(transpose_forward=[1, 0, 2], target_spacing=[3.0, 1.6, 1.6], **ZSCORE)
    settings.update(overrides)
    return preprocess_case(image, seg, geometry, case_id="case_a", **settings)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_preprocess_transposes_crops_and_resamples():
    data, seg, props = preprocess_anisotropic()
    # transposed cropped shape (y, z, x) = (8, 20, 24); in-plane halved -> (8, 10, 12)
    assert data.shape == (1, 8, 10, 12) and data.dtype == np.float32
    assert seg.shape == (8, 10, 12) and seg.dtype == np.int16
    assert props.crop_box == [[2, 22], [1, 9], [4, 28]]  # original (z, y, x) order
    assert props.shape_after_crop == [20, 8, 24]
    assert props.shape_after_resampling == [8, 10, 12]
    assert props.spacing_after_resampling == [3.0, 1.6, 1.6]
    assert set(np.unique(seg)) == {-1, 0, 1}


def test_masked_zscore_happens_before_resampling_and_zeroes_outside():
    # Target = the transposed original spacing: no resampling, so the normalized values show as they are.
    data, seg, _ = preprocess_anisotropic(target_spacing=[3.0, 0.8, 0.8])
    assert data.shape == (1, 8, 20, 24)
    assert np.all(data[0][seg == -1] == 0)
    inside = data[0][seg >= 0]
    assert abs(float(inside.mean())) < 1e-5 and abs(float(inside.std()) - 1.0) < 1e-5


def test_2d_configuration_keeps_axis_0_spacing():
    data, _, props = preprocess_anisotropic(target_spacing=[99.0, 1.6, 1.6], is_2d_config=True)
    assert data.shape[1] == 8 and props.spacing_after_resampling == [3.0, 1.6, 1.6]


def test_properties_round_trip_through_json():
    _, _, props = preprocess_anisotropic()
    again = CaseProperties.from_json(json.loads(json.dumps(props.to_json())))
    assert again == props
    assert again.transpose_backward == [1, 0, 2]


def test_foreground_locations_point_at_their_labels():
    seg = np.zeros((3, 4, 5), dtype=np.int16)
    seg[1, 1:3, 1:4] = 1  # 6 voxels
    seg[2, 0, 0] = 3
    locations = sample_foreground_locations(seg, samples_per_label=4)
    assert sorted(locations) == ["1", "3"]  # label 2 absent: no key
    assert len(locations["1"]) == 4 and len({tuple(p) for p in locations["1"]}) == 4
    assert all(seg[tuple(p)] == 1 for p in locations["1"])
    assert locations["3"] == [[2, 0, 0]]
    assert sample_foreground_locations(seg, samples_per_label=4) == locations  # seeded


def test_segmentation_goes_back_to_the_same_voxels():
    _, seg, geometry = anisotropic_case()
    _, preprocessed_seg, props = preprocess_anisotropic()
    prediction = np.maximum(preprocessed_seg, 0)  # a network predicts background where -1 was stored
    restored = restore_to_original(prediction, props, is_segmentation=True)
    assert restored.shape == seg.shape
    assert dice(restored == 1, seg == 1) > 0.99
    assert set(np.unique(restored)) == {0, 1}


def test_probabilities_go_back_with_background_outside_the_crop_box():
    _, preprocessed_seg, props = preprocess_anisotropic()
    one_hot = np.stack([(preprocessed_seg <= 0), (preprocessed_seg == 1)]).astype(np.float32)
    restored = restore_to_original(one_hot, props, is_segmentation=False)
    assert restored.shape == (2, 24, 10, 32) and restored.dtype == np.float32
    np.testing.assert_allclose(restored.sum(axis=0), 1.0, atol=1e-6)  # linear weights keep the sum
    assert restored[0, 0].min() == 1.0 and restored[1, :, :, :4].max() == 0.0  # z=0 and x<4: outside the box
    _, seg, _ = anisotropic_case()
    assert dice(restored.argmax(axis=0) == 1, seg == 1) > 0.99


def test_inference_without_segmentation_gives_the_same_image():
    image, seg, geometry = anisotropic_case()
    settings = dict(transpose_forward=[1, 0, 2], target_spacing=[3.0, 1.6, 1.6], **ZSCORE)
    with_seg, _, _ = preprocess_case(image, seg, geometry, **settings)
    without, no_seg, props = preprocess_case(image, None, geometry, **settings)
    assert no_seg is None and props.foreground_locations == {}
    np.testing.assert_array_equal(with_seg, without)


# --- store -------------------------------------------------------------------------------------

def write_case(folder, case_id, shift=0):
    image, seg, geometry = anisotropic_case()
    image_file = write_image(image[0] + shift, geometry, folder / f"{case_id}_0000.nii.gz")
    label_file = write_segmentation(seg, geometry, folder / f"{case_id}.nii.gz")
    return Case(case_id, (image_file,), label_file)


@pytest.fixture
def preprocessor():
    return CasePreprocessor(transpose_forward=[1, 0, 2], target_spacing=[3.0, 1.6, 1.6], **ZSCORE)


def test_store_skips_finished_cases_and_redoes_modified_ones(tmp_path, preprocessor):
    cases = [write_case(tmp_path, "a"), write_case(tmp_path, "b")]
    out = tmp_path / "pre"
    seen = []
    first = preprocess_dataset(cases, preprocessor, out, workers=0, progress=lambda c, o: seen.append((c, o)))
    assert first.written == ["a", "b"] and not first.failures and seen == [("a", "written"), ("b", "written")]
    second = preprocess_dataset(cases, preprocessor, out, workers=0)
    assert second.skipped == ["a", "b"] and second.written == []
    write_case(tmp_path, "b", shift=5)
    stat = os.stat(cases[1].image_files[0])
    os.utime(cases[1].image_files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # surely a new mtime
    third = preprocess_dataset(cases, preprocessor, out, workers=0)
    assert third.skipped == ["a"] and third.written == ["b"]
    other_settings = CasePreprocessor(transpose_forward=[0, 1, 2], target_spacing=[0.8, 3.0, 0.8], **ZSCORE)
    assert preprocess_dataset(cases[:1], other_settings, out, workers=0).written == ["a"]


def test_store_reports_a_failing_case_and_writes_the_others_in_workers(tmp_path, preprocessor):
    cases = [write_case(tmp_path, "good1"), write_case(tmp_path, "bad"), write_case(tmp_path, "good2")]
    cases[1].image_files[0].write_bytes(b"not an image")
    summary = preprocess_dataset(cases, preprocessor, tmp_path / "pre", workers=2)
    assert sorted(summary.written) == ["good1", "good2"]
    assert [f.case_id for f in summary.failures] == ["bad"]
    assert "ImageReadError" in summary.failures[0].error
    data, seg, props = load_case(tmp_path / "pre", "good2")
    assert isinstance(data, np.memmap) and data.shape == (1, 8, 10, 12) and seg.dtype == np.int16
    assert props.case_id == "good2" and props.source_signature and "1" in props.foreground_locations
    assert not (tmp_path / "pre" / "bad.json").exists()


def test_worker_count_is_bounded_by_cpus_cases_and_memory():
    gib = 2**30
    assert worker_count(8, peak_bytes_per_case=gib, available_bytes=100 * gib, cpu_count=2, num_cases=10) == 2
    assert worker_count(8, peak_bytes_per_case=gib, available_bytes=100 * gib, cpu_count=16, num_cases=3) == 3
    assert worker_count(8, peak_bytes_per_case=3 * gib, available_bytes=10 * gib, cpu_count=16, num_cases=10) == 3
    assert worker_count(8, peak_bytes_per_case=30 * gib, available_bytes=10 * gib, cpu_count=16, num_cases=10) == 1
    assert worker_count(0, peak_bytes_per_case=gib, available_bytes=100 * gib, cpu_count=16, num_cases=10) == 0
