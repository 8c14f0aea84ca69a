"""preprocess_case / restore_to_original on small synthetic cases, and the resumable store."""

import json
import os

import numpy as np
import pytest

from autoseg.case_validation import CaseRequirements
from autoseg.dataset import Case
from autoseg.errors import WorkspaceError
from autoseg.io import Geometry, write_image, write_segmentation
from autoseg.preprocessing.pipeline import (CaseProperties, preprocess_case, restore_to_original,
                                            sample_foreground_locations, target_spacing_for)
from autoseg.preprocessing.store import CasePreprocessor, load_case, preprocess_dataset, worker_count

ZSCORE = dict(normalization=["zscore"], use_mask_for_norm=[True], intensity_stats={})
ONE_CHANNEL_VOLUMES = CaseRequirements(num_channels=1, labels=(0, 1), pictures=False)  # what the cases below are


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
    return CasePreprocessor(transpose_forward=[1, 0, 2], target_spacing=[3.0, 1.6, 1.6],
                            requirements=ONE_CHANNEL_VOLUMES, **ZSCORE)


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
    other_settings = CasePreprocessor(transpose_forward=[0, 1, 2], target_spacing=[0.8, 3.0, 0.8],
                                      requirements=ONE_CHANNEL_VOLUMES, **ZSCORE)
    assert preprocess_dataset(cases[:1], other_settings, out, workers=0).written == ["a"]


def test_preprocessor_applies_its_settings_to_arrays_already_read(preprocessor):
    image, seg, geometry = anisotropic_case()
    data, stored_seg, properties = preprocessor.preprocess(image, seg, geometry, "case_a")
    expected_data, expected_seg, expected_properties = preprocess_anisotropic()
    np.testing.assert_array_equal(data, expected_data)
    np.testing.assert_array_equal(stored_seg, expected_seg)
    assert properties == expected_properties


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


def test_peak_memory_estimate_reads_the_header_and_follows_the_target_spacing(tmp_path):
    case = write_case(tmp_path, "a")  # (24, 10, 32) at (0.8, 3.0, 0.8) mm: transposed (3.0, 0.8, 0.8)
    bytes_per_voxel = 4 * 4  # PEAK_MEMORY_FACTOR x float32, one channel
    coarser = CasePreprocessor(transpose_forward=[1, 0, 2], target_spacing=[3.0, 1.6, 1.6],
                               requirements=ONE_CHANNEL_VOLUMES, **ZSCORE)
    assert coarser.estimated_peak_bytes(case) == bytes_per_voxel * 24 * 10 * 32  # the original is larger
    finer = CasePreprocessor(transpose_forward=[1, 0, 2], target_spacing=[1.5, 0.8, 0.8],
                             requirements=ONE_CHANNEL_VOLUMES, **ZSCORE)
    assert finer.estimated_peak_bytes(case) == bytes_per_voxel * 24 * 10 * 32 * 2
    in_plane = CasePreprocessor(transpose_forward=[1, 0, 2], target_spacing=[1.5, 0.8, 0.8], is_2d_config=True,
                                requirements=ONE_CHANNEL_VOLUMES, **ZSCORE)
    assert in_plane.estimated_peak_bytes(case) == bytes_per_voxel * 24 * 10 * 32  # 2d keeps axis 0


def test_target_spacing_of_a_2d_configuration_keeps_the_cases_axis_0():
    assert target_spacing_for([3.0, 0.8, 0.7], [99.0, 1.6, 1.6], is_2d_config=True) == [3.0, 1.6, 1.6]
    assert target_spacing_for([3.0, 0.8, 0.7], [99.0, 1.6, 1.6], is_2d_config=False) == [99.0, 1.6, 1.6]


def test_thick_slices_are_resampled_in_plane_then_nearest_along_the_coarse_axis():
    # (z, y, x) = (4, 8, 8) at (4, 1, 1) mm, slice z holding the value z + 1 everywhere inside; target
    # (2, 0.5, 0.5): 4 / 1 > 3, so every output slice copies one input slice (2k and 2k+1 <- k),
    # never a cubic blend of two.
    image = np.zeros((1, 4, 8, 8), np.float32)
    for z in range(4):
        image[0, z] = z + 1.0
    data, _, props = preprocess_case(image, None, Geometry((4, 8, 8), (4.0, 1.0, 1.0)), transpose_forward=[0, 1, 2],
                                     target_spacing=[2.0, 0.5, 0.5], normalization=["none"], use_mask_for_norm=[False],
                                     intensity_stats={})
    assert data.shape == (1, 8, 16, 16) and props.shape_after_resampling == [8, 16, 16]
    assert [float(v) for v in data[0, :, 8, 8]] == [1, 1, 2, 2, 3, 3, 4, 4]
    np.testing.assert_allclose(data[0, 3], 2.0, atol=1e-5)  # constant in-plane stays constant


