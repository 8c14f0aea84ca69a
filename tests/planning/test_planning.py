"""Planner rules against hand-computed values; plans.json inheritance and validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import PlanError
from autoseg.fingerprint import CaseFingerprint, ChannelIntensity, Fingerprint
from autoseg.network.architecture import feature_map_elements
from autoseg.planning import Plans, format_plan_summary, plan_experiment
from autoseg.planning import rules
from autoseg.planning.planner import median_resampled_shape

INTENSITY = ChannelIntensity(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                             percentile_99_5=1.0)


def make_fingerprint(spacing=(1.0, 1.0, 1.0), shape=(40, 56, 40), channels=("MRI",), num_cases=20,
                     p10=None, relative_size=1.0, cases=()) -> Fingerprint:
    return Fingerprint(
        dataset_name="TaskT_Test", modality={str(i): c for i, c in enumerate(channels)},
        labels={"0": "background", "1": "a", "2": "b"}, num_cases=num_cases,
        median_spacing=list(spacing), spacing_percentile_10=list(p10 or spacing),
        median_cropped_shape=[float(n) for n in shape], median_relative_size_after_cropping=relative_size,
        intensity_per_channel={str(i): INTENSITY for i in range(len(channels))}, cases=list(cases),
    )


@pytest.fixture(scope="module")
def small_plans() -> Plans:
    return plan_experiment(make_fingerprint())


# --- transpose and target spacing ---------------------------------------------------------------
def test_transpose_puts_coarsest_axis_first_and_backward_undoes_it():
    assert rules.transpose_for([0.8, 0.8, 3.0]) == ([2, 0, 1], [1, 2, 0])
    assert rules.transpose_for([1.0, 5.0, 0.8]) == ([1, 0, 2], [1, 0, 2])
    assert rules.transpose_for([1.0, 1.0, 1.0]) == ([0, 1, 2], [0, 1, 2])
    array = np.zeros((2, 3, 4))
    forward, backward = rules.transpose_for([0.8, 0.8, 3.0])
    assert array.transpose(forward).shape == (4, 2, 3)
    assert array.transpose(forward).transpose(backward).shape == (2, 3, 4)


def test_anisotropic_coarse_axis_takes_its_10th_percentile():
    # 5 > 3 * 0.8 and 50 * 3 < 512: anisotropic, z spacing from the 10th percentile (3 mm).
    target = rules.fullres_target_spacing([5.0, 0.8, 0.8], [3.0, 0.7, 0.7], [50, 512, 512])
    assert target == [3.0, 0.8, 0.8]


def test_anisotropic_percentile_never_finer_than_other_axes():
    target = rules.fullres_target_spacing([5.0, 0.8, 0.8], [0.5, 0.7, 0.7], [50, 512, 512])
    assert target == pytest.approx([0.8 + 1e-5, 0.8, 0.8], abs=1e-9)


def test_not_anisotropic_keeps_the_median():
    # z is 5 mm but not short (200 * 3 >= 512): median kept.
    assert rules.fullres_target_spacing([5.0, 0.8, 0.8], [3.0, 0.7, 0.7], [200, 512, 512]) == [5.0, 0.8, 0.8]
    # 2.4 mm is not > 3 x 0.8 mm.
    assert rules.fullres_target_spacing([2.4, 0.8, 0.8], [1.0, 0.7, 0.7], [50, 512, 512]) == [2.4, 0.8, 0.8]


def test_median_resampled_shape_uses_cases_when_present():
    # Per case at 2.5 mm: 10@5 -> 20, 20@5 -> 40, 50@1 -> 20: median 20. From the dataset medians
    # (20 slices at 5 mm) it would be 40.
    cases = [CaseFingerprint(f"c{i}", [s, 1.0, 1.0], [n, 64, 64], [n, 64, 64], [[0, n], [0, 64], [0, 64]], {})
             for i, (n, s) in enumerate([(10, 5.0), (20, 5.0), (50, 1.0)])]
    with_cases = make_fingerprint(spacing=(5.0, 1.0, 1.0), shape=(20, 64, 64), cases=cases)
    assert median_resampled_shape(with_cases, [2.5, 1.0, 1.0]) == [20.0, 64.0, 64.0]
    without_cases = make_fingerprint(spacing=(5.0, 1.0, 1.0), shape=(20, 64, 64))
    assert median_resampled_shape(without_cases, [2.5, 1.0, 1.0]) == [40.0, 64.0, 64.0]


def test_median_resampled_shape_never_has_an_empty_axis():
    # One 1 mm slice at a 5 mm target rounds to 0 slices; a resampled axis keeps at least one voxel,
    # as preprocessing gives it (both use autoseg.preprocessing.resampling.new_shape_for).
    cases = [CaseFingerprint("c0", [1.0, 1.0, 1.0], [1, 64, 64], [1, 64, 64], [[0, 1], [0, 64], [0, 64]], {})]
    fingerprint = make_fingerprint(spacing=(1.0, 1.0, 1.0), shape=(1, 64, 64), cases=cases)
    assert median_resampled_shape(fingerprint, [5.0, 1.0, 1.0]) == [1.0, 64.0, 64.0]
    without_cases = make_fingerprint(spacing=(1.0, 1.0, 1.0), shape=(1, 64, 64))
    assert median_resampled_shape(without_cases, [5.0, 1.0, 1.0]) == [1.0, 64.0, 64.0]


# --- normalization ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, relative_size, expected", [
    ("CT", 0.5, ("ct", False)),
    ("ct", 1.0, ("ct", False)),
    ("T2", 0.5, ("zscore", True)),
    ("T2", 0.9, ("zscore", False)),
    ("FLAIR", 0.75, ("zscore", True)),  # cropping removed exactly a quarter: the mask is used
    ("FLAIR", 0.76, ("zscore", False)),
    ("noNorm", 0.5, ("none", False)),
    ("none", 0.5, ("none", False)),
    ("R", 0.5, ("rgb_to_0_1", False)),
    ("rgb", 1.0, ("rgb_to_0_1", False)),
])
def test_normalization_choice(name, relative_size, expected):
    assert rules.normalization_for(name, relative_size) == expected


# --- topology -----------------------------------------------------------------------------------
def test_topology_isotropic_pools_until_edge_4():
    # 64 -> 32 -> 16 -> 8 -> 4: 4 poolings, 5 stages, 3x3x3 kernels everywhere.
    topology = rules.topology_for([1.0, 1.0, 1.0], [64, 64, 64], 3)
    assert topology.strides == [[1, 1, 1]] + [[2, 2, 2]] * 4
    assert topology.kernel_sizes == [[3, 3, 3]] * 5
    assert topology.divisor == [16, 16, 16]
    assert topology.patch_size == [64, 64, 64]


def test_topology_anisotropic_gets_in_plane_kernels_first():
    # z is 4x coarser: in-plane pooled twice alone (spacing 1 -> 2 -> 4), then all axes together
    # (16 -> 8 -> 4 in z), then in-plane once more (8 -> 4); kernel 1 on z while z >= 2x the finest.
    topology = rules.topology_for([4.0, 1.0, 1.0], [16, 128, 128], 3)
    assert topology.strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert topology.kernel_sizes == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert topology.divisor == [4, 32, 32]


def test_topology_pads_patch_to_the_total_pooling():
    # 60 -> 30 -> 15 -> 8 -> 4: 4 poolings, so the patch must be a multiple of 16: 64.
    assert rules.topology_for([1.0, 1.0, 1.0], [60, 60, 60], 3).patch_size == [64, 64, 64]


def test_topology_lone_axis_needs_three_minimal_edges():
    # (10, 64) -> (5, 32) -> (5, 16) -> (5, 8): the lone axis stops at 8 < 12.
    topology = rules.topology_for([1.0, 1.0], [10, 64], 2)
    assert topology.strides == [[1, 1], [2, 2], [1, 2], [1, 2]]
    assert topology.divisor == [2, 8]


def test_topology_stage_cap():
    assert len(rules.topology_for([1.0, 1.0], [2048, 2048], 2).strides) == 8
    assert len(rules.topology_for([1.0, 1.0, 1.0], [512, 512, 512], 3).strides) == 7


def test_features_double_and_cap():
    assert rules.features_per_stage(7, 3) == [32, 64, 128, 256, 320, 320, 320]
    assert rules.features_per_stage(8, 2) == [32, 64, 128, 256, 512, 512, 512, 512]


# --- patch, memory, batch -----------------------------------------------------------------------
def test_initial_patch_same_physical_extent_and_clipped():
    assert rules.initial_patch_size([1.0, 1.0, 1.0], [500, 500, 500], 3) == [256, 256, 256]
    assert rules.initial_patch_size([1.0, 1.0, 1.0], [100, 500, 500], 3) == [100, 256, 256]
    # z twice as coarse: extent 2 * 161 = 323 mm, volume 161 * 323 * 323 ~ 256^3 (256 * 2^(1/3) = 322.5).
    assert rules.initial_patch_size([2.0, 1.0, 1.0], [500, 500, 500], 3) == [161, 323, 323]
    assert rules.initial_patch_size([1.0, 1.0], [4000, 4000], 2) == [2048, 2048]


def test_estimated_memory_calibration():
    assert rules.estimated_memory_gb(560_000_000, 2, 3) == pytest.approx(8.0)
    assert rules.estimated_memory_gb(85_000_000, 12, 2) == pytest.approx(8.0)
    assert rules.estimated_memory_gb(280_000_000, 2, 3) == pytest.approx(4.0)


def test_batch_size_from_memory_rounds_down():
    # 8 GB 3D budget = 560e6 * 2 elements; a sample of 1/5.5 of it: 5 fit (nnU-Net would round to 6).
    elements = int(560e6 * 2 / 5.5)
    assert rules.batch_size_for(elements, [64, 64, 64], dataset_voxels=1e12, gpu_memory_gb=8) == 5


def test_batch_size_capped_by_dataset_coverage_and_at_least_two():
    elements = int(560e6 * 2 / 100)  # memory alone allows 100
    # 5% of 10 cases of 64^3 = 131072 voxels = 4 patches of 32^3.
    assert rules.batch_size_for(elements, [32, 32, 32], dataset_voxels=10 * 64**3, gpu_memory_gb=8) == 4
    # one case: 5% is 0.4 patches -> 0, raised to the minimum 2.
    assert rules.batch_size_for(elements, [32, 32, 32], dataset_voxels=64**3, gpu_memory_gb=8) == 2
    # far too big a sample: still the minimum 2.
    assert rules.batch_size_for(10**12, [32, 32, 32], dataset_voxels=1e12, gpu_memory_gb=8) == 2


def test_fit_patch_to_memory_fits_and_shrinks_the_relatively_largest_axis():
    fitted = rules.fit_patch_to_memory([1.0, 1.0, 1.0], [64, 512, 512], [64, 256, 256], 1, 2, gpu_memory_gb=2)
    budget = rules.memory_budget_elements(3, 2)
    assert fitted.feature_map_elements * 2 <= budget
    assert fitted.feature_map_elements == feature_map_elements(fitted.architecture, fitted.patch_size)
    assert all(p % d == 0 for p, d in zip(fitted.patch_size, fitted.architecture.total_downsampling()))
    # z covers the whole median (ratio 1) while y/x cover half: z is shortened first.
    assert fitted.patch_size[0] < 64


def test_fit_patch_to_memory_raises_when_nothing_fits():
    with pytest.raises(PlanError, match="gpu_memory_gb"):
        rules.fit_patch_to_memory([1.0, 1.0, 1.0], [64, 64, 64], [64, 64, 64], 1, 2, gpu_memory_gb=1e-9)


# --- lowres -------------------------------------------------------------------------------------
def test_lowres_spacing_grows_fine_axes_first():
    steps = rules.lowres_spacings([5.0, 0.8, 0.8])
    assert next(steps) == pytest.approx([5.0, 0.824, 0.824])
    assert next(rules.lowres_spacings([1.0, 1.0, 1.0])) == pytest.approx([1.03, 1.03, 1.03])


def test_lowres_needed_and_worthwhile():
    assert rules.needs_lowres([128, 128, 128], [512, 512, 512])  # covers 1/64
    assert not rules.needs_lowres([64, 128, 128], [128, 128, 128])  # covers 1/2
    assert not rules.lowres_is_worthwhile([100, 100, 100], [80, 80, 80])  # 1.95x smaller
    assert rules.lowres_is_worthwhile([100, 100, 100], [79, 79, 79])  # 2.03x smaller


def test_large_isotropic_image_gets_lowres_and_cascade():
    plans = plan_experiment(make_fingerprint(shape=(400, 400, 400), channels=("CT",)))
    assert list(plans.configurations) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    fullres, lowres = plans.configuration("3d_fullres"), plans.configuration("3d_lowres")
    assert lowres.spacing[0] > fullres.spacing[0]
    assert rules.patch_coverage(lowres.patch_size, lowres.median_shape) >= 0.25 - 0.01  # rounded median shape
    assert (fullres.batch_dice, lowres.batch_dice) == (True, False)
    assert lowres.next_stage == "3d_cascade_fullres"
    cascade = plans.configuration("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and cascade.patch_size == fullres.patch_size


# --- planner ------------------------------------------------------------------------------------
def test_small_3d_dataset_plans(small_plans):
    assert list(small_plans.configurations) == ["2d", "3d_fullres"]
    fullres, two_d = small_plans.configuration("3d_fullres"), small_plans.configuration("2d")
    # 256^3 clipped to the median (40, 56, 40), then padded to multiples of 8: (40, 56, 40).
    assert fullres.patch_size == [40, 56, 40]
    assert fullres.batch_dice is False and two_d.batch_dice is True
    assert two_d.dimension == 2 and len(two_d.patch_size) == 2
    assert two_d.data_identifier == "3d_fullres"  # same in-plane spacing: shares the arrays
    assert fullres.architecture.name == "plain_unet" and fullres.architecture.num_classes == 3
    assert fullres.normalization == ["zscore"] and fullres.use_mask_for_norm == [False]


def test_2d_image_dataset_plans_only_2d():
    plans = plan_experiment(make_fingerprint(spacing=(999.0, 0.5, 0.5), shape=(1, 256, 256), channels=("R", "G", "B")))
    assert list(plans.configurations) == ["2d"]
    two_d = plans.configuration("2d")
    assert two_d.data_identifier == "2d"
    assert two_d.patch_size == [256, 256]
    assert two_d.normalization == ["rgb_to_0_1"] * 3
    assert two_d.architecture.input_channels == 3


def test_smaller_gpu_gives_smaller_batch_or_patch():
    big = plan_experiment(make_fingerprint(shape=(200, 200, 200)), gpu_memory_gb=8).configuration("3d_fullres")
    small = plan_experiment(make_fingerprint(shape=(200, 200, 200)), gpu_memory_gb=4).configuration("3d_fullres")
    assert np.prod(small.patch_size) < np.prod(big.patch_size)
    assert small.estimated_memory_gb <= 4.0 < big.estimated_memory_gb <= 8.0


# --- plans.json: inheritance, round trip, validation --------------------------------------------
def test_inheritance_overrides_and_round_trips(small_plans, tmp_path):
    data = small_plans.to_json()
    data["configurations"]["3d_fullres_bs8"] = {"inherits_from": "3d_fullres", "batch_size": 8}
    data["configurations"]["3d_fullres_bs8_nodice"] = {"inherits_from": "3d_fullres_bs8", "batch_dice": True}
    plans = Plans.from_json(data)
    derived = plans.configuration("3d_fullres_bs8_nodice")
    assert derived.batch_size == 8 and derived.batch_dice is True
    assert derived.patch_size == small_plans.configuration("3d_fullres").patch_size
    plans.save(tmp_path / "plans.json")
    assert Plans.load(tmp_path / "plans.json").to_json() == data


def _bad(small_plans, edit) -> str:
    data = copy.deepcopy(small_plans.to_json())
    edit(data)
    with pytest.raises(PlanError) as error:
        Plans.from_json(data, where="plans.json")
    return str(error.value)


def _fullres(data):
    return data["configurations"]["3d_fullres"]


def test_unknown_schema_version(small_plans):
    assert "schema_version" in _bad(small_plans, lambda d: d.update(schema_version=99))


def test_missing_top_level_field(small_plans):
    assert "'labels'" in _bad(small_plans, lambda d: d.pop("labels"))


def test_missing_configuration_field(small_plans):
    message = _bad(small_plans, lambda d: _fullres(d).pop("batch_size"))
    assert "'3d_fullres'" in message and "'batch_size'" in message


def test_unknown_configuration_field(small_plans):
    assert "'batchsize'" in _bad(small_plans, lambda d: _fullres(d).update(batchsize=4))


def test_patch_length_must_match_dimension(small_plans):
    assert "'patch_size'" in _bad(small_plans, lambda d: _fullres(d).update(patch_size=[40, 56]))


def test_patch_must_be_divisible_by_total_downsampling(small_plans):
    message = _bad(small_plans, lambda d: _fullres(d).update(patch_size=[40, 56, 41]))
    assert "'patch_size'" in message and "divisible" in message


def test_batch_size_at_least_one(small_plans):
    assert "'batch_size'" in _bad(small_plans, lambda d: _fullres(d).update(batch_size=0))


def test_unknown_normalization(small_plans):
    message = _bad(small_plans, lambda d: _fullres(d).update(normalization=["minmax"]))
    assert "'normalization'" in message and "minmax" in message


def test_normalization_per_channel(small_plans):
    message = _bad(small_plans, lambda d: _fullres(d).update(normalization=["zscore", "zscore"]))
    assert "'normalization'" in message and "1 channels" in message


def test_unknown_architecture(small_plans):
    message = _bad(small_plans, lambda d: _fullres(d)["architecture"].update(name="my.module.Net"))
    assert "'architecture'" in message and "my.module.Net" in message


def test_inheritance_from_missing_configuration(small_plans):
    message = _bad(small_plans, lambda d: d["configurations"].update(x={"inherits_from": "3d_highres"}))
    assert "'inherits_from'" in message and "3d_highres" in message


def test_inheritance_cycle(small_plans):
    def make_cycle(d):
        d["configurations"]["a"] = {"inherits_from": "b"}
        d["configurations"]["b"] = {"inherits_from": "a"}
    assert "cycle" in _bad(small_plans, make_cycle)


def test_unknown_configuration_lists_available(small_plans):
    with pytest.raises(PlanError, match="available: 2d, 3d_fullres"):
        small_plans.configuration("3d_lowres")


def test_load_error_names_the_file(small_plans, tmp_path):
    data = small_plans.to_json()
    _fullres(data)["batch_size"] = -1
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=str(path)):
        Plans.load(path)


# --- summary ------------------------------------------------------------------------------------
def test_summary_shows_configurations_and_notes():
    plans = plan_experiment(make_fingerprint(spacing=(5.0, 0.8, 0.8), p10=(3.0, 0.8, 0.8), shape=(50, 512, 512),
                                             channels=("CT",)))
    text = format_plan_summary(plans)
    fullres = plans.configuration("3d_fullres")
    assert "3d_fullres" in text and "patch size" in text
    assert " x ".join(str(p) for p in fullres.patch_size) in text
    assert "anisotropic: coarse axis spacing 3 mm from the 10th percentile instead of the median 5 mm" in text
    assert "1 x 3 x 3" in text  # first-stage kernel of the stage table


# --- CLI ----------------------------------------------------------------------------------------
def _cli(*args):
    from typer.testing import CliRunner

    from autoseg.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_plan_fingerprints_first_records_the_task_and_prints_the_summary(small_ct_dataset, tmp_path):
    home = tmp_path / "home"
    result = _cli("--home", home, "plan", small_ct_dataset, "-j", "1")
    assert result.exit_code == 0, result.output
    preprocessed = home / "preprocessed" / "Task900_Demo"
    plans = Plans.load(preprocessed / "plans.json")
    fingerprint = Fingerprint.load(preprocessed / "fingerprint.json")  # run first, as none existed
    assert plans.fingerprint_signature == fingerprint.dataset_signature != ""
    for row in ("target spacing (mm)", "median shape (voxels)", "patch size", "batch size", "stages",
                "normalization", "estimated memory (GB)", "3d_fullres stages:", "stride", "kernel"):
        assert row in result.output
    fullres = plans.configuration("3d_fullres")
    assert " x ".join(str(p) for p in fullres.patch_size) in result.output
    assert json.loads((home / "current_task.json").read_text())["task"] == "Task900_Demo"


def test_cli_plan_from_a_fingerprint_file_with_a_memory_budget(tmp_path):
    """What the plan holds: tests/stages/test_plan.py."""
    reference = Path(__file__).resolve().parents[2] / "fingerprints" / "Task03_Liver.json"
    home = tmp_path / "home"
    result = _cli("--home", home, "plan", "--fingerprint", reference, "--gpu-memory", "4")
    assert result.exit_code == 0, result.output
    assert "plans for a 4 GB GPU" in result.output
    assert "current task" not in result.output
    both = _cli("--home", home, "plan", "Task03_Liver", "--fingerprint", reference)
    assert both.exit_code == 1 and "not both" in both.output


def test_cli_plan_bad_fingerprint_file_is_one_line(tmp_path):
    bad = tmp_path / "fingerprint.json"
    bad.write_text('{"schema_version": 2, "dataset_name": "x"}')
    result = _cli("--home", tmp_path, "plan", "--fingerprint", bad)
    assert result.exit_code == 1 and str(bad) in result.output and "malformed fingerprint" in result.output
    assert "Traceback" not in result.output


def test_cli_replanning_names_the_configurations_kept_and_dropped(tmp_path):
    """Which configurations are kept, and the plan they follow: tests/stages/test_plan.py."""
    reference = Path(__file__).resolve().parents[2] / "fingerprints" / "Task03_Liver.json"
    home = tmp_path / "home"
    assert _cli("--home", home, "plan", "--fingerprint", reference).exit_code == 0
    plans_file = home / "preprocessed" / "Task03_Liver" / "plans.json"
    data = json.loads(plans_file.read_text())
    data["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    data["configurations"]["from_lowres"] = {"inherits_from": "3d_midres"}  # not a configuration autoseg makes
    data["configurations"]["copied"] = dict(data["configurations"]["3d_fullres"])  # complete: the old plan's
    plans_file.write_text(json.dumps(data))

    result = _cli("--home", home, "plan", "--fingerprint", reference, "--gpu-memory", "4")
    assert result.exit_code == 0, result.output
    assert "kept your configuration 3d_fullres_bs4 from the previous plans.json" in result.output
    assert "dropped configuration from_lowres" in result.stderr and "dropped configuration copied" in result.stderr
