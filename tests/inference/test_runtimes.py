"""Runtimes: each available one predicts the sliding window of a trained demo fold with the labels of torch
fp32; the probe measurement times with the clock it is given and refuses runtimes that disagree; `auto` is
measured once and read back from the workspace's cache (a different model measures again); unknown runtimes
and precisions an ONNX runtime lacks are one-line errors."""

import copy
import importlib.util
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.inference.case import PredictionSettings, predict_probabilities
from autoseg.inference.runtimes import (CALIBRATION_WINDOWS_PER_IMAGE, RuntimeMeasurement, RuntimeUnavailable,
                                        check_runtime, fastest_agreeing, label_agreement_dice, measure_runtimes,
                                        random_probe, runtime_candidates)
from autoseg.inference.sliding_window import probe_windows
from autoseg.stages.runtime import choose_runtime, settings_with_runtime
from autoseg.workspace import Workspace
from helpers_training import CONFIGURATION, small_task, trained_small_fold  # noqa: F401

ONNX_RUNTIMES_INSTALLED = [runtime for runtime, package in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"))
                           if importlib.util.find_spec(package)]


@pytest.fixture(scope="module")
def trained_model(small_task, trained_small_fold):
    from autoseg.inference.model import load_trained_model
    from autoseg.workspace import TaskResults

    return load_trained_model(TaskResults(trained_small_fold.results_folder), small_task.plans, CONFIGURATION,
                              device="cpu")


@pytest.fixture(scope="module")
def case_and_reference(trained_model, small_task):
    """A preprocessed case of the demo task and its probabilities by torch fp32 (no TTA)."""
    from autoseg.preprocessing.store import load_case

    data = load_case(small_task.data_folder, small_task.case_ids[0], mmap=False)[0]
    return data, predict_probabilities(trained_model, data, PredictionSettings(mirror_axes=(), precision="fp32"))


@pytest.mark.parametrize("runtime", ONNX_RUNTIMES_INSTALLED)
def test_each_runtime_predicts_the_labels_of_torch_fp32(runtime, trained_model, case_and_reference):
    data, reference = case_and_reference
    probabilities = predict_probabilities(trained_model, data, PredictionSettings(mirror_axes=(), runtime=runtime))
    num_classes = reference.shape[0]
    assert label_agreement_dice(reference.argmax(0).numpy(), probabilities.argmax(0).numpy(), num_classes) >= 0.999
    assert float((reference - probabilities).abs().max()) < 1e-3
    assert reference.argmax(0).max() > 0  # the trained fold finds its organ: labels were compared, not background


@pytest.mark.skipif("openvino" not in ONNX_RUNTIMES_INSTALLED, reason="openvino is not installed")
def test_openvino_bf16_predicts_the_labels_of_torch_fp32(trained_model, case_and_reference):
    data, reference = case_and_reference
    model = replace(trained_model, runtime_networks={})
    settings = PredictionSettings(mirror_axes=(), runtime="openvino", precision="bf16")
    probabilities = predict_probabilities(model, data, settings)
    num_classes = reference.shape[0]
    assert label_agreement_dice(reference.argmax(0).numpy(), probabilities.argmax(0).numpy(), num_classes) >= 0.999
    # Two networks kept on the model, one per arithmetic: asking for fp32 afterwards does not reuse bf16.
    predict_probabilities(model, data, replace(settings, precision="fp32"))
    assert sorted(model.runtime_networks) == ["openvino bf16", "openvino fp32"]


@pytest.mark.skipif("openvino" not in ONNX_RUNTIMES_INSTALLED, reason="openvino is not installed")
def test_openvino_int8_calibrated_on_the_task_keeps_the_labels_of_torch_fp32(trained_model, case_and_reference,
                                                                              small_task, tmp_path):
    from autoseg.preprocessing.store import load_case
    from autoseg.stages.runtime import calibration_windows

    data, reference = case_and_reference
    others = [load_case(small_task.data_folder, case_id, mmap=False)[0] for case_id in small_task.case_ids[1:4]]
    model = replace(trained_model, runtime_networks={})
    settings = settings_with_runtime(Workspace(tmp_path), [model],
                                     PredictionSettings(mirror_axes=(), runtime="openvino", precision="int8"),
                                     calibration_images=lambda: others)
    probabilities = predict_probabilities(model, data, settings)
    num_classes = reference.shape[0]
    assert label_agreement_dice(reference.argmax(0).numpy(), probabilities.argmax(0).numpy(), num_classes) >= 0.99
    assert float((reference - probabilities).abs().max()) > 1e-4  # it did compute in int8
    # Its int8 form is kept next to the export: a second model needs no images.
    assert len(list((tmp_path / "onnx_cache").glob("*.int8.onnx"))) == 1
    again = replace(trained_model, runtime_networks={})
    settings_with_runtime(Workspace(tmp_path), [again], settings)
    # Without images or a cached form, int8 is a one-line error.
    with pytest.raises(AutosegError, match="int8 needs images to calibrate on"):
        settings_with_runtime(Workspace(tmp_path / "empty"), [replace(trained_model, runtime_networks={})], settings)
    assert calibration_windows(others, trained_model).shape[0] == CALIBRATION_WINDOWS_PER_IMAGE * len(others)