def test_stored_properties_give_back_the_original_geometry(tmp_path):
    # An oblique, offset image on disk -> preprocess -> store -> restore a prediction -> write it: the
    # written file has the input's exact grid (shape, spacing, origin, direction).
    image, seg, _ = anisotropic_case()
    geometry = Geometry(shape=(24, 10, 32), spacing_zyx=(0.8, 3.0, 0.8), origin_xyz=(-12.5, 40.0, 7.25),
                        direction=(0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    image_file = write_image(image[0], geometry, tmp_path / "c_0000.nii.gz")
    label_file = write_segmentation(seg, geometry, tmp_path / "c.nii.gz")
    preprocessor = CasePreprocessor(transpose_forward=[1, 0, 2], target_spacing=[3.0, 1.6, 1.6],
                                    requirements=ONE_CHANNEL_VOLUMES, **ZSCORE)
    assert preprocess_dataset([Case("c", (image_file,), label_file)], preprocessor, tmp_path / "pre", workers=0).written
    _, stored_seg, props = load_case(tmp_path / "pre", "c")
    from autoseg.io import read_image, read_segmentation

    assert props.original_geometry.agrees_with(read_image(image_file)[1], tolerance=1e-6) is None
    restored = restore_to_original(np.maximum(np.asarray(stored_seg), 0), props, is_segmentation=True)
    written = write_segmentation(restored, props.original_geometry, tmp_path / "prediction.nii.gz")
    written_seg, written_geometry = read_segmentation(written)
    assert written_geometry.agrees_with(read_segmentation(label_file)[1], tolerance=1e-6) is None
    assert dice(written_seg == 1, seg == 1) > 0.99


# --- CLI -----------------------------------------------------------------------------------------

def _cli(*args):
    from typer.testing import CliRunner

    from autoseg.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_preprocess_the_planned_task_then_skip_it(small_ct_dataset, tmp_path):
    home = tmp_path / "home"
    assert _cli("--home", home, "plan", small_ct_dataset, "-j", "1").exit_code == 0
    result = _cli("--home", home, "preprocess", "-c", "3d_fullres", "-j", "0")  # TASK: the task planned last
    assert result.exit_code == 0, result.output
    assert "3d_fullres: 6 written, 0 up to date, 0 failed" in result.output
    folder = home / "preprocessed" / "Task900_Demo"
    assert sorted(p.name for p in (folder / "3d_fullres").glob("*.json"))[:2] == ["demo_000.json", "demo_001.json"]
    assert len(list((folder / "gt_segmentations").iterdir())) == 6
    # 2d reads the 3d_fullres arrays: nothing to do for it
    again = _cli("--home", home, "preprocess", "-c", "2d", "-j", "2")
    assert again.exit_code == 0 and "3d_fullres: 0 written, 6 up to date, 0 failed" in again.output
    unknown = _cli("--home", home, "preprocess", "-c", "3d_highres")
    assert unknown.exit_code == 1 and "no configuration '3d_highres'" in unknown.output


def test_cli_preprocess_refuses_a_stale_or_broken_plan(writable_dataset, tmp_path):
    home = tmp_path / "home"
    assert _cli("--home", home, "plan", writable_dataset, "-j", "1").exit_code == 0
    plans_file = home / "preprocessed" / "Task900_Demo" / "plans.json"
    image = writable_dataset / "imagesTr" / "demo_002.nii.gz"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # the dataset changed
    stale = _cli("--home", home, "preprocess", "-j", "0")
    assert stale.exit_code == 1
    assert str(plans_file) in stale.output and "field 'fingerprint_signature'" in stale.output
    assert "re-run `autoseg plan" in stale.output and not (plans_file.parent / "3d_fullres").exists()
    assert _cli("--home", home, "plan", writable_dataset, "-j", "1").exit_code == 0
    data = json.loads(plans_file.read_text())
    data["configurations"]["3d_fullres"]["patch_size"] = [20, 32, 33]  # hand-edited, not divisible
    plans_file.write_text(json.dumps(data))
    broken = _cli("--home", home, "preprocess", "-j", "0")
    assert broken.exit_code == 1 and "'patch_size'" in broken.output and "Traceback" not in broken.output


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    from autoseg.artifacts import read_json, write_atomic, write_json

    path = write_json(tmp_path / "props.json", {"version": 1})

    def crash(tmp_name):
        with open(tmp_name, "w") as f:
            f.write('{"version": 2, "trunc')  # half written, then the process dies
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, crash)
    assert read_json(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["props.json"]  # no temporary left behind


def test_a_case_interrupted_before_its_properties_is_redone(tmp_path, preprocessor):
    cases = [write_case(tmp_path, "a")]
    out = tmp_path / "pre"
    assert preprocess_dataset(cases, preprocessor, out, workers=0).written == ["a"]
    (out / "a.json").unlink()  # killed after the arrays, before the properties: not done
    assert preprocess_dataset(cases, preprocessor, out, workers=0).written == ["a"]
    (out / "a.json").unlink()
    with pytest.raises(WorkspaceError, match="case 'a' is not preprocessed"):
        load_case(out, "a")  # the trainer never reads a half-written case either


def test_reference_labels_are_copied_whole_or_not_at_all(tmp_path, monkeypatch):
    import shutil

    from autoseg.preprocessing.task import copy_reference_labels

    label = tmp_path / "labelsTr" / "case_1.nii.gz"
    label.parent.mkdir()
    label.write_bytes(os.urandom(100_000))
    case, target = Case("case_1", (tmp_path / "imagesTr" / "case_1.nii.gz",), label), tmp_path / "references"
    copy = target / "case_1.nii.gz"
    real_copy = shutil.copy2

    def killed_mid_copy(source, destination):
        with open(destination, "wb") as f:
            f.write(open(source, "rb").read()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copy2", killed_mid_copy)
    with pytest.raises(KeyboardInterrupt):
        copy_reference_labels([case], target)
    assert list(target.iterdir()) == []  # neither a truncated copy (newer than its label) nor the temporary file
    monkeypatch.setattr(shutil, "copy2", real_copy)
    copy_reference_labels([case], target)
    assert list(target.iterdir()) == [copy] and copy.read_bytes() == label.read_bytes()
    assert copy.stat().st_mtime_ns == label.stat().st_mtime_ns  # kept: a newer label is copied again