def test_label_agreement_is_the_mean_foreground_dice():
    reference = np.array([0, 1, 1, 1, 2, 2])
    labels = np.array([0, 1, 1, 2, 2, 2])
    # class 1: 2 common of 3 + 2 -> 0.8; class 2: 2 common of 2 + 3 -> 0.8
    assert label_agreement_dice(reference, labels, 3) == pytest.approx(0.8)
    assert label_agreement_dice(np.zeros(4), np.zeros(4), 3) == 1.0


def test_reduced_precision_is_judged_on_the_mean_of_the_mirror_passes():
    from autoseg.inference.runtimes import measure_runtime
    from autoseg.inference.stitching import mirrored_mean

    def reference(batch):  # two classes, the logit difference 2x
        return torch.cat([batch, -batch], dim=1)

    z = torch.arange(8, dtype=torch.float32) - 3.5
    pattern = (3.0 * z.sign()).view(1, 1, 8, 1, 1)  # odd along z: a flip of z negates it

    def perturbed(batch):  # a single pass moves class 1 by the pattern, which the z-flipped passes cancel
        return torch.cat([batch, -batch + pattern], dim=1)

    probe = torch.from_numpy(random_probe((2, 1, 8, 8, 8)))
    reference_logits, mirrored = reference(probe), mirrored_mean(reference, probe, None, 2)
    one_pass = measure_runtime(perturbed, "torch", "bf16", probe, reference_logits)
    assert not one_pass.agrees and one_pass.label_agreement_dice < 0.9
    under_tta = measure_runtime(perturbed, "torch", "bf16", probe, reference_logits, mirror_axes=None,
                                reference_mirrored=mirrored)
    assert under_tta.agrees and under_tta.label_agreement_dice == 1.0
    # Mirroring only y and x keeps the perturbation: judged as predict would run it, it disagrees.
    in_plane = measure_runtime(perturbed, "torch", "bf16", probe, reference_logits, mirror_axes=(1, 2),
                               reference_mirrored=mirrored_mean(reference, probe, (1, 2), 2))
    assert not in_plane.agrees


def test_the_probe_times_with_the_given_clock_and_compares_with_torch():
    from autoseg.network import build_network
    from autoseg.network.architecture import Architecture

    torch.manual_seed(0)
    network = build_network(Architecture("plain_unet", 2, 1, 2, [4, 8], [[3, 3]] * 2, [[1, 1], [2, 2]],
                                         deep_supervision=False)).eval()
    ticks = iter(range(100))
    candidates = [("torch", "fp32"), *[(runtime, "fp32") for runtime in ONNX_RUNTIMES_INSTALLED]]
    measurements = measure_runtimes(network, candidates, random_probe((1, 1, 16, 16)),
                                    clock=lambda: float(next(ticks)) ** 2)
    # One timed call per candidate (after its warm-up), between two clock readings t**2 and (t + 1)**2.
    for index, measurement in enumerate(measurements):
        assert measurement.seconds == pytest.approx((2 * index + 1) ** 2 - (2 * index) ** 2)
        assert measurement.agrees and measurement.label_agreement_dice == 1.0
    assert measurements[0].max_probability_difference == 0.0
    assert all(m.max_probability_difference < 1e-4 for m in measurements[1:])


def test_the_fastest_runtime_that_disagrees_is_not_chosen():
    nan = float("nan")
    measurements = [RuntimeMeasurement("torch", "fp32", 2.0, 1.0, 0.0, True),
                    RuntimeMeasurement("torch", "bf16", nan, 0.98, 0.2, False),
                    RuntimeMeasurement("onnxruntime", "fp32", 1.5, 1.0, 1e-6, True),
                    RuntimeMeasurement("openvino", "fp32", nan, nan, nan, False, "openvino is not installed")]
    assert fastest_agreeing(measurements).runtime == "onnxruntime"
    # int8 must be INT8_MIN_SPEEDUP (1.2x) faster than the fastest float runtime that agrees.
    barely = [*measurements, RuntimeMeasurement("openvino", "int8", 1.4, 0.9995, 0.05, True)]
    assert fastest_agreeing(barely).name == "onnxruntime fp32"
    clearly = [*measurements, RuntimeMeasurement("openvino", "int8", 1.2, 0.9995, 0.05, True)]
    assert fastest_agreeing(clearly).name == "openvino int8"
    with pytest.raises(RuntimeUnavailable, match="no runtime agrees"):
        fastest_agreeing(measurements[1:2])


def test_candidates_follow_the_device_and_the_precision():
    assert runtime_candidates("cpu", "auto", cpu_bf16=False) == [("torch", "fp32"), ("onnxruntime", "fp32"),
                                                                 ("openvino", "fp32"), ("openvino", "int8")]
    assert ("torch", "bf16") in runtime_candidates("cpu", "auto", cpu_bf16=True)
    assert runtime_candidates("cpu", "bf16", cpu_bf16=True) == [("torch", "bf16"), ("openvino", "bf16")]
    assert runtime_candidates("cpu", "bf16", cpu_bf16=False) == [("torch", "bf16")]  # asked for, not measured
    assert runtime_candidates("cuda", "auto", cpu_bf16=False) == [("torch", "auto")]
    assert runtime_candidates("cpu", "int8", cpu_bf16=False) == [("openvino", "int8")]


def test_int8_is_calibrated_on_other_images_than_the_probe(trained_model, case_and_reference, tmp_path):
    data = case_and_reference[0]
    others = [data[:, ::-1].copy(), data[:, :, ::-1].copy()]
    measure = FakeMeasure()
    choose_runtime(tmp_path / "choice.json", trained_model, "auto", batch_windows=2, probe_image=lambda: data,
                   calibration_images=lambda: others, measure=measure, cpu_bf16=False)
    assert ("openvino", "int8") in measure.candidates
    patch = trained_model.configuration.patch_size
    per_image = CALIBRATION_WINDOWS_PER_IMAGE
    np.testing.assert_array_equal(measure.calibration, np.concatenate([probe_windows(image, patch, per_image)
                                                                       for image in others]))
    # No other image: the probe's own; no image at all: nothing to calibrate on (int8 then runs only from
    # the cache, `test_openvino_int8_...`), under the same key.
    choose_runtime(tmp_path / "choice.json", trained_model, "auto", probe_image=lambda: data,
                   calibration_images=lambda: [], measure=measure, cpu_bf16=False, refresh=True)
    np.testing.assert_array_equal(measure.calibration, probe_windows(data, patch, per_image))
    choose_runtime(tmp_path / "choice.json", trained_model, "auto", measure=measure, cpu_bf16=False, refresh=True)
    assert ("openvino", "int8") in measure.candidates and measure.calibration is None


class FakeMeasure:
    """Stands for `measure_runtimes`: counts its calls and makes openvino the fastest."""

    def __init__(self):
        self.calls = 0
        self.probe_shapes = []

    def __call__(self, network, candidates, probe, onnx_cache=None, calibration=None, mirror_axes=()):
        self.calls += 1
        self.probe_shapes.append(tuple(probe.shape))
        self.probe = probe
        self.candidates, self.calibration = candidates, calibration
        seconds = {"torch": 3.0, "onnxruntime": 2.0, "openvino": 1.0}
        return [RuntimeMeasurement(runtime, precision, seconds[runtime], 1.0, 0.0, True)
                for runtime, precision in candidates]


def test_auto_is_measured_once_then_read_from_the_cache(trained_model, tmp_path):
    workspace = Workspace(tmp_path)
    measure = FakeMeasure()
    told = []
    auto = PredictionSettings(runtime="auto", batch_windows=2)
    settings = settings_with_runtime(workspace, [trained_model], auto, measure=measure,
                                     on_choice=lambda choice, cached: told.append(cached))
    assert (settings.runtime, settings.precision, measure.calls) == ("openvino", "fp32", 1)
    # The probe is a batch of windows of the patch, as many as the sliding window batches.
    assert measure.probe_shapes == [(2, 1, *trained_model.configuration.patch_size)]
    again = settings_with_runtime(workspace, [trained_model], auto, measure=measure,
                                  on_choice=lambda choice, cached: told.append(cached))
    assert (again.runtime, measure.calls, told) == ("openvino", 1, [False, True])
    assert workspace.runtime_choice_file.is_file()
    # Another model (other weights) of the same shape measures again; so does an explicit refresh.
    other = replace(trained_model, networks=[copy.deepcopy(trained_model.networks[0])], runtime_networks={})
    with torch.no_grad():
        next(other.networks[0].parameters()).add_(1.0)
    choose_runtime(workspace.runtime_choice_file, other, "auto", measure=measure, cpu_bf16=False)
    assert measure.calls == 2
    choose_runtime(workspace.runtime_choice_file, trained_model, "auto", measure=measure, cpu_bf16=False, refresh=True)
    assert measure.calls == 3


def test_the_probe_is_windows_of_the_image_when_there_is_one(trained_model, case_and_reference, tmp_path):
    data = case_and_reference[0]
    measure = FakeMeasure()
    choice, cached = choose_runtime(tmp_path / "choice.json", trained_model, "auto", batch_windows=2,
                                    probe_image=lambda: data, measure=measure, cpu_bf16=False)
    assert (choice.probe, cached) == ("image", False)
    assert choice.summary == ("openvino fp32 (1 s per batch of 2 windows; torch fp32 3, onnxruntime fp32 2, "
                              "openvino int8 1)")
    np.testing.assert_array_equal(measure.probe, probe_windows(data, trained_model.configuration.patch_size, 2))
    # The image does not enter the key: the choice is read back whatever the next caller probes with.
    again, cached = choose_runtime(tmp_path / "choice.json", trained_model, "auto", batch_windows=2,
                                   probe_image=lambda: None, measure=measure, cpu_bf16=False)
    assert (again.runtime, again.probe, cached, measure.calls) == ("openvino", "image", True, 1)


def test_an_explicit_runtime_is_kept_and_measures_nothing(trained_model, tmp_path):
    measure = FakeMeasure()
    settings = settings_with_runtime(Workspace(tmp_path), [trained_model], PredictionSettings(runtime="torch"),
                                     measure=measure)
    assert settings.runtime == "torch" and measure.calls == 0


def test_unknown_runtimes_and_precisions_an_onnx_runtime_lacks_are_clear_errors():
    with pytest.raises(RuntimeUnavailable, match=r"--runtime 'tensorrt': expected auto, torch, .* or openvino"):
        check_runtime("tensorrt")
    with pytest.raises(RuntimeUnavailable, match="onnxruntime computes in fp32, not --precision bf16"):
        check_runtime("onnxruntime", "bf16")
    with pytest.raises(RuntimeUnavailable, match="openvino computes in fp32, bf16 or int8, not --precision fp16"):
        check_runtime("openvino", "fp16")
    with pytest.raises(RuntimeUnavailable, match="--precision int8 runs on --runtime openvino"):
        check_runtime("torch", "int8")
    with pytest.raises(AutosegError, match="--precision 'fp8': expected auto, fp32"):
        check_runtime("torch", "fp8")
    check_runtime("openvino", "bf16")
    check_runtime("auto", "int8")


@pytest.mark.skipif("openvino" not in ONNX_RUNTIMES_INSTALLED, reason="openvino is not installed")
def test_an_onnx_runtime_keeps_its_export_in_the_workspace(trained_model, tmp_path):
    workspace = Workspace(tmp_path)
    settings_with_runtime(workspace, [replace(trained_model, runtime_networks={})], PredictionSettings(runtime="openvino"))
    assert len(list(workspace.onnx_cache_folder.glob("*.onnx"))) == 1  # the next prediction reads it back


def test_a_runtime_that_is_not_installed_fails_once_before_any_case(trained_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    model = replace(trained_model, runtime_networks={})
    with pytest.raises(RuntimeUnavailable, match=r"--runtime openvino: openvino is not installed \(pip install"):
        settings_with_runtime(Workspace(tmp_path), [model], PredictionSettings(runtime="openvino"))


def test_the_cli_names_the_runtimes_for_an_unknown_one(tmp_path):
    from typer.testing import CliRunner

    from autoseg.cli import app

    result = CliRunner().invoke(app, ["--home", str(tmp_path), "predict", str(tmp_path), str(tmp_path / "out"),
                                      "--runtime", "tensorrt"])
    assert result.exit_code == 1
    assert "error: --runtime 'tensorrt': expected auto, torch, torch-compile, onnxruntime or openvino" in result.output
